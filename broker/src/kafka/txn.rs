//! Transactions on Kafka's protocol: InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn,
//! EndTxn (at the transaction coordinator), TxnOffsetCommit (at the group coordinator)
//! and WriteTxnMarkers (at the partitions' leader). The decisions are in
//! `txn::coordinator` and `shard/txn.rs`; this module translates.

use std::rc::Rc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, EndTxnRequest, EndTxnResponse, InitProducerIdRequest,
    InitProducerIdResponse, ProducerId, ResponseKind, TxnOffsetCommitRequest,
    TxnOffsetCommitResponse, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};

use super::errors;
use super::handlers::Answer;
use super::topics;
use crate::error::BrokerError;
use crate::ops;
use crate::router::{MemberClaim, OffsetCommit, ShardAnswer, ShardCall, TopicPartition};
use crate::security::Caller;
use crate::shard::Shard;
use kafka_protocol::messages::write_txn_markers_request::WritableTxnMarker;
use weir_replication::AclOperation;

/// The code of an error met at a coordinator. PRODUCER_FENCED is new in these versions
/// (InitProducerId v4, the others v2); older clients are told INVALID_PRODUCER_EPOCH, as
/// Kafka tells them.
fn coordinator_code(error: &BrokerError, fenced_known: bool) -> i16 {
    let code = match error {
        BrokerError::ShuttingDown => ResponseError::CoordinatorNotAvailable.code(),
        BrokerError::NotLeader { .. } | BrokerError::LeaderNotAvailable { .. } => {
            ResponseError::NotCoordinator.code()
        }
        other => errors::code(other),
    };
    if code == ResponseError::ProducerFenced.code() && !fenced_known {
        ResponseError::InvalidProducerEpoch.code()
    } else {
        code
    }
}

/// InitProducerId: with a transactional id, at its coordinator (which fences older
/// producers of the id); without, a new producer id for an idempotent producer, or (v3+,
/// a producer that hit a sequence error) the same id with its epoch bumped.
pub async fn init_producer_id(
    shard: &Rc<Shard>,
    caller: &Caller,
    version: i16,
    request: InitProducerIdRequest,
) -> Answer {
    let mut response = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let (id, epoch) = (request.producer_id.0, request.producer_epoch);
    let transactional_id = request
        .transactional_id
        .as_ref()
        .map(|t| t.to_string())
        .filter(|t| !t.is_empty());
    let current = (id >= 0).then_some((id, epoch));
    let result = ops::init_producer(
        shard,
        caller,
        transactional_id,
        request.transaction_timeout_ms,
        current,
    )
    .await;
    match result {
        Ok((id, epoch)) => {
            response.producer_id = ProducerId(id);
            response.producer_epoch = epoch;
            (ResponseKind::InitProducerId(response), false)
        }
        Err(error) => {
            tracing::debug!(%error, "InitProducerId refused");
            response.error_code = coordinator_code(&error, version >= 4);
            (ResponseKind::InitProducerId(response), true)
        }
    }
}

