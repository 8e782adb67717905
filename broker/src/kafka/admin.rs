//! Cluster and topic administration over the Kafka protocol: configs (describe, alter,
//! alter incrementally), adding partitions, deleting records, describing the cluster.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResult;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, BrokerId, CreatePartitionsRequest,
    CreatePartitionsResponse, DeleteRecordsRequest, DeleteRecordsResponse, DescribeClusterRequest,
    DescribeClusterResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::errors;
use super::handlers::{Answer, str_bytes};
use crate::error::{BrokerError, BrokerResult};
use crate::ops;
use crate::router::{ShardAnswer, ShardCall, TopicPartition};
use crate::shard::Shard;
use crate::topic;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// Kafka's ConfigSource values.
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

/// Kafka's ConfigType values.
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_LIST: i8 = 7;

fn topic_config_type(key: &str) -> i8 {
    match key {
        "retention.ms" | "retention.bytes" | "segment.ms" => TYPE_LONG,
        "segment.bytes" | "max.message.bytes" | "index.interval.bytes" => TYPE_INT,
        "cleanup.policy" => TYPE_LIST,
        _ => TYPE_STRING,
    }
}

/// The broker's settings as Kafka names them: fixed at start (read-only here).
fn broker_configs(shard: &Shard) -> Vec<(&'static str, String, i8)> {
    let c = &shard.config;
    vec![
        ("broker.id", c.node_id.to_string(), TYPE_INT),
        (
            "auto.create.topics.enable",
            c.auto_create_topics_enable.to_string(),
            TYPE_BOOLEAN,
        ),
        ("num.partitions", c.default_partitions.to_string(), TYPE_INT),
        (
            "offsets.topic.num.partitions",
            c.offsets_topic_partitions.to_string(),
            TYPE_INT,
        ),
        (
            "log.segment.bytes",
            c.log_segment_bytes.to_string(),
            TYPE_INT,
        ),
        ("log.roll.ms", c.log_segment_ms.to_string(), TYPE_LONG),
        (
            "log.retention.ms",
            c.log_retention_ms.to_string(),
            TYPE_LONG,
        ),
        (
            "log.retention.bytes",
            c.log_retention_bytes.to_string(),
            TYPE_LONG,
        ),
        (
            "message.max.bytes",
            c.log_batch_bytes_max.to_string(),
            TYPE_INT,
        ),
        (
            "log.index.interval.bytes",
            c.log_index_interval_bytes.to_string(),
            TYPE_INT,
        ),
        (
            "group.initial.rebalance.delay.ms",
            c.group_initial_rebalance_delay_ms.to_string(),
            TYPE_INT,
        ),
        (
            "group.min.session.timeout.ms",
            c.group_min_session_timeout_ms.to_string(),
            TYPE_INT,
        ),
        (
            "group.max.session.timeout.ms",
            c.group_max_session_timeout_ms.to_string(),
            TYPE_INT,
        ),
        (
            "socket.request.max.bytes",
            c.frame_bytes_max.to_string(),
            TYPE_INT,
        ),
    ]
}

/// One described config entry.
struct Entry {
    name: &'static str,
    value: String,
    source: i8,
    read_only: bool,
    config_type: i8,
    documentation: &'static str,
}

