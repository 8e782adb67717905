//! Metadata, offsets by time, and creating and deleting topics.

use std::rc::Rc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, ResponseKind,
    TopicName,
};
use uuid::Uuid;
use weir_wire::native::schema::OffsetSpec;

use super::errors;
use super::handlers::{Answer, str_bytes};
use crate::error::{BrokerError, BrokerResult};
use crate::metadata::{MetadataImage, TopicImage};
use crate::ops;
use crate::router::{ShardCall, TopicPartition};
use crate::security::{Caller, Listener};
use crate::shard::Shard;
use crate::topic;
use weir_replication::AclOperation;

/// Kafka's special ListOffsets timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

pub fn topic_name(name: &str) -> TopicName {
    TopicName(str_bytes(name))
}

fn error_message(error: &BrokerError) -> Option<kafka_protocol::protocol::StrBytes> {
    Some(str_bytes(&errors::message(error)))
}

/// The brokers a client may talk to: every registered one, at its Kafka listener, fenced
/// ones too (they lead nothing, so clients only ask them for metadata; and a broker that
/// vanished from the list makes librdkafka drop its requests in flight as never sent,
/// which desynchronizes idempotent producers). Before this broker has joined: itself, so
/// that a client has somewhere to retry.
pub fn brokers(shard: &Shard, listener: &Listener) -> Vec<MetadataResponseBroker> {
    let image = shard.image();
    let live: Vec<MetadataResponseBroker> = image
        .brokers
        .values()
        .map(|broker| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(broker.node))
                .with_host(str_bytes(&broker.endpoint.host))
                .with_port(i32::from(broker.endpoint.kafka_port_of(listener.name())))
        })
        .collect();
    if !live.is_empty() {
        return live;
    }
    vec![
        MetadataResponseBroker::default()
            .with_node_id(BrokerId(shard.config.node_id))
            .with_host(str_bytes(&shard.config.advertised_host()))
            .with_port(i32::from(listener.address.port())),
    ]
}

/// The leader epoch of a partition, as the current metadata says (0 when unknown).
pub fn leader_epoch(shard: &Shard, topic: &str, partition: i32) -> i32 {
    shard
        .image()
        .topic(topic)
        .and_then(|t| t.partition(partition))
        .map_or(0, |p| p.leader_epoch)
}

pub async fn metadata(
    shard: &Rc<Shard>,
    caller: &Caller,
    listener: &Listener,
    version: i16,
    request: MetadataRequest,
) -> Answer {
    let mut image = shard.image();
    // Version 0 asks for every topic with an empty list; later versions with null.
    let wanted: Option<Vec<(Option<String>, Uuid)>> = match request.topics {
        Some(topics) if !(version == 0 && topics.is_empty()) => Some(
            topics
                .into_iter()
                .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
                .collect(),
        ),
        _ => None,
    };
    let auto_create = (version < 4 || request.allow_auto_topic_creation)
        && shard.config.auto_create_topics_enable;
    let described =
        |name: &str| ops::may_topic(shard, caller, AclOperation::Describe, name).is_ok();
    let mut created_any = false;
    // Missing topics the caller may describe but not create: TOPIC_AUTHORIZATION_FAILED,
    // as Kafka answers, so that producers fail at once instead of waiting for them.
    let mut not_creatable = std::collections::BTreeSet::new();
    if let (Some(wanted), true) = (&wanted, auto_create) {
        for name in wanted.iter().filter_map(|(name, _)| name.as_deref()) {
            if image.topic(name).is_some() || !described(name) {
                continue;
            }
            if ops::may_create_topic(shard, caller, name).is_err() {
                not_creatable.insert(name.to_string());
            } else if auto_create_topic(shard, name).await {
                created_any = true;
            }
        }
    }
    if created_any {
        image = shard.image();
    }
    // Topics the caller may not describe: left out of "every topic", and a named one is
    // answered TOPIC_AUTHORIZATION_FAILED whether it exists or not.
    let topics = match wanted {
        None => image
            .topics
            .values()
            .filter(|t| described(&t.name))
            .map(|t| topic_metadata(shard, version, Some(&t.name), Some(t)))
            .collect(),
        Some(wanted) => wanted
            .iter()
            .map(|(name, id)| {
                let found = match name {
                    Some(name) => image.topic(name),
                    None => image.topic_by_id(id.as_bytes()),
                };
                let visible = match (name, found) {
                    (Some(name), _) => described(name) && !not_creatable.contains(name),
                    (None, Some(topic)) => described(&topic.name),
                    (None, None) => true,
                };
                if !visible {
                    // Ids are not secret (Kafka echoes them); names of topics asked for
                    // by id are.
                    let mut refused = MetadataResponseTopic::default()
                        .with_name(name.as_deref().map(topic_name))
                        .with_error_code(ResponseError::TopicAuthorizationFailed.code());
                    if version >= 10 {
                        refused = refused.with_topic_id(*id);
                    }
                    return refused;
                }
                topic_metadata(shard, version, name.as_deref(), found)
            })
            .collect(),
    };
    let mut response = MetadataResponse::default()
        .with_brokers(brokers(shard, listener))
        .with_topics(topics);
    if version >= 1 {
        response = response.with_controller_id(BrokerId(shard.controller_node().unwrap_or(-1)));
    }
    if version >= 2 {
        response = response.with_cluster_id(Some(str_bytes(&image.cluster_id)));
    }
    (ResponseKind::Metadata(response), false)
}

