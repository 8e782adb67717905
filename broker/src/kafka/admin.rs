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
    AlterClientQuotasRequest, AlterClientQuotasResponse, AlterConfigsRequest, AlterConfigsResponse,
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, BrokerId,
    CreateAclsRequest, CreateAclsResponse, CreatePartitionsRequest, CreatePartitionsResponse,
    DeleteAclsRequest, DeleteAclsResponse, DeleteRecordsRequest, DeleteRecordsResponse,
    DescribeAclsRequest, DescribeAclsResponse, DescribeClientQuotasRequest,
    DescribeClientQuotasResponse, DescribeClusterRequest, DescribeClusterResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, DescribeUserScramCredentialsRequest,
    DescribeUserScramCredentialsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::errors;
use super::handlers::{Answer, str_bytes};
use crate::config::BrokerConfig;
use crate::error::{BrokerError, BrokerResult};
use crate::ops;
use crate::router::{ShardAnswer, ShardCall, TopicPartition};
use crate::security::{Caller, acl, quotas};
use crate::shard::Shard;
use crate::topic;
use weir_replication::AclOperation;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// Kafka's ConfigType codes of the broker settings that are not topic defaults.
const TYPE_BOOLEAN: i8 = topic::ConfigType::Boolean as i8;
const TYPE_INT: i8 = topic::ConfigType::Int as i8;
const TYPE_LONG: i8 = topic::ConfigType::Long as i8;

/// One described config entry.
struct Entry {
    name: &'static str,
    value: String,
    source: topic::ConfigSource,
    read_only: bool,
    config_type: i8,
    documentation: &'static str,
    /// Every level that sets it, highest precedence first (the entry itself first).
    synonyms: Vec<topic::Synonym>,
}

/// The broker's settings as Kafka names them, with their Kafka types: those of its own,
/// then the defaults of every topic config.
fn broker_configs(
    config: &BrokerConfig,
    topic_defaults: &topic::TopicConfig,
) -> Vec<(&'static str, String, i8)> {
    let own = [
        ("broker.id", config.node_id.to_string(), TYPE_INT),
        (
            "auto.create.topics.enable",
            config.auto_create_topics_enable.to_string(),
            TYPE_BOOLEAN,
        ),
        (
            "num.partitions",
            config.default_partitions.to_string(),
            TYPE_INT,
        ),
        (
            "offsets.topic.num.partitions",
            config.offsets_topic_partitions.to_string(),
            TYPE_INT,
        ),
        (
            "group.initial.rebalance.delay.ms",
            config.group_initial_rebalance_delay_ms.to_string(),
            TYPE_INT,
        ),
        (
            "group.min.session.timeout.ms",
            config.group_min_session_timeout_ms.to_string(),
            TYPE_INT,
        ),
        (
            "group.max.session.timeout.ms",
            config.group_max_session_timeout_ms.to_string(),
            TYPE_INT,
        ),
        (
            "socket.request.max.bytes",
            config.frame_bytes_max.to_string(),
            TYPE_INT,
        ),
        (
            "log.retention.check.interval.ms",
            config.retention_check_ms.to_string(),
            TYPE_LONG,
        ),
        (
            "log.cleaner.backoff.ms",
            config.log_cleaner_backoff_ms.to_string(),
            TYPE_LONG,
        ),
        (
            "log.preallocate",
            config.log_preallocate.to_string(),
            TYPE_BOOLEAN,
        ),
        (
            "log.cleaner.dedupe.buffer.size",
            config.log_cleaner_dedupe_buffer_size.to_string(),
            TYPE_LONG,
        ),
        (
            "connections.max.reauth.ms",
            config.connections_max_reauth_ms.to_string(),
            TYPE_LONG,
        ),
    ];
    let topic_defaults = topic::TOPIC_CONFIG_KEYS.iter().map(|key| {
        (
            key.broker_name,
            key.value(topic_defaults),
            key.config_type as i8,
        )
    });
    own.into_iter().chain(topic_defaults).collect()
}