/// AddPartitionsToTxn v0-3 (a producer's; v4+ is for brokers verifying, not served).
/// Partitions of unknown topics fail the request: they get UNKNOWN_TOPIC_OR_PARTITION and
/// the others OPERATION_NOT_ATTEMPTED, as Kafka answers.
pub async fn add_partitions_to_txn(
    shard: &Rc<Shard>,
    caller: &Caller,
    version: i16,
    request: AddPartitionsToTxnRequest,
) -> Answer {
    let transactional_id = request.v3_and_below_transactional_id.to_string();
    let partitions: Vec<TopicPartition> = request
        .v3_and_below_topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(|partition| TopicPartition {
                topic: topic.name.to_string(),
                partition: *partition,
            })
        })
        .collect();
    let producer = (
        request.v3_and_below_producer_id.0,
        request.v3_and_below_producer_epoch,
    );
    let codes: Vec<(TopicPartition, i16)> =
        ops::add_partitions_to_txn(shard, caller, transactional_id, producer, partitions)
            .await
            .into_iter()
            .map(|(tp, result)| {
                let code = result.map_or_else(|e| coordinator_code(&e, version >= 2), |()| 0);
                (tp, code)
            })
            .collect();
    let failed = codes.iter().any(|(_, code)| *code != 0);
    let results = ops::group_by_topic(codes)
        .into_iter()
        .map(|(name, partitions)| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(topics::topic_name(&name))
                .with_results_by_partition(
                    partitions
                        .into_iter()
                        .map(|(index, code)| {
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(index)
                                .with_partition_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    let response =
        AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results);
    (ResponseKind::AddPartitionsToTxn(response), failed)
}

pub async fn add_offsets_to_txn(
    shard: &Rc<Shard>,
    caller: &Caller,
    version: i16,
    request: AddOffsetsToTxnRequest,
) -> Answer {
    let producer = (request.producer_id.0, request.producer_epoch);
    let result = ops::add_offsets_to_txn(
        shard,
        caller,
        request.transactional_id.to_string(),
        producer,
        request.group_id.to_string(),
    )
    .await;
    let code = result.map_or_else(|e| coordinator_code(&e, version >= 2), |()| 0);
    let response = AddOffsetsToTxnResponse::default().with_error_code(code);
    (ResponseKind::AddOffsetsToTxn(response), code != 0)
}

pub async fn end_txn(
    shard: &Rc<Shard>,
    caller: &Caller,
    version: i16,
    request: EndTxnRequest,
) -> Answer {
    let producer = (request.producer_id.0, request.producer_epoch);
    let result = ops::end_txn(
        shard,
        caller,
        request.transactional_id.to_string(),
        producer,
        request.committed,
    )
    .await;
    let code = result.map_or_else(|e| coordinator_code(&e, version >= 2), |()| 0);
    let response = EndTxnResponse::default().with_error_code(code);
    (ResponseKind::EndTxn(response), code != 0)
}

/// TxnOffsetCommit, at the group's coordinator. v3 names the member, which is checked
/// against the group like an OffsetCommit's (an empty member id: not checked, as for a
/// producer outside the group).
pub async fn txn_offset_commit(
    shard: &Rc<Shard>,
    caller: &Caller,
    version: i16,
    request: TxnOffsetCommitRequest,
) -> Answer {
    let group = request.group_id.to_string();
    let member = (version >= 3 && !request.member_id.is_empty()).then(|| MemberClaim {
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.as_ref().map(|i| i.to_string()),
        generation: request.generation_id,
    });
    let offsets: Vec<OffsetCommit> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(|p| OffsetCommit {
                partition: TopicPartition {
                    topic: topic.name.to_string(),
                    partition: p.partition_index,
                },
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: p
                    .committed_metadata
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            })
        })
        .collect();
    let partitions: Vec<TopicPartition> = offsets.iter().map(|c| c.partition.clone()).collect();
    let producer = (request.producer_id.0, request.producer_epoch);
    let committed = match ops::may_txn(shard, caller, &request.transactional_id) {
        Ok(()) => ops::txn_commit_offsets(shard, caller, group, producer, member, offsets).await,
        Err(error) => Err(error),
    };
    let results: Vec<(TopicPartition, i16)> = match committed {
        Ok(results) => results
            .into_iter()
            .map(|(tp, r)| {
                (
                    tp,
                    r.map_or_else(|e| coordinator_code(&e, version >= 2), |()| 0),
                )
            })
            .collect(),
        Err(error) => {
            let code = coordinator_code(&error, version >= 2);
            partitions.into_iter().map(|tp| (tp, code)).collect()
        }
    };
    let failed = results.iter().any(|(_, code)| *code != 0);
    let topics = ops::group_by_topic(results)
        .into_iter()
        .map(|(name, partitions)| {
            TxnOffsetCommitResponseTopic::default()
                .with_name(topics::topic_name(&name))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(index, code)| {
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    let response = TxnOffsetCommitResponse::default().with_topics(topics);
    (ResponseKind::TxnOffsetCommit(response), failed)
}

/// WriteTxnMarkers: a coordinator's markers for partitions this broker leads.
pub async fn write_txn_markers(
    shard: &Rc<Shard>,
    caller: &Caller,
    request: WriteTxnMarkersRequest,
) -> Answer {
    // Only brokers write markers: CLUSTER_ACTION, else every partition is refused.
    let refused = shard
        .authorizer
        .check_cluster(caller, AclOperation::ClusterAction)
        .err();
    let mut failed = false;
    let mut markers = Vec::with_capacity(request.markers.len());
    for marker in request.markers {
        let partitions: Vec<TopicPartition> = marker
            .topics
            .iter()
            .flat_map(|t| {
                t.partition_indexes.iter().map(|p| TopicPartition {
                    topic: t.name.to_string(),
                    partition: *p,
                })
            })
            .collect();
        let results = match &refused {
            Some(error) => partitions
                .into_iter()
                .map(|tp| (tp, Err(error.same())))
                .collect(),
            None => write_markers(shard, &marker, partitions).await,
        };
        let codes: Vec<(TopicPartition, i16)> = results
            .into_iter()
            .map(|(tp, r)| (tp, r.map_or_else(|e| errors::code(&e), |()| 0)))
            .collect();
        failed |= codes.iter().any(|(_, code)| *code != 0);
        let topics = ops::group_by_topic(codes)
            .into_iter()
            .map(|(name, partitions)| {
                WritableTxnMarkerTopicResult::default()
                    .with_name(topics::topic_name(&name))
                    .with_partitions(
                        partitions
                            .into_iter()
                            .map(|(index, code)| {
                                WritableTxnMarkerPartitionResult::default()
                                    .with_partition_index(index)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect();
        markers.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(marker.producer_id)
                .with_topics(topics),
        );
    }
    let response = WriteTxnMarkersResponse::default().with_markers(markers);
    (ResponseKind::WriteTxnMarkers(response), failed)
}

/// Writes one marker to each of its partitions (at their owners).
async fn write_markers(
    shard: &Rc<Shard>,
    marker: &WritableTxnMarker,
    partitions: Vec<TopicPartition>,
) -> Vec<(TopicPartition, crate::error::BrokerResult<()>)> {
    ops::fan_out(
        shard,
        partitions,
        |partition| ShardCall::WriteMarker {
            partition,
            producer_id: marker.producer_id.0,
            producer_epoch: marker.producer_epoch,
            commit: marker.transaction_result,
            coordinator_epoch: marker.coordinator_epoch,
        },
        |answer| match answer {
            ShardAnswer::Admin(result) => result,
            other => Err(ops::unexpected(other)),
        },
    )
    .await
}
