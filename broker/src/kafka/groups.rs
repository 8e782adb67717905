//! Consumer groups over the Kafka protocol: finding the coordinator, membership
//! (JoinGroup, SyncGroup, Heartbeat, LeaveGroup), committed offsets and group admin.
//! The decisions are the coordinator's (`crate::group`); this module translates.

use std::rc::Rc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest,
    OffsetFetchResponse, RequestHeader, ResponseKind, SyncGroupRequest, SyncGroupResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::errors;
use super::handlers::{Answer, str_bytes};
use crate::error::BrokerError;
use crate::group::{GroupState, JoinRequest, JoinResult, SyncRequest};
use crate::ops;
use crate::router::{GroupAnswer, GroupCall, MemberClaim, OffsetCommit, TopicPartition};
use crate::security::{Caller, Listener};
use crate::shard::Shard;
use weir_replication::{AclOperation, AclResourceType};

/// Kafka's code for a broker error met while reaching a group's coordinator.
fn coordinator_error(error: &BrokerError) -> i16 {
    match error {
        BrokerError::ShuttingDown => ResponseError::CoordinatorNotAvailable.code(),
        other => errors::code(other),
    }
}

fn code(result: Result<(), ResponseError>) -> i16 {
    result.err().map_or(0, |e| e.code())
}

fn optional(text: Option<&StrBytes>) -> Option<String> {
    text.map(|t| t.to_string()).filter(|t| !t.is_empty())
}

/// A group's coordinator is the leader of its offsets partition, a transactional id's
/// the leader of its `__transaction_state` partition, on whichever broker.
const GROUP_KEY: i8 = 0;
const TRANSACTION_KEY: i8 = 1;

pub fn find_coordinator(
    shard: &Shard,
    caller: &Caller,
    listener: &Listener,
    version: i16,
    request: FindCoordinatorRequest,
) -> Answer {
    let lookup = |key: &str| -> (i16, Option<StrBytes>, BrokerId, StrBytes, i32) {
        let none = |code: i16, message: String| {
            (
                code,
                Some(str_bytes(&message)),
                BrokerId(-1),
                StrBytes::default(),
                -1,
            )
        };
        let coordinator = match request.key_type {
            GROUP_KEY => ops::may_group(shard, caller, AclOperation::Describe, key)
                .and_then(|()| crate::offsets::validate_group(key))
                .map(|()| ops::group_coordinator(shard, key)),
            TRANSACTION_KEY => shard
                .authorizer
                .check(
                    caller,
                    AclOperation::Describe,
                    AclResourceType::TransactionalId,
                    key,
                )
                .and_then(|()| crate::txn::coordinator::validate_id(key))
                .map(|()| ops::txn_coordinator(shard, key)),
            other => Err(BrokerError::InvalidRequest(format!(
                "unknown coordinator key type {other}"
            ))),
        };
        let coordinator = match coordinator {
            Ok(coordinator) => coordinator,
            Err(error) => return none(coordinator_error(&error), error.to_string()),
        };
        match coordinator {
            Some(broker) => (
                0,
                None,
                BrokerId(broker.node),
                str_bytes(&broker.endpoint.host),
                i32::from(broker.endpoint.kafka_port_of(listener.name())),
            ),
            None => none(
                ResponseError::CoordinatorNotAvailable.code(),
                format!("{key} has no coordinator at the moment"),
            ),
        }
    };
    let mut response = FindCoordinatorResponse::default();
    let mut failed = false;
    if version >= 4 {
        for key in &request.coordinator_keys {
            let (error, message, node, host, port) = lookup(key);
            failed |= error != 0;
            response.coordinators.push(
                Coordinator::default()
                    .with_key(key.clone())
                    .with_node_id(node)
                    .with_host(host)
                    .with_port(port)
                    .with_error_code(error)
                    .with_error_message(message),
            );
        }
    } else {
        let (error, message, node, host, port) = lookup(&request.key);
        failed = error != 0;
        response = response
            .with_error_code(error)
            .with_node_id(node)
            .with_host(host)
            .with_port(port);
        if version >= 1 {
            response = response.with_error_message(message);
        }
    }
    (ResponseKind::FindCoordinator(response), failed)
}