fn describe_resource(
    shard: &Shard,
    resource_type: i8,
    name: &str,
) -> Result<Vec<Entry>, (ResponseError, String)> {
    match resource_type {
        RESOURCE_TOPIC => {
            let image = shard.image();
            let topic = image.topic(name).ok_or_else(|| {
                (
                    ResponseError::UnknownTopicOrPartition,
                    format!("unknown topic {name}"),
                )
            })?;
            let config = topic::log_config(&shard.log_defaults, &topic.configs)
                .map_err(|e| (ResponseError::InvalidConfig, e))?;
            Ok(topic::config_values(&config)
                .into_iter()
                .zip(topic::TOPIC_CONFIG_KEYS)
                .map(|((key, value), (_, documentation))| Entry {
                    name: key,
                    value,
                    source: if topic.configs.contains_key(key) {
                        SOURCE_DYNAMIC_TOPIC
                    } else {
                        SOURCE_DEFAULT
                    },
                    read_only: false,
                    config_type: topic_config_type(key),
                    documentation,
                })
                .collect())
        }
        RESOURCE_BROKER => {
            check_broker_name(shard, name)?;
            Ok(broker_configs(shard)
                .into_iter()
                .map(|(name, value, config_type)| Entry {
                    name,
                    value,
                    source: SOURCE_STATIC_BROKER,
                    read_only: true,
                    config_type,
                    documentation: "set in the broker's configuration (docs/CONFIG.md)",
                })
                .collect())
        }
        other => Err((
            ResponseError::InvalidRequest,
            format!("resource type {other} is not supported"),
        )),
    }
}

/// A broker resource names this node by id ("" means the cluster default).
fn check_broker_name(shard: &Shard, name: &str) -> Result<(), (ResponseError, String)> {
    if name.is_empty() || name == shard.config.node_id.to_string() {
        Ok(())
    } else {
        Err((ResponseError::InvalidRequest, format!("no broker {name:?}")))
    }
}

pub fn describe_configs(shard: &Shard, version: i16, request: DescribeConfigsRequest) -> Answer {
    let mut failed = false;
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let mut result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match describe_resource(shard, resource.resource_type, &resource.resource_name) {
                Ok(entries) => {
                    let wanted = |name: &str| {
                        resource
                            .configuration_keys
                            .as_ref()
                            .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
                    };
                    result.configs = entries
                        .into_iter()
                        .filter(|e| wanted(e.name))
                        .map(|e| config_result(version, request.include_synonyms, e))
                        .collect();
                }
                Err((error, message)) => {
                    failed = true;
                    result.error_code = error.code();
                    result.error_message = Some(str_bytes(&message));
                }
            }
            result
        })
        .collect();
    let response = DescribeConfigsResponse::default().with_results(results);
    (ResponseKind::DescribeConfigs(response), failed)
}

fn config_result(version: i16, synonyms: bool, entry: Entry) -> DescribeConfigsResourceResult {
    let mut result = DescribeConfigsResourceResult::default()
        .with_name(str_bytes(entry.name))
        .with_value(Some(str_bytes(&entry.value)))
        .with_read_only(entry.read_only)
        .with_config_source(entry.source);
    if version >= 1 && synonyms {
        result.synonyms = vec![
            DescribeConfigsSynonym::default()
                .with_name(str_bytes(entry.name))
                .with_value(Some(str_bytes(&entry.value)))
                .with_source(entry.source),
        ];
    }
    if version >= 3 {
        result.config_type = entry.config_type;
        result.documentation = Some(str_bytes(entry.documentation));
    }
    result
}

/// A topic's new overrides, checked; applied unless `validate_only`.
async fn set_topic_configs(
    shard: &Rc<Shard>,
    name: &str,
    configs: BTreeMap<String, String>,
    validate_only: bool,
) -> BrokerResult<()> {
    if shard.image().topic(name).is_none() {
        return Err(BrokerError::UnknownTopic(name.to_string()));
    }
    topic::log_config(&shard.log_defaults, &configs).map_err(BrokerError::InvalidConfig)?;
    if validate_only {
        return Ok(());
    }
    let call = ShardCall::AlterTopicConfigs {
        name: name.to_string(),
        configs: configs.into_iter().collect(),
    };
    ops::admin(shard, call).await
}

/// The error a resource answers with, or none.
fn resource_error(result: BrokerResult<()>) -> (i16, Option<StrBytes>) {
    match result {
        Ok(()) => (0, None),
        Err(error) => (errors::code(&error), Some(str_bytes(&error.to_string()))),
    }
}

fn broker_configs_are_static() -> BrokerError {
    BrokerError::kafka(
        ResponseError::InvalidRequest,
        "broker configs are set at start (docs/CONFIG.md), not altered at run time",
    )
}