/// Creates a topic a client asked for by name, as Kafka's `auto.create.topics.enable`
/// does. Returns whether it now exists (created here or concurrently).
async fn auto_create_topic(shard: &Rc<Shard>, name: &str) -> bool {
    let call = ShardCall::CreateTopic {
        name: name.to_string(),
        partitions: shard.config.auto_create_topics_partitions,
        configs: Vec::new(),
        replication_factor: -1,
    };
    match ops::admin(shard, call).await {
        Ok(()) | Err(BrokerError::TopicAlreadyExists(_)) => true,
        Err(error) => {
            tracing::debug!(topic = name, %error, "auto-creating a topic failed");
            false
        }
    }
}

fn topic_metadata(
    shard: &Shard,
    version: i16,
    name: Option<&str>,
    topic: Option<&std::sync::Arc<TopicImage>>,
) -> MetadataResponseTopic {
    let Some(topic) = topic else {
        // A name no topic may have is an error the client gives up on, as Kafka's is.
        let error = match name {
            Some(name) if topic::validate_topic_name(name).is_err() => {
                ResponseError::InvalidTopicException
            }
            Some(_) => ResponseError::UnknownTopicOrPartition,
            None => ResponseError::UnknownTopicId,
        };
        return MetadataResponseTopic::default()
            .with_name(name.map(topic_name))
            .with_error_code(error.code());
    };
    let image = shard.image();
    let partitions = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(index, state)| {
            let replicas: Vec<BrokerId> = state.nodes().map(BrokerId).collect();
            let offline: Vec<BrokerId> = state
                .nodes()
                .filter(|n| !image.is_live(*n))
                .map(BrokerId)
                .collect();
            let mut partition = MetadataResponsePartition::default()
                .with_partition_index(index as i32)
                .with_leader_id(BrokerId(state.leader))
                .with_replica_nodes(replicas)
                .with_isr_nodes(state.isr.iter().copied().map(BrokerId).collect());
            if state.leader == crate::metadata::NO_LEADER {
                partition = partition.with_error_code(ResponseError::LeaderNotAvailable.code());
            }
            if version >= 5 {
                partition = partition.with_offline_replicas(offline);
            }
            if version >= 7 {
                partition = partition.with_leader_epoch(state.leader_epoch);
            }
            partition
        })
        .collect();
    let mut response = MetadataResponseTopic::default()
        .with_name(Some(topic_name(&topic.name)))
        .with_partitions(partitions);
    if version >= 1 {
        response = response.with_is_internal(topic.internal);
    }
    if version >= 10 {
        response = response.with_topic_id(Uuid::from_bytes(topic.id));
    }
    response
}

/// ListOffsets' and Fetch's `isolation_level` for read_committed.
pub const READ_COMMITTED: i8 = 1;