pub async fn join_group(
    shard: &Rc<Shard>,
    caller: &Caller,
    header: &RequestHeader,
    client_host: &str,
    request: JoinGroupRequest,
) -> Answer {
    let version = header.request_api_version;
    let client_id = header
        .client_id
        .as_ref()
        .map(|c| c.to_string())
        .unwrap_or_default();
    let group = request.group_id.to_string();
    let join = JoinRequest {
        member_id: request.member_id.to_string(),
        instance_id: optional(request.group_instance_id.as_ref()),
        client_host: client_host.to_string(),
        session_timeout_ms: request.session_timeout_ms,
        rebalance_timeout_ms: if version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
        fresh_member_id: format!("{client_id}-{}", uuid::Uuid::new_v4()),
        client_id,
    };
    let call = GroupCall::Join {
        group: group.clone(),
        request: join,
    };
    let result = match ops::group_call(shard, caller, AclOperation::Read, &group, call).await {
        Ok(GroupAnswer::Join(result)) => result,
        Ok(_) => JoinResult::failed(ResponseError::UnknownServerError, ""),
        Err(error) => {
            let response = JoinGroupResponse::default()
                .with_error_code(coordinator_error(&error))
                .with_generation_id(-1);
            return (ResponseKind::JoinGroup(response), true);
        }
    };
    let error = result.error.map_or(0, |e| e.code());
    let mut response = JoinGroupResponse::default()
        .with_error_code(error)
        .with_generation_id(result.generation)
        .with_protocol_name(result.protocol.as_deref().map(str_bytes))
        .with_leader(str_bytes(&result.leader))
        .with_member_id(str_bytes(&result.member_id))
        .with_members(
            result
                .members
                .iter()
                .map(|(id, instance, metadata)| {
                    let member = JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(id))
                        .with_metadata(metadata.clone());
                    if version >= 5 {
                        member.with_group_instance_id(instance.as_deref().map(str_bytes))
                    } else {
                        member
                    }
                })
                .collect(),
        );
    if version < 6 && response.protocol_name.is_none() {
        // Before flexible versions the protocol name is not nullable.
        response.protocol_name = Some(StrBytes::default());
    }
    if version >= 7 {
        response.protocol_type = result.protocol_type.as_deref().map(str_bytes);
    }
    // MEMBER_ID_REQUIRED is the protocol working as designed, not a failure.
    let failed = error != 0 && error != ResponseError::MemberIdRequired.code();
    (ResponseKind::JoinGroup(response), failed)
}

pub async fn sync_group(
    shard: &Rc<Shard>,
    caller: &Caller,
    version: i16,
    request: SyncGroupRequest,
) -> Answer {
    let group = request.group_id.to_string();
    let sync = SyncRequest {
        member_id: request.member_id.to_string(),
        instance_id: optional(request.group_instance_id.as_ref()),
        generation: request.generation_id,
        protocol_type: optional(request.protocol_type.as_ref()),
        protocol: optional(request.protocol_name.as_ref()),
        assignments: request
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.clone()))
            .collect(),
    };
    let call = GroupCall::Sync {
        group: group.clone(),
        request: sync,
    };
    let mut response = SyncGroupResponse::default();
    match ops::group_call(shard, caller, AclOperation::Read, &group, call).await {
        Ok(GroupAnswer::Sync(result)) => {
            response.error_code = result.error.map_or(0, |e| e.code());
            response.assignment = result.assignment;
            if version >= 5 {
                response.protocol_type = result.protocol_type.as_deref().map(str_bytes);
                response.protocol_name = result.protocol.as_deref().map(str_bytes);
            }
        }
        Ok(_) => response.error_code = ResponseError::UnknownServerError.code(),
        Err(error) => response.error_code = coordinator_error(&error),
    }
    let failed = response.error_code != 0;
    (ResponseKind::SyncGroup(response), failed)
}

