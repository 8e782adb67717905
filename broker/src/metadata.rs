//! Cluster metadata as a log of records applied to one state machine.
//!
//! Even a single node keeps its topics, their configs and the shard that owns each
//! partition as metadata records in a log (`<data dir>/__cluster_metadata-0`), replayed at
//! start. Clustering later replicates that log; it does not change how metadata works.
//! Shard 0 is the controller: it appends records and hands every shard the new, immutable
//! `MetadataImage`.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use rkyv::rancor;
use rkyv::{Archive, Deserialize, Serialize};
use weir_storage::{FlushPolicy, Log, LogConfig, LogIdentity, ShardStorage};
use weir_wire::{BatchBuilder, RecordIter};

use crate::error::{BrokerError, BrokerResult};
use crate::topic::TopicConfig;

pub const METADATA_TOPIC: &str = "__cluster_metadata";
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Producer ids are handed out from blocks of this many, each reserved by one record.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

/// One change to the metadata. Stored as the value of one record, rkyv-encoded.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum MetadataRecord {
    /// The first record of a new cluster.
    ClusterCreated {
        cluster_id: String,
    },
    TopicCreated {
        name: String,
        /// The topic's id (a UUID): it tells a topic from an earlier one of the same name.
        id: [u8; 16],
        shards: Vec<u32>,
        configs: Vec<(String, String)>,
        internal: bool,
    },
    TopicDeleted {
        name: String,
    },
    /// Partitions moved to other shards (the shard count changed between starts).
    PartitionsMoved {
        name: String,
        shards: Vec<u32>,
    },
    /// New partitions at the end of a topic, with their owners.
    PartitionsAdded {
        name: String,
        shards: Vec<u32>,
    },
    /// The topic's configuration overrides, replaced whole.
    TopicConfigsChanged {
        name: String,
        configs: Vec<(String, String)>,
    },
    /// Producer ids below `end` are reserved (handed out or lost in a crash: never reused).
    ProducerIdsReserved {
        end: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicImage {
    pub name: String,
    pub id: [u8; 16],
    /// The owning shard of each partition, by partition index.
    pub shards: Vec<u32>,
    pub configs: BTreeMap<String, String>,
    pub internal: bool,
}

impl TopicImage {
    pub fn partition_count(&self) -> i32 {
        self.shards.len() as i32
    }

    pub fn owner(&self, partition: i32) -> Option<usize> {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.shards.get(p))
            .map(|shard| *shard as usize)
    }

    /// The topic's settings: `defaults` (a shard's `topic_defaults`) with its overrides.
    pub fn config(&self, defaults: &TopicConfig) -> BrokerResult<TopicConfig> {
        crate::topic::topic_config(defaults, &self.configs).map_err(BrokerError::InvalidConfig)
    }
}

/// The metadata at one point: immutable, shared by every shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataImage {
    /// Records applied so far.
    pub version: u64,
    pub cluster_id: String,
    pub topics: BTreeMap<String, Arc<TopicImage>>,
    /// Producer ids below this are reserved.
    pub producer_ids_end: i64,
}

impl MetadataImage {
    /// The image after `record`. Records that do not fit (a second creation, deletion of
    /// an unknown topic) leave it unchanged: the controller checks before appending.
    pub fn apply(&self, record: &MetadataRecord) -> MetadataImage {
        let mut next = self.clone();
        next.version += 1;
        match record {
            MetadataRecord::ClusterCreated { cluster_id } => {
                next.cluster_id = cluster_id.clone();
            }
            MetadataRecord::TopicCreated {
                name,
                id,
                shards,
                configs,
                internal,
            } => {
                let topic = TopicImage {
                    name: name.clone(),
                    id: *id,
                    shards: shards.clone(),
                    configs: configs.iter().cloned().collect(),
                    internal: *internal,
                };
                next.topics
                    .entry(name.clone())
                    .or_insert_with(|| Arc::new(topic));
            }
            MetadataRecord::TopicDeleted { name } => {
                next.topics.remove(name);
            }
            MetadataRecord::PartitionsMoved { name, shards } => {
                next.change_topic(name, |topic| topic.shards = shards.clone());
            }
            MetadataRecord::PartitionsAdded { name, shards } => {
                next.change_topic(name, |topic| topic.shards.extend_from_slice(shards));
            }
            MetadataRecord::TopicConfigsChanged { name, configs } => {
                next.change_topic(name, |topic| {
                    topic.configs = configs.iter().cloned().collect();
                });
            }
            MetadataRecord::ProducerIdsReserved { end } => {
                next.producer_ids_end = next.producer_ids_end.max(*end);
            }
        }
        next
    }

    fn change_topic(&mut self, name: &str, change: impl FnOnce(&mut TopicImage)) {
        if let Some(topic) = self.topics.get_mut(name) {
            let mut changed = (**topic).clone();
            change(&mut changed);
            *topic = Arc::new(changed);
        }
    }

    /// The topic with this id.
    pub fn topic_by_id(&self, id: &[u8; 16]) -> Option<&Arc<TopicImage>> {
        self.topics.values().find(|t| t.id == *id)
    }

    pub fn topic(&self, name: &str) -> Option<&Arc<TopicImage>> {
        self.topics.get(name)
    }

    /// Partitions each shard owns now.
    fn load(&self, shard_count: usize) -> Vec<usize> {
        let mut load = vec![0; shard_count];
        for shard in self.topics.values().flat_map(|t| &t.shards) {
            if let Some(count) = load.get_mut(*shard as usize) {
                *count += 1;
            }
        }
        load
    }