pub async fn list_offsets(
    shard: &Rc<Shard>,
    caller: &Caller,
    version: i16,
    request: ListOffsetsRequest,
) -> Answer {
    let mut queries = Vec::new();
    let mut refused: Vec<(TopicPartition, BrokerResult<(i64, i64)>)> = Vec::new();
    for topic in request.topics {
        for partition in topic.partitions {
            let tp = TopicPartition {
                topic: topic.name.0.to_string(),
                partition: partition.partition_index,
            };
            if let Err(error) = ops::may_topic(shard, caller, AclOperation::Describe, &tp.topic) {
                refused.push((tp, Err(error)));
                continue;
            }
            let spec = match partition.timestamp {
                LATEST => (OffsetSpec::Latest, -1),
                EARLIEST | EARLIEST_LOCAL => (OffsetSpec::Earliest, -1),
                LATEST_TIERED => {
                    // Nothing is tiered: Kafka answers "no offset".
                    refused.push((tp, Ok((-1, -1))));
                    continue;
                }
                ops::MAX_TIMESTAMP => (OffsetSpec::Timestamp, ops::MAX_TIMESTAMP),
                ts if ts >= 0 => (OffsetSpec::Timestamp, ts),
                ts => {
                    let error = BrokerError::InvalidRequest(format!("timestamp {ts}"));
                    refused.push((tp, Err(error)));
                    continue;
                }
            };
            queries.push((tp, spec.0, spec.1));
        }
    }
    let read_committed = request.isolation_level == READ_COMMITTED;
    let mut results = ops::list_offsets(shard, caller, queries, read_committed).await;
    results.extend(refused);
    let failed = results.iter().any(|(_, r)| r.is_err());
    let topics = ops::group_by_topic(results)
        .into_iter()
        .map(|(name, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|(index, result)| {
                    let mut response =
                        ListOffsetsPartitionResponse::default().with_partition_index(index);
                    match result {
                        Ok((offset, timestamp)) => {
                            response = response.with_offset(offset).with_timestamp(timestamp);
                            if version >= 4 && offset >= 0 {
                                response =
                                    response.with_leader_epoch(leader_epoch(shard, &name, index));
                            }
                        }
                        Err(error) => response = response.with_error_code(errors::code(&error)),
                    }
                    response
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic_name(&name))
                .with_partitions(partitions)
        })
        .collect();
    let response = ListOffsetsResponse::default().with_topics(topics);
    (ResponseKind::ListOffsets(response), failed)
}

/// A topic to create, checked: its partition count, its overrides as asked, and every
/// config it will have (which CreateTopics v5 and later report).
struct Creatable {
    partitions: i32,
    replication_factor: i16,
    configs: Vec<(String, String)>,
    described: Vec<topic::DescribedConfig>,
}

/// A topic to create, as asked, checked before anything is created.
fn creatable(
    shard: &Shard,
    image: &MetadataImage,
    topic: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> BrokerResult<Creatable> {
    let name = topic.name.0.as_str();
    topic::validate_topic_name(name).map_err(BrokerError::InvalidTopic)?;
    if image.topic(name).is_some() {
        return Err(BrokerError::TopicAlreadyExists(name.to_string()));
    }
    let live = image.live_brokers().count().max(1);
    if topic.replication_factor == 0
        || topic.replication_factor < -1
        || topic.replication_factor as i64 > live as i64
    {
        return Err(BrokerError::kafka(
            ResponseError::InvalidReplicationFactor,
            format!(
                "replication factor {} is not within 1..={live} (the brokers available)",
                topic.replication_factor
            ),
        ));
    }
    let partitions = if !topic.assignments.is_empty() {
        // Explicit placement is taken only where there is one choice: a single broker.
        let node = BrokerId(shard.config.node_id);
        if live > 1 || topic.assignments.iter().any(|a| a.broker_ids != [node]) {
            return Err(BrokerError::kafka(
                ResponseError::InvalidReplicaAssignment,
                "explicit replica assignments are not supported; give a replication factor (weir places replicas, and `weir partition move` moves them)",
            ));
        }
        topic.assignments.len() as i32
    } else if topic.num_partitions == -1 {
        shard.config.default_partitions
    } else {
        topic.num_partitions
    };
    if !(1..=topic::TOPIC_PARTITIONS_MAX).contains(&partitions) {
        return Err(BrokerError::InvalidPartitions(format!(
            "{partitions} is not within 1..={}",
            topic::TOPIC_PARTITIONS_MAX
        )));
    }
    let configs: Vec<(String, String)> = topic
        .configs
        .iter()
        .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
        .collect();
    let overrides = configs.iter().cloned().collect();
    let described =
        topic::describe(&shard.topic_defaults, &overrides).map_err(BrokerError::InvalidConfig)?;
    Ok(Creatable {
        partitions,
        replication_factor: if topic.assignments.is_empty() {
            topic.replication_factor
        } else {
            1
        },
        configs,
        described,
    })
}

/// The configs a created topic has, as CreateTopics v5 and later report them.
fn created_configs(described: Vec<topic::DescribedConfig>) -> Vec<CreatableTopicConfigs> {
    described
        .into_iter()
        .map(|config| {
            CreatableTopicConfigs::default()
                .with_name(str_bytes(config.key.name))
                .with_value(Some(str_bytes(&config.value)))
                .with_read_only(false)
                .with_config_source(config.source as i8)
                .with_is_sensitive(false)
        })
        .collect()
}

pub async fn create_topics(
    shard: &Rc<Shard>,
    caller: &Caller,
    version: i16,
    request: CreateTopicsRequest,
) -> Answer {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let checked = ops::may_create_topic(shard, caller, &name)
            .and_then(|()| creatable(shard, &shard.image(), topic));
        let outcome = match checked {
            Ok(created) if !request.validate_only => {
                let call = ShardCall::CreateTopic {
                    name: name.clone(),
                    partitions: created.partitions,
                    configs: created.configs,
                    replication_factor: created.replication_factor,
                };
                ops::admin(shard, call)
                    .await
                    .map(|()| (created.partitions, created.described))
            }
            other => other.map(|created| (created.partitions, created.described)),
        };
        let mut result = CreatableTopicResult::default()
            .with_name(topic_name(&name))
            .with_error_message(None)
            .with_configs(None);
        match outcome {
            Ok((partitions, described)) => {
                if version >= 5 {
                    result = result
                        .with_num_partitions(partitions)
                        .with_replication_factor(1);
                    // The configs only to a caller that may describe them (Kafka's rule).
                    match ops::may_topic(shard, caller, AclOperation::DescribeConfigs, &name) {
                        Ok(()) => result = result.with_configs(Some(created_configs(described))),
                        Err(error) => result.topic_config_error_code = errors::code(&error),
                    }
                }
                if version >= 7 {
                    let id = shard.image().topic(&name).map_or([0; 16], |t| t.id);
                    result = result.with_topic_id(Uuid::from_bytes(id));
                }
            }
            Err(error) => {
                result = result
                    .with_error_code(errors::code(&error))
                    .with_error_message(error_message(&error));
            }
        }
        results.push(result);
    }
    let failed = results.iter().any(|r| r.error_code != 0);
    let response = CreateTopicsResponse::default().with_topics(results);
    (ResponseKind::CreateTopics(response), failed)
}