pub async fn heartbeat(shard: &Rc<Shard>, caller: &Caller, request: HeartbeatRequest) -> Answer {
    let group = request.group_id.to_string();
    let member = MemberClaim {
        member_id: request.member_id.to_string(),
        instance_id: optional(request.group_instance_id.as_ref()),
        generation: request.generation_id,
    };
    let call = GroupCall::Heartbeat {
        group: group.clone(),
        member,
    };
    let error = match ops::group_call(shard, caller, AclOperation::Read, &group, call).await {
        Ok(GroupAnswer::Heartbeat(result)) => code(result),
        Ok(_) => ResponseError::UnknownServerError.code(),
        Err(error) => coordinator_error(&error),
    };
    // A rebalance in progress is how a member learns to rejoin, not a failure.
    let failed = error != 0 && error != ResponseError::RebalanceInProgress.code();
    (
        ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(error)),
        failed,
    )
}

pub async fn leave_group(
    shard: &Rc<Shard>,
    caller: &Caller,
    version: i16,
    request: LeaveGroupRequest,
) -> Answer {
    let group = request.group_id.to_string();
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    optional(m.group_instance_id.as_ref()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let call = GroupCall::Leave {
        group: group.clone(),
        members: members.clone(),
    };
    let results = match ops::group_call(shard, caller, AclOperation::Read, &group, call).await {
        Ok(GroupAnswer::Leave(results)) => results,
        Ok(_) => vec![Err(ResponseError::UnknownServerError); members.len()],
        Err(error) => {
            let response = LeaveGroupResponse::default().with_error_code(coordinator_error(&error));
            return (ResponseKind::LeaveGroup(response), true);
        }
    };
    let failed = results.iter().any(Result::is_err);
    let mut response = LeaveGroupResponse::default();
    if version >= 3 {
        response.members = members
            .iter()
            .zip(&results)
            .map(|((id, instance), result)| {
                MemberResponse::default()
                    .with_member_id(str_bytes(id))
                    .with_group_instance_id(instance.as_deref().map(str_bytes))
                    .with_error_code(code(*result))
            })
            .collect();
    } else {
        response.error_code = results.first().map_or(0, |r| code(*r));
    }
    (ResponseKind::LeaveGroup(response), failed)
}

pub async fn offset_commit(
    shard: &Rc<Shard>,
    caller: &Caller,
    request: OffsetCommitRequest,
) -> Answer {
    let group = request.group_id.to_string();
    let member = MemberClaim {
        member_id: request.member_id.to_string(),
        instance_id: optional(request.group_instance_id.as_ref()),
        generation: request.generation_id_or_member_epoch,
    };
    let offsets: Vec<OffsetCommit> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(|p| {
                let partition = TopicPartition {
                    topic: topic.name.to_string(),
                    partition: p.partition_index,
                };
                let metadata = p
                    .committed_metadata
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                OffsetCommit {
                    partition,
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata,
                }
            })
        })
        .collect();
    let results: Vec<(TopicPartition, i16)> =
        match ops::commit_offsets(shard, caller, group, member, offsets.clone()).await {
            Ok(results) => results
                .into_iter()
                .map(|(tp, result)| (tp, result.err().map_or(0, |e| errors::code(&e))))
                .collect(),
            Err(error) => {
                let error = coordinator_error(&error);
                offsets.into_iter().map(|c| (c.partition, error)).collect()
            }
        };
    let failed = results.iter().any(|(_, error)| *error != 0);
    let topics = ops::group_by_topic(results)
        .into_iter()
        .map(|(name, partitions)| {
            OffsetCommitResponseTopic::default()
                .with_name(TopicName(str_bytes(&name)))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(partition, error)| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(partition)
                                .with_error_code(error)
                        })
                        .collect(),
                )
        })
        .collect();
    (
        ResponseKind::OffsetCommit(OffsetCommitResponse::default().with_topics(topics)),
        failed,
    )
}

/// One partition's answer to OffsetFetch.
struct FetchedOffset {
    partition: i32,
    offset: i64,
    leader_epoch: i32,
    metadata: String,
    error: i16,
}

impl FetchedOffset {
    /// No committed offset to answer with: none there (`error` 0), or an error.
    fn none(partition: i32, error: i16) -> FetchedOffset {
        FetchedOffset {
            partition,
            offset: -1,
            leader_epoch: -1,
            metadata: String::new(),
            error,
        }
    }
}