/// The broker's settings, read-only, each with its source: the broker's configuration
/// where that differs from the built-in default, else the default.
fn describe_broker(shard: &Shard) -> Vec<Entry> {
    let built_in = broker_configs(&BrokerConfig::default(), &topic::TopicConfig::default());
    broker_configs(&shard.config, &shard.topic_defaults)
        .into_iter()
        .zip(built_in)
        .map(|((name, value, config_type), (_, default, _))| {
            let mut synonyms = Vec::with_capacity(2);
            if value != default {
                synonyms.push(topic::Synonym {
                    name,
                    value: value.clone(),
                    source: topic::ConfigSource::Broker,
                });
            }
            synonyms.push(topic::Synonym {
                name,
                value: default,
                source: topic::ConfigSource::Default,
            });
            Entry {
                name,
                value,
                source: synonyms[0].source,
                read_only: true,
                config_type,
                documentation: "set in the broker's configuration (docs/CONFIG.md)",
                synonyms,
            }
        })
        .collect()
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
            let described = topic::describe(&shard.topic_defaults, &topic.configs)
                .map_err(|e| (ResponseError::InvalidConfig, e))?;
            Ok(described
                .into_iter()
                .map(|config| Entry {
                    name: config.key.name,
                    value: config.value,
                    source: config.source,
                    read_only: false,
                    config_type: config.key.config_type as i8,
                    documentation: config.key.documentation,
                    synonyms: config.synonyms,
                })
                .collect())
        }
        RESOURCE_BROKER => {
            check_broker_name(shard, name)?;
            Ok(describe_broker(shard))
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

/// Whether `caller` may do `operation` (DESCRIBE_CONFIGS or ALTER_CONFIGS) on a config
/// resource: a topic's configs, or (a broker's) the cluster's.
fn may_configs(
    shard: &Shard,
    caller: &Caller,
    operation: AclOperation,
    resource_type: i8,
    name: &str,
) -> BrokerResult<()> {
    match resource_type {
        RESOURCE_TOPIC => ops::may_topic(shard, caller, operation, name),
        _ => shard.authorizer.check_cluster(caller, operation),
    }
}

pub fn describe_configs(
    shard: &Shard,
    caller: &Caller,
    version: i16,
    request: DescribeConfigsRequest,
) -> Answer {
    let mut failed = false;
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let mut result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let (kind, name) = (resource.resource_type, &resource.resource_name);
            let described = may_configs(shard, caller, AclOperation::DescribeConfigs, kind, name)
                .map_err(|e| (errors::code(&e), e.to_string()))
                .and_then(|()| {
                    describe_resource(shard, kind, name).map_err(|(e, m)| (e.code(), m))
                });
            match described {
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
                    result.error_code = error;
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
        .with_config_source(entry.source as i8);
    if version >= 1 && synonyms {
        result.synonyms = entry
            .synonyms
            .iter()
            .map(|synonym| {
                DescribeConfigsSynonym::default()
                    .with_name(str_bytes(synonym.name))
                    .with_value(Some(str_bytes(&synonym.value)))
                    .with_source(synonym.source as i8)
            })
            .collect();
    }
    if version >= 3 {
        result.config_type = entry.config_type;
        result.documentation = Some(str_bytes(entry.documentation));
    }
    result
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
pub async fn alter_configs(
    shard: &Rc<Shard>,
    caller: &Caller,
    request: AlterConfigsRequest,
) -> Answer {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let name = resource.resource_name.to_string();
        let kind = resource.resource_type;
        let allowed = may_configs(shard, caller, AclOperation::AlterConfigs, kind, &name);
        let result = match resource.resource_type {
            _ if allowed.is_err() => allowed,
            RESOURCE_TOPIC => {
                let configs = resource
                    .configs
                    .iter()
                    .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
                    .collect();
                ops::set_topic_overrides(shard, &name, configs, request.validate_only).await
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

/// One IncrementalAlterConfigs operation (Kafka's AlterConfigOp.OpType codes).
fn config_change(operation: i8, value: Option<&str>) -> BrokerResult<topic::ConfigChange<'_>> {
    match (operation, value) {
        (0, Some(value)) => Ok(topic::ConfigChange::Set(value)),
        (1, _) => Ok(topic::ConfigChange::Delete),
        (2, Some(value)) => Ok(topic::ConfigChange::Append(value)),
        (3, Some(value)) => Ok(topic::ConfigChange::Subtract(value)),
        (0 | 2 | 3, None) => Err(BrokerError::InvalidConfig(format!(
            "operation {operation} (SET, APPEND or SUBTRACT) needs a value"
        ))),
        (other, _) => Err(BrokerError::InvalidRequest(format!(
            "config operation {other} is unknown (0 SET, 1 DELETE, 2 APPEND, 3 SUBTRACT)"
        ))),
    }
}

pub async fn incremental_alter_configs(
    shard: &Rc<Shard>,
    caller: &Caller,
    request: IncrementalAlterConfigsRequest,
) -> Answer {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let name = resource.resource_name.to_string();
        let kind = resource.resource_type;
        let allowed = may_configs(shard, caller, AclOperation::AlterConfigs, kind, &name);
        let result = match resource.resource_type {
            _ if allowed.is_err() => allowed,
            RESOURCE_TOPIC => match shard.image().topic(&name).cloned() {
                None => Err(BrokerError::UnknownTopic(name.clone())),
                Some(topic) => {
                    let mut configs = topic.configs.clone();
                    let changed = resource.configs.iter().try_for_each(|c| {
                        let change = config_change(c.config_operation, c.value.as_deref())?;
                        topic::change_overrides(
                            &mut configs,
                            &shard.topic_defaults,
                            &c.name,
                            change,
                        )
                        .map_err(BrokerError::InvalidConfig)
                    });
                    match changed {
                        Ok(()) => {
                            ops::set_topic_overrides(shard, &name, configs, request.validate_only)
                                .await
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

pub async fn create_partitions(
    shard: &Rc<Shard>,
    caller: &Caller,
    request: CreatePartitionsRequest,
) -> Answer {
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
        let result = if let Err(error) = ops::may_topic(shard, caller, AclOperation::Alter, &name) {
            Err(error)
        } else if foreign_broker {
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

pub async fn delete_records(
    shard: &Rc<Shard>,
    caller: &Caller,
    request: DeleteRecordsRequest,
) -> Answer {
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
    let (asked, refused) = ops::split_refused(asked, |tp| {
        ops::may_topic(shard, caller, AclOperation::Delete, &tp.topic)
    });
    let mut results = ops::fan_out(
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
    results.extend(refused.into_iter().map(|(tp, e)| (tp, Err(e))));
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

pub fn describe_cluster(
    shard: &Shard,
    listener: &crate::security::Listener,
    version: i16,
    request: DescribeClusterRequest,
) -> Answer {
    let brokers = crate::kafka::topics::brokers(shard, listener)
        .into_iter()
        .map(|broker| {
            DescribeClusterBroker::default()
                .with_broker_id(broker.node_id)
                .with_host(broker.host)
                .with_port(broker.port)
        })
        .collect();
    let mut response = DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(&shard.image().cluster_id))
        .with_controller_id(BrokerId(shard.controller_node().unwrap_or(-1)))
        .with_brokers(brokers);
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

pub fn describe_user_scram_credentials(
    shard: &Shard,
    caller: &Caller,
    request: DescribeUserScramCredentialsRequest,
) -> Answer {
    use kafka_protocol::messages::describe_user_scram_credentials_response::{
        CredentialInfo, DescribeUserScramCredentialsResult,
    };
    let users = request
        .users
        .filter(|users| !users.is_empty())
        .map(|users| users.into_iter().map(|u| u.name.to_string()).collect());
    if let Err(error) = shard
        .authorizer
        .check_cluster(caller, AclOperation::Describe)
    {
        let response = DescribeUserScramCredentialsResponse::default()
            .with_error_code(errors::code(&error))
            .with_error_message(Some(str_bytes(&error.to_string())));
        return (ResponseKind::DescribeUserScramCredentials(response), true);
    }
    let mut failed = false;
    let results = crate::security::users::describe(shard, users)
        .into_iter()
        .map(|(user, result)| {
            let entry = DescribeUserScramCredentialsResult::default().with_user(str_bytes(&user));
            match result {
                Ok(credentials) => entry.with_credential_infos(
                    credentials
                        .into_iter()
                        .map(|(mechanism, iterations)| {
                            CredentialInfo::default()
                                .with_mechanism(mechanism.id())
                                .with_iterations(iterations as i32)
                        })
                        .collect(),
                ),
                Err(error) => {
                    failed = true;
                    entry
                        .with_error_code(errors::code(&error))
                        .with_error_message(Some(str_bytes(&error.to_string())))
                }
            }
        })
        .collect();
    let response = DescribeUserScramCredentialsResponse::default().with_results(results);
    (ResponseKind::DescribeUserScramCredentials(response), failed)
}

pub async fn alter_user_scram_credentials(
    shard: &Rc<Shard>,
    caller: &Caller,
    request: AlterUserScramCredentialsRequest,
) -> Answer {
    use crate::security::users::{Deletion, Upsertion};
    use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
    let upsertions = request
        .upsertions
        .into_iter()
        .map(|u| Upsertion {
            user: u.name.to_string(),
            mechanism: u.mechanism,
            iterations: u.iterations,
            salt: u.salt.to_vec(),
            salted_password: u.salted_password.to_vec(),
        })
        .collect();
    let deletions = request
        .deletions
        .into_iter()
        .map(|d| Deletion {
            user: d.name.to_string(),
            mechanism: d.mechanism,
        })
        .collect();
    let mut failed = false;
    let results = crate::security::users::alter(shard, caller, upsertions, deletions)
        .await
        .into_iter()
        .map(|(user, result)| {
            let entry = AlterUserScramCredentialsResult::default().with_user(str_bytes(&user));
            match result {
                Ok(()) => entry,
                Err(error) => {
                    failed = true;
                    entry
                        .with_error_code(errors::code(&error))
                        .with_error_message(Some(str_bytes(&error.to_string())))
                }
            }
        })
        .collect();
    let response = AlterUserScramCredentialsResponse::default().with_results(results);
    (ResponseKind::AlterUserScramCredentials(response), failed)
}

/// `(error code, message)` of a failed item, for the per-item error fields.
fn item_error(error: &BrokerError) -> (i16, Option<StrBytes>) {
    (errors::code(error), Some(str_bytes(&error.to_string())))
}

pub async fn create_acls(shard: &Rc<Shard>, caller: &Caller, request: CreateAclsRequest) -> Answer {
    use kafka_protocol::messages::create_acls_response::AclCreationResult;
    let bindings = request
        .creations
        .iter()
        .map(|c| {
            acl::binding(
                c.resource_type,
                c.resource_name.as_str(),
                c.resource_pattern_type,
                c.principal.as_str(),
                c.host.as_str(),
                c.operation,
                c.permission_type,
            )
        })
        .collect();
    let mut failed = false;
    let results = acl::create(shard, caller, bindings)
        .await
        .into_iter()
        .map(|result| match result {
            Ok(()) => AclCreationResult::default(),
            Err(error) => {
                failed = true;
                let (code, message) = item_error(&error);
                AclCreationResult::default()
                    .with_error_code(code)
                    .with_error_message(message)
            }
        })
        .collect();
    let response = CreateAclsResponse::default().with_results(results);
    (ResponseKind::CreateAcls(response), failed)
}

pub fn describe_acls(shard: &Shard, caller: &Caller, request: DescribeAclsRequest) -> Answer {
    use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
    let filter = acl::AclFilter::new(
        request.resource_type_filter,
        request.resource_name_filter.as_deref(),
        request.pattern_type_filter,
        request.principal_filter.as_deref(),
        request.host_filter.as_deref(),
        request.operation,
        request.permission_type,
    );
    let filter = shard
        .authorizer
        .check_cluster(caller, AclOperation::Describe)
        .and(filter);
    let filter = match filter {
        Ok(filter) => filter,
        Err(error) => {
            let (code, message) = item_error(&error);
            let response = DescribeAclsResponse::default()
                .with_error_code(code)
                .with_error_message(message);
            return (ResponseKind::DescribeAcls(response), true);
        }
    };
    // Grouped by resource, as Kafka answers.
    let mut resources: Vec<DescribeAclsResource> = Vec::new();
    for binding in acl::describe(shard, &filter) {
        let description = AclDescription::default()
            .with_principal(str_bytes(&binding.principal))
            .with_host(str_bytes(&binding.host))
            .with_operation(binding.operation.id())
            .with_permission_type(binding.permission.id());
        let same = |r: &&mut DescribeAclsResource| {
            r.resource_type == binding.resource_type.id()
                && r.resource_name.as_str() == binding.resource_name
                && r.pattern_type == binding.pattern.id()
        };
        match resources.iter_mut().find(|r| same(r)) {
            Some(resource) => resource.acls.push(description),
            None => resources.push(
                DescribeAclsResource::default()
                    .with_resource_type(binding.resource_type.id())
                    .with_resource_name(str_bytes(&binding.resource_name))
                    .with_pattern_type(binding.pattern.id())
                    .with_acls(vec![description]),
            ),
        }
    }
    let response = DescribeAclsResponse::default().with_resources(resources);
    (ResponseKind::DescribeAcls(response), false)
}

pub async fn delete_acls(shard: &Rc<Shard>, caller: &Caller, request: DeleteAclsRequest) -> Answer {
    use kafka_protocol::messages::delete_acls_response::{
        DeleteAclsFilterResult, DeleteAclsMatchingAcl,
    };
    let filters = request
        .filters
        .iter()
        .map(|f| {
            acl::AclFilter::new(
                f.resource_type_filter,
                f.resource_name_filter.as_deref(),
                f.pattern_type_filter,
                f.principal_filter.as_deref(),
                f.host_filter.as_deref(),
                f.operation,
                f.permission_type,
            )
        })
        .collect();
    let mut failed = false;
    let results = acl::delete(shard, caller, filters)
        .await
        .into_iter()
        .map(|result| match result {
            Ok(acls) => DeleteAclsFilterResult::default().with_matching_acls(
                acls.into_iter()
                    .map(|b| {
                        DeleteAclsMatchingAcl::default()
                            .with_resource_type(b.resource_type.id())
                            .with_resource_name(str_bytes(&b.resource_name))
                            .with_pattern_type(b.pattern.id())
                            .with_principal(str_bytes(&b.principal))
                            .with_host(str_bytes(&b.host))
                            .with_operation(b.operation.id())
                            .with_permission_type(b.permission.id())
                    })
                    .collect(),
            ),
            Err(error) => {
                failed = true;
                let (code, message) = item_error(&error);
                DeleteAclsFilterResult::default()
                    .with_error_code(code)
                    .with_error_message(message)
            }
        })
        .collect();
    let response = DeleteAclsResponse::default().with_filter_results(results);
    (ResponseKind::DeleteAcls(response), failed)
}

pub fn describe_client_quotas(
    shard: &Shard,
    caller: &Caller,
    request: DescribeClientQuotasRequest,
) -> Answer {
    use kafka_protocol::messages::describe_client_quotas_response::{
        EntityData, EntryData, ValueData,
    };
    let components: Vec<(&str, i8, Option<&str>)> = request
        .components
        .iter()
        .map(|c| (c.entity_type.as_str(), c.match_type, c._match.as_deref()))
        .collect();
    let described = quotas::QuotaFilter::new(&components, request.strict)
        .and_then(|filter| quotas::describe(shard, caller, &filter));
    let response = match described {
        Ok(found) => DescribeClientQuotasResponse::default().with_entries(Some(
            found
                .into_iter()
                .map(|(entity, keys)| {
                    let entity = quotas::entity_parts(&entity)
                        .into_iter()
                        .map(|(kind, name)| {
                            EntityData::default()
                                .with_entity_type(str_bytes(kind))
                                .with_entity_name(name.map(str_bytes))
                        })
                        .collect();
                    let values = keys
                        .into_iter()
                        .map(|(key, value)| {
                            ValueData::default()
                                .with_key(str_bytes(&key))
                                .with_value(value as f64)
                        })
                        .collect();
                    EntryData::default().with_entity(entity).with_values(values)
                })
                .collect(),
        )),
        Err(error) => {
            let (code, message) = item_error(&error);
            let response = DescribeClientQuotasResponse::default()
                .with_error_code(code)
                .with_error_message(message);
            return (ResponseKind::DescribeClientQuotas(response), true);
        }
    };
    (ResponseKind::DescribeClientQuotas(response), false)
}

pub async fn alter_client_quotas(
    shard: &Rc<Shard>,
    caller: &Caller,
    request: AlterClientQuotasRequest,
) -> Answer {
    use kafka_protocol::messages::alter_client_quotas_response::{EntityData, EntryData};
    let entries = request
        .entries
        .iter()
        .map(|entry| {
            let parts: Vec<(&str, Option<&str>)> = entry
                .entity
                .iter()
                .map(|e| (e.entity_type.as_str(), e.entity_name.as_deref()))
                .collect();
            let changes = entry
                .ops
                .iter()
                .map(|op| (op.key.to_string(), (!op.remove).then_some(op.value)))
                .collect();
            (quotas::entity(&parts), changes)
        })
        .collect();
    let results = quotas::alter(shard, caller, entries, request.validate_only).await;
    let mut failed = false;
    let entries = request
        .entries
        .into_iter()
        .zip(results)
        .map(|(entry, result)| {
            let entity = entry
                .entity
                .into_iter()
                .map(|e| {
                    EntityData::default()
                        .with_entity_type(e.entity_type)
                        .with_entity_name(e.entity_name)
                })
                .collect();
            let mut answer = EntryData::default().with_entity(entity);
            if let Err(error) = result {
                failed = true;
                (answer.error_code, answer.error_message) = item_error(&error);
            }
            answer
        })
        .collect();
    let response = AlterClientQuotasResponse::default().with_entries(entries);
    (ResponseKind::AlterClientQuotas(response), failed)
}