pub async fn delete_topics(
    shard: &Rc<Shard>,
    caller: &Caller,
    version: i16,
    request: DeleteTopicsRequest,
) -> Answer {
    // Up to version 5 topics come by name; version 6 names them or gives their ids.
    let wanted: Vec<(Option<String>, Uuid)> = if version >= 6 {
        request
            .topics
            .into_iter()
            .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|n| (Some(n.0.to_string()), Uuid::nil()))
            .collect()
    };
    let mut results = Vec::with_capacity(wanted.len());
    for (name, id) in wanted {
        let image = shard.image();
        let mut found = match &name {
            Some(name) => image.topic(name).cloned(),
            None => image.topic_by_id(id.as_bytes()).cloned(),
        };
        // Whether the topic exists is told only to a caller that may delete it; a topic
        // asked for by id that the caller may not describe is an unknown id.
        let refused = match (&name, &found) {
            (Some(name), _) => ops::may_topic(shard, caller, AclOperation::Delete, name).err(),
            (None, Some(topic)) => {
                if ops::may_topic(shard, caller, AclOperation::Describe, &topic.name).is_err() {
                    found = None;
                    None
                } else {
                    ops::may_topic(shard, caller, AclOperation::Delete, &topic.name).err()
                }
            }
            (None, None) => None,
        };
        let outcome = match (refused, &found) {
            (Some(error), _) => Err(error),
            (None, Some(topic)) => {
                let call = ShardCall::DeleteTopic {
                    name: topic.name.clone(),
                };
                ops::admin(shard, call).await
            }
            (None, None) if name.is_none() => Err(BrokerError::kafka(
                ResponseError::UnknownTopicId,
                format!("no topic has id {id}"),
            )),
            (None, None) => Err(BrokerError::UnknownTopic(name.clone().unwrap_or_default())),
        };
        let name = name.or_else(|| found.as_ref().map(|t| t.name.clone()));
        let mut result = DeletableTopicResult::default().with_name(name.as_deref().map(topic_name));
        if version >= 6 {
            result = result.with_topic_id(found.map_or(id, |t| Uuid::from_bytes(t.id)));
        }
        if let Err(error) = outcome {
            result = result.with_error_code(errors::code(&error));
            if version >= 5 {
                result = result.with_error_message(error_message(&error));
            }
        }
        results.push(result);
    }
    let failed = results.iter().any(|r| r.error_code != 0);
    let response = DeleteTopicsResponse::default().with_responses(results);
    (ResponseKind::DeleteTopics(response), failed)
}