/// Each partition's committed offset, metadata and error. With `require_stable`
/// (KIP-447), a partition with offsets of an open transaction pending gets
/// UNSTABLE_OFFSET_COMMIT, which clients retry: its committed offset is about to change.
async fn fetch_group_offsets(
    shard: &Rc<Shard>,
    caller: &Caller,
    group: String,
    wanted: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> Result<Vec<(String, Vec<FetchedOffset>)>, i16> {
    ops::may_group(shard, caller, AclOperation::Describe, &group)
        .map_err(|e| coordinator_error(&e))?;
    let described =
        |topic: &str| ops::may_topic(shard, caller, AclOperation::Describe, topic).is_ok();
    let unstable = if require_stable {
        ops::unstable_offsets(shard, group.clone())
            .await
            .map_err(|e| coordinator_error(&e))?
    } else {
        Vec::new()
    };
    let committed = ops::committed_offsets(shard, group)
        .await
        .map_err(|e| coordinator_error(&e))?;
    let found = |topic: &str, partition: i32| {
        if !described(topic) {
            return FetchedOffset::none(partition, ResponseError::TopicAuthorizationFailed.code());
        }
        if unstable
            .iter()
            .any(|u| u.topic == topic && u.partition == partition)
        {
            return FetchedOffset::none(partition, ResponseError::UnstableOffsetCommit.code());
        }
        committed
            .iter()
            .find(|c| c.partition.topic == topic && c.partition.partition == partition)
            .map_or(FetchedOffset::none(partition, 0), |c| FetchedOffset {
                partition,
                offset: c.offset,
                leader_epoch: c.leader_epoch,
                metadata: c.metadata.clone(),
                error: 0,
            })
    };
    Ok(match wanted {
        Some(topics) => topics
            .into_iter()
            .map(|(topic, partitions)| {
                let offsets = partitions.into_iter().map(|p| found(&topic, p)).collect();
                (topic, offsets)
            })
            .collect(),
        // Every committed offset: those of topics the caller may not describe are left out.
        None => ops::group_by_topic(
            committed
                .iter()
                .filter(|c| described(&c.partition.topic))
                .map(|c| (c.partition.clone(), ()))
                .collect(),
        )
        .into_iter()
        .map(|(topic, offsets)| {
            let offsets = offsets
                .into_iter()
                .map(|(p, ())| found(&topic, p))
                .collect();
            (topic, offsets)
        })
        .collect(),
    })
}

pub async fn offset_fetch(
    shard: &Rc<Shard>,
    caller: &Caller,
    version: i16,
    request: OffsetFetchRequest,
) -> Answer {
    let mut response = OffsetFetchResponse::default();
    let mut failed = false;
    if version >= 8 {
        for asked in request.groups {
            let wanted = asked.topics.map(|topics| {
                topics
                    .into_iter()
                    .map(|t| (t.name.to_string(), t.partition_indexes))
                    .collect()
            });
            let mut group =
                OffsetFetchResponseGroup::default().with_group_id(asked.group_id.clone());
            let group_id = asked.group_id.to_string();
            match fetch_group_offsets(shard, caller, group_id, wanted, request.require_stable).await
            {
                Ok(topics) => {
                    group.topics = topics
                        .into_iter()
                        .map(|(name, offsets)| {
                            OffsetFetchResponseTopics::default()
                                .with_name(TopicName(str_bytes(&name)))
                                .with_partitions(
                                    offsets
                                        .into_iter()
                                        .map(|f| {
                                            failed |= f.error != 0;
                                            OffsetFetchResponsePartitions::default()
                                                .with_partition_index(f.partition)
                                                .with_committed_offset(f.offset)
                                                .with_committed_leader_epoch(f.leader_epoch)
                                                .with_metadata(Some(str_bytes(&f.metadata)))
                                                .with_error_code(f.error)
                                        })
                                        .collect(),
                                )
                        })
                        .collect();
                }
                Err(error) => {
                    failed = true;
                    group.error_code = error;
                }
            }
            response.groups.push(group);
        }
    } else {
        let wanted = request.topics.map(|topics| {
            topics
                .into_iter()
                .map(|t| (t.name.to_string(), t.partition_indexes))
                .collect()
        });
        let require_stable = version >= 7 && request.require_stable;
        let asked: Option<Vec<(String, Vec<i32>)>> = wanted.clone();
        let topics = match fetch_group_offsets(
            shard,
            caller,
            request.group_id.to_string(),
            wanted,
            require_stable,
        )
        .await
        {
            Ok(topics) => topics,
            Err(error) => {
                failed = true;
                if version >= 2 {
                    response.error_code = error;
                    Vec::new()
                } else {
                    // Versions 0 and 1 have no request-wide error: each partition asked
                    // for carries it, as Kafka answers.
                    asked
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(name, partitions)| {
                            let offsets = partitions
                                .into_iter()
                                .map(|p| FetchedOffset::none(p, error))
                                .collect();
                            (name, offsets)
                        })
                        .collect()
                }
            }
        };
        response.topics = topics
            .into_iter()
            .map(|(name, offsets)| {
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(str_bytes(&name)))
                    .with_partitions(
                        offsets
                            .into_iter()
                            .map(|f| {
                                failed |= f.error != 0;
                                let partition = OffsetFetchResponsePartition::default()
                                    .with_partition_index(f.partition)
                                    .with_committed_offset(f.offset)
                                    .with_metadata(Some(str_bytes(&f.metadata)))
                                    .with_error_code(f.error);
                                if version >= 5 {
                                    partition.with_committed_leader_epoch(f.leader_epoch)
                                } else {
                                    partition
                                }
                            })
                            .collect(),
                    )
            })
            .collect();
    }
    (ResponseKind::OffsetFetch(response), failed)
}

