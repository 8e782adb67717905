//! Cluster metadata as the broker uses it: the image of `weir-replication`, replicated by
//! the controller quorum (`crate::cluster`), and what the broker derives from it.
//!
//! A single `weir serve` is a quorum of one: its metadata is the same log of records
//! applied to the same image, so growing to a cluster changes who votes, not how metadata
//! works.

use std::sync::Arc;

pub use weir_replication::metadata::{
    BrokerImage, Endpoint, MetadataImage, MetadataRecord, NO_LEADER, NodeId, PartitionState,
    Replica, TopicImage,
};

use crate::error::{BrokerError, BrokerResult};
use crate::topic::TopicConfig;

pub const METADATA_TOPIC: &str = "__cluster_metadata";
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Producer ids are handed out from blocks of this many, each reserved by one record.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

/// The topic's settings: `defaults` (a shard's `topic_defaults`) with its overrides.
pub fn topic_config(topic: &TopicImage, defaults: &TopicConfig) -> BrokerResult<TopicConfig> {
    crate::topic::topic_config(defaults, &topic.configs).map_err(BrokerError::InvalidConfig)
}

/// Where a broker serves clients, as `HOST:PORT` of its native listener.
pub fn native_address(broker: &BrokerImage) -> String {
    format!("{}:{}", broker.endpoint.host, broker.endpoint.native_port)
}

/// The partition's state in `image`, or the error a client gets for an unknown one.
pub fn partition_state<'a>(
    image: &'a MetadataImage,
    topic: &str,
    partition: i32,
) -> BrokerResult<&'a PartitionState> {
    image
        .topic(topic)
        .and_then(|t| t.partition(partition))
        .ok_or_else(|| BrokerError::UnknownTopicOrPartition {
            topic: topic.to_string(),
            partition,
        })
}

/// The topic, shared.
pub fn topic(image: &MetadataImage, name: &str) -> Option<Arc<TopicImage>> {
    image.topic(name).cloned()
}

/// A fresh random id (UUID version 4).
pub fn random_id() -> [u8; 16] {
    *uuid::Uuid::new_v4().as_bytes()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