/// AlterConfigs replaces a topic's whole set of overrides.
pub async fn alter_configs(shard: &Rc<Shard>, request: AlterConfigsRequest) -> Answer {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let name = resource.resource_name.to_string();
        let result = match resource.resource_type {
            RESOURCE_TOPIC => {
                let configs = resource
                    .configs
                    .iter()
                    .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
                    .collect();
                set_topic_configs(shard, &name, configs, request.validate_only).await
            }
            RESOURCE_BROKER => Err(broker_configs_are_static()),
            other => Err(BrokerError::InvalidRequest(format!(
                "resource type {other} is not supported"
            ))),
        };
        let (code, message) = resource_error(result);
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message)
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name),
        );
    }
    let failed = responses.iter().any(|r| r.error_code != 0);
    let response = AlterConfigsResponse::default().with_responses(responses);
    (ResponseKind::AlterConfigs(response), failed)
}

/// Applies one IncrementalAlterConfigs operation to a topic's overrides.
fn apply_operation(
    configs: &mut BTreeMap<String, String>,
    defaults: &BTreeMap<&str, String>,
    name: &str,
    operation: i8,
    value: Option<&str>,
) -> BrokerResult<()> {
    let is_list = topic_config_type(name) == TYPE_LIST;
    let list = |configs: &BTreeMap<String, String>| -> Vec<String> {
        configs
            .get(name)
            .or_else(|| defaults.get(name))
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    match (operation, value) {
        (0, Some(value)) => {
            configs.insert(name.to_string(), value.to_string());
        }
        (1, _) => {
            configs.remove(name);
        }
        (2 | 3, Some(value)) if is_list => {
            let mut items = list(configs);
            for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if operation == 2 && !items.iter().any(|i| i == item) {
                    items.push(item.to_string());
                } else if operation == 3 {
                    items.retain(|i| i != item);
                }
            }
            configs.insert(name.to_string(), items.join(","));
        }
        (2 | 3, _) => {
            return Err(BrokerError::InvalidConfig(format!(
                "{name} is not a list: APPEND and SUBTRACT do not apply"
            )));
        }
        (op, _) => {
            return Err(BrokerError::InvalidRequest(format!(
                "config operation {op} for {name} needs a value or is unknown"
            )));
        }
    }
    Ok(())
}

pub async fn incremental_alter_configs(
    shard: &Rc<Shard>,
    request: IncrementalAlterConfigsRequest,
) -> Answer {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let name = resource.resource_name.to_string();
        let result = match resource.resource_type {
            RESOURCE_TOPIC => match shard.image().topic(&name).cloned() {
                None => Err(BrokerError::UnknownTopic(name.clone())),
                Some(topic) => {
                    let defaults: BTreeMap<&str, String> =
                        topic::config_values(&shard.log_defaults)
                            .into_iter()
                            .collect();
                    let mut configs = topic.configs.clone();
                    let applied = resource.configs.iter().try_for_each(|c| {
                        apply_operation(
                            &mut configs,
                            &defaults,
                            &c.name,
                            c.config_operation,
                            c.value.as_deref(),
                        )
                    });
                    match applied {
                        Ok(()) => {
                            set_topic_configs(shard, &name, configs, request.validate_only).await
                        }
                        Err(error) => Err(error),
                    }
                }
            },
            RESOURCE_BROKER => Err(broker_configs_are_static()),
            other => Err(BrokerError::InvalidRequest(format!(
                "resource type {other} is not supported"
            ))),
        };
        let (code, message) = resource_error(result);
        responses.push(
            IncrementalResult::default()
                .with_error_code(code)
                .with_error_message(message)
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name),
        );
    }
    let failed = responses.iter().any(|r| r.error_code != 0);
    let response = IncrementalAlterConfigsResponse::default().with_responses(responses);
    (ResponseKind::IncrementalAlterConfigs(response), failed)
}