pub async fn list_groups(
    shard: &Rc<Shard>,
    caller: &Caller,
    version: i16,
    request: ListGroupsRequest,
) -> Answer {
    let groups = match ops::list_groups_described(shard, caller).await {
        Ok(groups) => groups,
        Err(error) => {
            let response = ListGroupsResponse::default().with_error_code(coordinator_error(&error));
            return (ResponseKind::ListGroups(response), true);
        }
    };
    let wanted_state = |state: GroupState| {
        request.states_filter.is_empty()
            || request
                .states_filter
                .iter()
                .any(|s| s.eq_ignore_ascii_case(state.name()))
    };
    let wanted_type = request.types_filter.is_empty()
        || request
            .types_filter
            .iter()
            .any(|t| t.eq_ignore_ascii_case("classic"));
    let listed = groups
        .into_iter()
        .filter(|(_, state, _)| wanted_state(*state) && wanted_type)
        .map(|(name, state, protocol_type)| {
            let mut group = ListedGroup::default()
                .with_group_id(GroupId(str_bytes(&name)))
                .with_protocol_type(str_bytes(&protocol_type));
            if version >= 4 {
                group.group_state = str_bytes(state.name());
            }
            if version >= 5 {
                group.group_type = str_bytes("classic");
            }
            group
        })
        .collect();
    (
        ResponseKind::ListGroups(ListGroupsResponse::default().with_groups(listed)),
        false,
    )
}

pub async fn describe_groups(
    shard: &Rc<Shard>,
    caller: &Caller,
    version: i16,
    request: DescribeGroupsRequest,
) -> Answer {
    let mut response = DescribeGroupsResponse::default();
    let mut failed = false;
    for group_id in request.groups {
        let group = group_id.to_string();
        let mut described = DescribedGroup::default()
            .with_group_id(group_id)
            // Kafka's answer for a group it does not know: no error, state Dead.
            .with_group_state(str_bytes(GroupState::Dead.name()));
        if version >= 3 {
            // "Not requested": the default is -2147483648 in Kafka's schema.
            described.authorized_operations = i32::MIN;
        }
        let call = GroupCall::Describe {
            group: group.clone(),
        };
        match ops::group_call(shard, caller, AclOperation::Describe, &group, call).await {
            Ok(GroupAnswer::Describe(Some(found))) => {
                described.group_state = str_bytes(found.state.name());
                described.protocol_type = str_bytes(&found.protocol_type);
                described.protocol_data = str_bytes(&found.protocol);
                described.members = found
                    .members
                    .into_iter()
                    .map(|m| {
                        let instance = m.instance_id.as_deref().filter(|_| version >= 4);
                        DescribedGroupMember::default()
                            .with_member_id(str_bytes(&m.member_id))
                            .with_group_instance_id(instance.map(str_bytes))
                            .with_client_id(str_bytes(&m.client_id))
                            .with_client_host(str_bytes(&m.client_host))
                            .with_member_metadata(m.metadata)
                            .with_member_assignment(m.assignment)
                    })
                    .collect();
            }
            Ok(GroupAnswer::Describe(None)) => {
                // Only committed offsets: Kafka lists such a group as Empty.
                let has_offsets = ops::committed_offsets(shard, group)
                    .await
                    .is_ok_and(|c| !c.is_empty());
                if has_offsets {
                    described.group_state = str_bytes(GroupState::Empty.name());
                }
            }
            Ok(_) => described.error_code = ResponseError::UnknownServerError.code(),
            Err(error) => {
                failed = true;
                described.error_code = coordinator_error(&error);
            }
        }
        response.groups.push(described);
    }
    (ResponseKind::DescribeGroups(response), failed)
}