    /// Owners for `partitions` new partitions: each goes to the shard owning fewest, so
    /// shards stay balanced as topics come and go.
    pub fn assign(&self, partitions: usize, shard_count: usize) -> Vec<u32> {
        let mut load = self.load(shard_count);
        (0..partitions)
            .map(|_| {
                let (shard, _) = load
                    .iter()
                    .enumerate()
                    .min_by_key(|(i, n)| (**n, *i))
                    .unwrap_or((0, &0));
                load[shard] += 1;
                shard as u32
            })
            .collect()
    }

    /// Records that move partitions of shards that no longer exist (fewer cores than at
    /// the last start) onto the remaining ones.
    pub fn reassignments(&self, shard_count: usize) -> Vec<MetadataRecord> {
        let mut image = self.clone();
        let mut records = Vec::new();
        for topic in self.topics.values() {
            if topic.shards.iter().all(|s| (*s as usize) < shard_count) {
                continue;
            }
            let mut shards = topic.shards.clone();
            for index in 0..shards.len() {
                if (shards[index] as usize) < shard_count {
                    continue;
                }
                shards[index] = image.assign(1, shard_count)[0];
                let record = MetadataRecord::PartitionsMoved {
                    name: topic.name.clone(),
                    shards: shards.clone(),
                };
                image = image.apply(&record);
            }
            records.push(MetadataRecord::PartitionsMoved {
                name: topic.name.clone(),
                shards,
            });
        }
        records
    }
}

/// The metadata log and the image it produces. Lives on shard 0.
#[derive(Debug)]
pub struct MetadataLog {
    log: Rc<Log>,
    image: MetadataImage,
}

impl MetadataLog {
    /// Opens the metadata log under `data_dir` and replays it.
    pub async fn open(data_dir: &Path, storage: Rc<ShardStorage>) -> BrokerResult<MetadataLog> {
        let identity = LogIdentity {
            topic: METADATA_TOPIC.into(),
            partition: 0,
        };
        let config = LogConfig {
            flush: FlushPolicy::EveryBatch,
            retention_ms: None,
            retention_bytes: None,
            segment_bytes: 64 << 20,
            ..LogConfig::default()
        };
        let log = Log::open(
            &data_dir.join(format!("{METADATA_TOPIC}-0")),
            &identity,
            config,
            storage,
        )
        .await?;
        let mut image = MetadataImage::default();
        let mut offset = log.log_start_offset();
        loop {
            let batches = log.read(offset, 1 << 20, i64::MAX).await?;
            let Some(last) = batches.last() else { break };
            offset = weir_wire::BatchHeader::parse(last)?.next_offset();
            for batch in &batches {
                for record in RecordIter::new(batch)? {
                    let value = record?
                        .value
                        .ok_or_else(|| corrupt("record without a value"))?;
                    image = image.apply(&decode(value)?);
                }
            }
        }
        Ok(MetadataLog { log, image })
    }

    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    /// Makes `record` durable, then applies it.
    pub async fn append(&mut self, record: MetadataRecord) -> BrokerResult<&MetadataImage> {
        let value = rkyv::to_bytes::<rancor::Error>(&record)
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        let mut builder = BatchBuilder::new(now_ms());
        builder.append(now_ms(), None, Some(&value), &[]);
        self.log.append(builder.build(), 0).await?;
        self.image = self.image.apply(&record);
        Ok(&self.image)
    }

    pub async fn close(&self) -> BrokerResult<()> {
        Ok(self.log.close().await?)
    }
}

fn corrupt(reason: &str) -> BrokerError {
    BrokerError::Internal(format!("metadata log: {reason}"))
}

fn decode(value: &[u8]) -> BrokerResult<MetadataRecord> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(value.len());
    aligned.extend_from_slice(value);
    rkyv::from_bytes::<MetadataRecord, rancor::Error>(&aligned).map_err(|e| corrupt(&e.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn created(name: &str, shards: &[u32]) -> MetadataRecord {
        MetadataRecord::TopicCreated {
            name: name.into(),
            id: random_id(),
            shards: shards.to_vec(),
            configs: vec![],
            internal: false,
        }
    }

    #[test]
    fn records_apply_in_order() {
        let image = MetadataImage::default()
            .apply(&created("a", &[0, 1]))
            .apply(&created("b", &[1]));
        assert_eq!(image.version, 2);
        assert_eq!(image.topic("a").unwrap().owner(1), Some(1));
        let image = image.apply(&MetadataRecord::TopicDeleted { name: "a".into() });
        assert!(image.topic("a").is_none() && image.topic("b").is_some());
    }

    #[test]
    fn new_partitions_go_to_the_least_loaded_shards() {
        let image = MetadataImage::default().apply(&created("a", &[0, 0, 1]));
        assert_eq!(image.assign(4, 3), vec![2, 1, 2, 0]);
    }

    #[test]
    fn partitions_of_vanished_shards_are_moved() {
        let image = MetadataImage::default().apply(&created("a", &[0, 3, 1, 2]));
        let records = image.reassignments(2);
        let moved = records
            .iter()
            .fold(image, |image, record| image.apply(record));
        assert!(
            moved.topic("a").unwrap().shards.iter().all(|s| *s < 2),
            "{moved:?}"
        );
        assert_eq!(moved.topic("a").unwrap().shards[..1], [0]);
    }
}