pub async fn create_partitions(shard: &Rc<Shard>, request: CreatePartitionsRequest) -> Answer {
    let mut results = Vec::with_capacity(request.topics.len());
    let node = BrokerId(shard.config.node_id);
    for asked in request.topics {
        let name = asked.name.to_string();
        let foreign_broker = asked
            .assignments
            .iter()
            .flatten()
            .flat_map(|a| &a.broker_ids)
            .any(|id| *id != node);
        let result = if foreign_broker {
            Err(BrokerError::kafka(
                ResponseError::InvalidReplicaAssignment,
                format!("only broker {} exists", node.0),
            ))
        } else {
            match shard.image().topic(&name) {
                None => Err(BrokerError::UnknownTopic(name.clone())),
                Some(topic) if asked.count <= topic.partition_count() => {
                    Err(BrokerError::InvalidPartitions(format!(
                        "{name} has {} partitions; the count can only grow",
                        topic.partition_count()
                    )))
                }
                Some(_) if request.validate_only => Ok(()),
                Some(_) => {
                    let call = ShardCall::CreatePartitions {
                        name: name.clone(),
                        count: asked.count,
                    };
                    ops::admin(shard, call).await
                }
            }
        };
        let (code, message) = resource_error(result);
        results.push(
            CreatePartitionsTopicResult::default()
                .with_name(asked.name)
                .with_error_code(code)
                .with_error_message(message),
        );
    }
    let failed = results.iter().any(|r| r.error_code != 0);
    let response = CreatePartitionsResponse::default().with_results(results);
    (ResponseKind::CreatePartitions(response), failed)
}

pub async fn delete_records(shard: &Rc<Shard>, request: DeleteRecordsRequest) -> Answer {
    let mut asked = Vec::new();
    let mut offsets = BTreeMap::new();
    for topic in &request.topics {
        for partition in &topic.partitions {
            let tp = TopicPartition {
                topic: topic.name.to_string(),
                partition: partition.partition_index,
            };
            offsets.insert(tp.clone(), partition.offset);
            asked.push(tp);
        }
    }
    let results = ops::fan_out(
        shard,
        asked,
        |partition| ShardCall::DeleteRecords {
            offset: offsets.get(&partition).copied().unwrap_or(-1),
            partition,
        },
        |answer| match answer {
            ShardAnswer::DeleteRecords(result) => result,
            other => Err(ops::unexpected(other)),
        },
    )
    .await;
    let failed = results.iter().any(|(_, r)| r.is_err());
    let topics = ops::group_by_topic(results)
        .into_iter()
        .map(|(name, partitions)| {
            DeleteRecordsTopicResult::default()
                .with_name(TopicName(str_bytes(&name)))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(index, result)| {
                            let (low_watermark, code) = match result {
                                Ok(low) => (low, 0),
                                Err(error) => (-1, errors::code(&error)),
                            };
                            DeleteRecordsPartitionResult::default()
                                .with_partition_index(index)
                                .with_low_watermark(low_watermark)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    let response = DeleteRecordsResponse::default().with_topics(topics);
    (ResponseKind::DeleteRecords(response), failed)
}

pub fn describe_cluster(shard: &Shard, version: i16, request: DescribeClusterRequest) -> Answer {
    let node = BrokerId(shard.config.node_id);
    let mut response = DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(&shard.image().cluster_id))
        .with_controller_id(node)
        .with_brokers(vec![
            DescribeClusterBroker::default()
                .with_broker_id(node)
                .with_host(str_bytes(&shard.config.advertised_host()))
                .with_port(i32::from(shard.config.kafka_listen.port())),
        ]);
    // Brokers are the only endpoints; a request for controllers (KIP-919) is refused.
    if version >= 1 {
        response.endpoint_type = request.endpoint_type;
        if request.endpoint_type != 1 {
            response.error_code = ResponseError::UnsupportedEndpointType.code();
            response.error_message = Some(str_bytes("only broker endpoints are served"));
            response.brokers.clear();
            return (ResponseKind::DescribeCluster(response), true);
        }
    }
    if request.include_cluster_authorized_operations {
        response.cluster_authorized_operations = i32::MIN;
    }
    (ResponseKind::DescribeCluster(response), false)
}