pub async fn delete_groups(
    shard: &Rc<Shard>,
    caller: &Caller,
    request: DeleteGroupsRequest,
) -> Answer {
    let mut response = DeleteGroupsResponse::default();
    let mut failed = false;
    for group_id in request.groups_names {
        let group = group_id.to_string();
        let call = GroupCall::Delete {
            group: group.clone(),
        };
        let error = match ops::group_call(shard, caller, AclOperation::Delete, &group, call).await {
            Ok(GroupAnswer::Delete(result)) => code(result),
            Ok(_) => ResponseError::UnknownServerError.code(),
            Err(error) => coordinator_error(&error),
        };
        failed |= error != 0;
        response.results.push(
            DeletableGroupResult::default()
                .with_group_id(group_id)
                .with_error_code(error),
        );
    }
    (ResponseKind::DeleteGroups(response), failed)
}

/// Deletes committed offsets of partitions the group no longer consumes. A group with
/// members may be using them, so it is refused, as Kafka refuses offsets of subscribed
/// topics.
pub async fn offset_delete(
    shard: &Rc<Shard>,
    caller: &Caller,
    request: OffsetDeleteRequest,
) -> Answer {
    let group = request.group_id.to_string();
    let mut response = OffsetDeleteResponse::default();
    let describe = GroupCall::Describe {
        group: group.clone(),
    };
    let active = match ops::group_call(shard, caller, AclOperation::Delete, &group, describe).await
    {
        Ok(GroupAnswer::Describe(found)) => found.is_some_and(|g| !g.members.is_empty()),
        Ok(_) => false,
        Err(error) => {
            response.error_code = coordinator_error(&error);
            return (ResponseKind::OffsetDelete(response), true);
        }
    };
    let asked: Vec<TopicPartition> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| TopicPartition {
                topic: t.name.to_string(),
                partition: p.partition_index,
            })
        })
        .collect();
    let (asked, refused) = ops::split_refused(asked, |tp| {
        ops::may_topic(shard, caller, AclOperation::Read, &tp.topic)
    });
    let mut results: Vec<(TopicPartition, i16)> = if active {
        let error = ResponseError::GroupSubscribedToTopic.code();
        asked.into_iter().map(|tp| (tp, error)).collect()
    } else {
        match ops::delete_offsets(shard, group, asked.clone()).await {
            Ok(_) => asked.into_iter().map(|tp| (tp, 0)).collect(),
            Err(error) => {
                response.error_code = coordinator_error(&error);
                return (ResponseKind::OffsetDelete(response), true);
            }
        }
    };
    results.extend(refused.into_iter().map(|(tp, e)| (tp, errors::code(&e))));
    let failed = results.iter().any(|(_, e)| *e != 0);
    response.topics = ops::group_by_topic(results)
        .into_iter()
        .map(|(name, partitions)| {
            OffsetDeleteResponseTopic::default()
                .with_name(TopicName(str_bytes(&name)))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(p, error)| {
                            OffsetDeleteResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(error)
                        })
                        .collect(),
                )
        })
        .collect();
    (ResponseKind::OffsetDelete(response), failed)
}
