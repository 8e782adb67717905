//! Native requests decoded into owned values, and responses encoded into frames.
//!
//! Decoding copies only the small header fields; record batches are cut out of the
//! frame's payload as `BytesMut` views of the buffer they were read into.

use bytes::{Bytes, BytesMut};
use flatbuffers::{FlatBufferBuilder, WIPOffset};
use weir_wire::native::schema::{self, Acks, ErrorCode, OffsetSpec};
use weir_wire::native::{self, encode_prefix};

use crate::error::{BrokerError, BrokerResult};
use crate::router::TopicPartition;
use crate::security::acl::{self, AclFilter};
use weir_replication::AclBinding;

/// A request with everything it needs owned, so its handling can outlive the frame header.
#[derive(Debug)]
pub enum NativeRequest {
    Handshake {
        client_id: String,
        min_version: u16,
        max_version: u16,
    },
    Metadata {
        topics: Option<Vec<String>>,
    },
    CreateTopic {
        name: String,
        partitions: i32,
        configs: Vec<(String, String)>,
        replication_factor: i16,
    },
    DeleteTopic {
        name: String,
    },
    Produce {
        acks: Acks,
        partitions: Vec<(TopicPartition, BytesMut)>,
        transactional_id: Option<String>,
    },
    Fetch {
        max_wait_ms: i32,
        min_bytes: i32,
        max_bytes: i32,
        partitions: Vec<(TopicPartition, i64, i32)>,
        read_committed: bool,
    },
    ListOffsets {
        partitions: Vec<(TopicPartition, OffsetSpec, i64)>,
        read_committed: bool,
    },
    CommitOffsets {
        group: String,
        offsets: Vec<crate::router::OffsetCommit>,
    },
    FetchOffsets {
        group: String,
        topics: Option<Vec<(String, Option<Vec<i32>>)>>,
        require_stable: bool,
    },
    ListGroups,
    DescribeTopicConfigs {
        name: String,
    },
    AlterTopicConfigs {
        name: String,
        set: Vec<(String, String)>,
        delete: Vec<String>,
        validate_only: bool,
    },
    DescribeCluster,
    MovePartition {
        partition: TopicPartition,
        replicas: Vec<i32>,
    },
    RaftMessages {
        messages: Vec<weir_replication::eraftpb::Message>,
    },
    ControllerCall {
        request: weir_replication::ControllerRequest,
    },
    ReplicaFetch {
        replica: i32,
        max_wait_ms: i32,
        min_bytes: i32,
        max_bytes: i32,
        partitions: Vec<(TopicPartition, weir_replication::FetchPosition, i32)>,
    },
    InitProducer {
        /// None: an idempotent producer without transactions.
        transactional_id: Option<String>,
        timeout_ms: i32,
        /// The id and epoch the producer had, if any.
        current: Option<Producer>,
    },
    AddPartitionsToTxn {
        transactional_id: String,
        producer: Producer,
        partitions: Vec<TopicPartition>,
    },
    AddOffsetsToTxn {
        transactional_id: String,
        producer: Producer,
        group: String,
    },
    EndTxn {
        transactional_id: String,
        producer: Producer,
        commit: bool,
    },
    TxnCommitOffsets {
        producer: Producer,
        group: String,
        offsets: Vec<crate::router::OffsetCommit>,
        transactional_id: Option<String>,
    },
    AlterScramCredentials {
        upsertions: Vec<crate::security::users::Upsertion>,
        deletions: Vec<crate::security::users::Deletion>,
    },
    DescribeScramCredentials {
        /// `None`: every user.
        users: Option<Vec<String>>,
    },
    /// Each ACL as decoded (an invalid one is refused alone).
    CreateAcls {
        acls: Vec<BrokerResult<AclBinding>>,
    },
    DescribeAcls {
        filter: BrokerResult<AclFilter>,
    },
    DeleteAcls {
        filters: Vec<BrokerResult<AclFilter>>,
    },
    AlterClientQuotas {
        entries: Vec<crate::security::quotas::EntityChanges>,
        validate_only: bool,
    },
    DescribeClientQuotas {
        filter: BrokerResult<crate::security::quotas::QuotaFilter>,
    },
}

/// A producer id and epoch.
pub type Producer = (i64, i16);

impl NativeRequest {
    /// The handshake and what brokers send each other, served before the metadata is in.
    pub fn between_brokers(&self) -> bool {
        matches!(
            self,
            NativeRequest::Handshake { .. }
                | NativeRequest::RaftMessages { .. }
                | NativeRequest::ControllerCall { .. }
                | NativeRequest::ReplicaFetch { .. }
        )
    }

    pub fn api(&self) -> &'static str {
        match self {
            NativeRequest::Handshake { .. } => "handshake",
            NativeRequest::Metadata { .. } => "metadata",
            NativeRequest::CreateTopic { .. } => "create_topic",
            NativeRequest::DeleteTopic { .. } => "delete_topic",
            NativeRequest::Produce { .. } => "produce",
            NativeRequest::Fetch { .. } => "fetch",
            NativeRequest::ListOffsets { .. } => "list_offsets",
            NativeRequest::CommitOffsets { .. } => "commit_offsets",
            NativeRequest::FetchOffsets { .. } => "fetch_offsets",
            NativeRequest::ListGroups => "list_groups",
            NativeRequest::DescribeTopicConfigs { .. } => "describe_topic_configs",
            NativeRequest::AlterTopicConfigs { .. } => "alter_topic_configs",
            NativeRequest::DescribeCluster => "describe_cluster",
            NativeRequest::MovePartition { .. } => "move_partition",
            NativeRequest::RaftMessages { .. } => "raft_messages",
            NativeRequest::ControllerCall { .. } => "controller_call",
            NativeRequest::ReplicaFetch { .. } => "replica_fetch",
            NativeRequest::InitProducer { .. } => "init_producer",
            NativeRequest::AddPartitionsToTxn { .. } => "add_partitions_to_txn",
            NativeRequest::AddOffsetsToTxn { .. } => "add_offsets_to_txn",
            NativeRequest::EndTxn { .. } => "end_txn",
            NativeRequest::TxnCommitOffsets { .. } => "txn_commit_offsets",
            NativeRequest::AlterScramCredentials { .. } => "alter_scram_credentials",
            NativeRequest::DescribeScramCredentials { .. } => "describe_scram_credentials",
            NativeRequest::CreateAcls { .. } => "create_acls",
            NativeRequest::DescribeAcls { .. } => "describe_acls",
            NativeRequest::DeleteAcls { .. } => "delete_acls",
            NativeRequest::AlterClientQuotas { .. } => "alter_client_quotas",
            NativeRequest::DescribeClientQuotas { .. } => "describe_client_quotas",
        }
    }
}

fn configs(
    entries: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<schema::ConfigEntry<'_>>>>,
) -> Vec<(String, String)> {
    entries
        .into_iter()
        .flatten()
        .map(|e| (e.key().to_string(), e.value().to_string()))
        .collect()
}

/// The offsets of a commit request's topics.
fn commits(
    topics: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<schema::CommitTopic<'_>>>>,
) -> Vec<crate::router::OffsetCommit> {
    topics
        .into_iter()
        .flatten()
        .flat_map(|t| {
            t.partitions()
                .into_iter()
                .flatten()
                .map(move |p| crate::router::OffsetCommit {
                    partition: TopicPartition {
                        topic: t.name().to_string(),
                        partition: p.partition(),
                    },
                    offset: p.offset(),
                    // The native protocol does not carry it.
                    leader_epoch: -1,
                    metadata: p.metadata().unwrap_or_default().to_string(),
                })
        })
        .collect()
}

fn read_committed(isolation: schema::Isolation) -> BrokerResult<bool> {
    match isolation {
        schema::Isolation::ReadUncommitted => Ok(false),
        schema::Isolation::ReadCommitted => Ok(true),
        other => Err(invalid(&format!("unknown isolation {}", other.0))),
    }
}

fn invalid(message: &str) -> BrokerError {
    BrokerError::InvalidRequest(message.to_string())
}

/// Decodes a verified request. `payload` is the frame's payload; produce requests take
/// their record batches out of it.
pub fn decode(request: &schema::Request<'_>, payload: BytesMut) -> BrokerResult<NativeRequest> {
    use schema::RequestBody as Body;
    Ok(match request.body_type() {
        Body::HandshakeRequest => {
            let r = request
                .body_as_handshake_request()
                .ok_or_else(|| invalid("handshake body"))?;
            NativeRequest::Handshake {
                client_id: r.client_id().unwrap_or_default().to_string(),
                min_version: r.min_version(),
                max_version: r.max_version(),
            }
        }
        Body::MetadataRequest => {
            let r = request
                .body_as_metadata_request()
                .ok_or_else(|| invalid("metadata body"))?;
            NativeRequest::Metadata {
                topics: r.topics().map(|t| t.iter().map(str::to_string).collect()),
            }
        }
        Body::CreateTopicRequest => {
            let r = request
                .body_as_create_topic_request()
                .ok_or_else(|| invalid("create topic body"))?;
            NativeRequest::CreateTopic {
                name: r.name().to_string(),
                partitions: r.partitions(),
                configs: configs(r.configs()),
                replication_factor: r.replication_factor(),
            }
        }
        Body::DeleteTopicRequest => {
            let r = request
                .body_as_delete_topic_request()
                .ok_or_else(|| invalid("delete topic body"))?;
            NativeRequest::DeleteTopic {
                name: r.name().to_string(),
            }
        }
        Body::ProduceRequest => decode_produce(request, payload)?,
        Body::FetchRequest => {
            let r = request
                .body_as_fetch_request()
                .ok_or_else(|| invalid("fetch body"))?;
            let partitions = r
                .topics()
                .into_iter()
                .flatten()
                .flat_map(|t| {
                    t.partitions().into_iter().flatten().map(move |p| {
                        (
                            TopicPartition {
                                topic: t.name().to_string(),
                                partition: p.partition(),
                            },
                            p.offset(),
                            p.max_bytes(),
                        )
                    })
                })
                .collect();
            NativeRequest::Fetch {
                max_wait_ms: r.max_wait_ms(),
                min_bytes: r.min_bytes(),
                max_bytes: r.max_bytes(),
                partitions,
                read_committed: read_committed(r.isolation())?,
            }
        }
        Body::ListOffsetsRequest => {
            let r = request
                .body_as_list_offsets_request()
                .ok_or_else(|| invalid("list offsets body"))?;
            let partitions = r
                .topics()
                .into_iter()
                .flatten()
                .flat_map(|t| {
                    t.partitions().into_iter().flatten().map(move |p| {
                        (
                            TopicPartition {
                                topic: t.name().to_string(),
                                partition: p.partition(),
                            },
                            p.spec(),
                            p.timestamp(),
                        )
                    })
                })
                .collect();
            NativeRequest::ListOffsets {
                partitions,
                read_committed: read_committed(r.isolation())?,
            }
        }
        Body::CommitOffsetsRequest => {
            let r = request
                .body_as_commit_offsets_request()
                .ok_or_else(|| invalid("commit body"))?;
            NativeRequest::CommitOffsets {
                group: r.group().to_string(),
                offsets: commits(r.topics()),
            }
        }
        Body::FetchOffsetsRequest => {
            let r = request
                .body_as_fetch_offsets_request()
                .ok_or_else(|| invalid("fetch offsets body"))?;
            let topics = r.topics().map(|topics| {
                topics
                    .iter()
                    .map(|t| {
                        (
                            t.name().to_string(),
                            t.partitions().map(|p| p.iter().collect()),
                        )
                    })
                    .collect()
            });
            NativeRequest::FetchOffsets {
                group: r.group().to_string(),
                topics,
                require_stable: r.require_stable(),
            }
        }
        Body::ListGroupsRequest => NativeRequest::ListGroups,
        Body::DescribeTopicConfigsRequest => {
            let r = request
                .body_as_describe_topic_configs_request()
                .ok_or_else(|| invalid("describe topic configs body"))?;
            NativeRequest::DescribeTopicConfigs {
                name: r.name().to_string(),
            }
        }
        Body::AlterTopicConfigsRequest => {
            let r = request
                .body_as_alter_topic_configs_request()
                .ok_or_else(|| invalid("alter topic configs body"))?;
            NativeRequest::AlterTopicConfigs {
                name: r.name().to_string(),
                set: configs(r.set()),
                delete: r
                    .delete()
                    .into_iter()
                    .flatten()
                    .map(str::to_string)
                    .collect(),
                validate_only: r.validate_only(),
            }
        }
        Body::DescribeClusterRequest => NativeRequest::DescribeCluster,
        Body::MovePartitionRequest => {
            let r = request
                .body_as_move_partition_request()
                .ok_or_else(|| invalid("move partition body"))?;
            NativeRequest::MovePartition {
                partition: TopicPartition {
                    topic: r.topic().to_string(),
                    partition: r.partition(),
                },
                replicas: r.replicas().iter().collect(),
            }
        }
        Body::RaftMessagesRequest => {
            let r = request
                .body_as_raft_messages_request()
                .ok_or_else(|| invalid("raft messages body"))?;
            let mut messages = Vec::new();
            for slice in r.messages().into_iter().flatten() {
                let range = native::payload_range(slice, payload.len())?;
                let message = weir_replication::quorum::decode_message(&payload[range])
                    .map_err(|e| invalid(&e.to_string()))?;
                messages.push(message);
            }
            NativeRequest::RaftMessages { messages }
        }
        Body::ControllerCallRequest => {
            let r = request
                .body_as_controller_call_request()
                .ok_or_else(|| invalid("controller call body"))?;
            let range = native::payload_range(r.body(), payload.len())?;
            let request = crate::cluster::peers::decode_request(&payload[range])
                .ok_or_else(|| invalid("undecodable controller request"))?;
            NativeRequest::ControllerCall { request }
        }
        Body::ReplicaFetchRequest => {
            let r = request
                .body_as_replica_fetch_request()
                .ok_or_else(|| invalid("replica fetch body"))?;
            let partitions = r
                .partitions()
                .into_iter()
                .flatten()
                .map(|p| {
                    (
                        TopicPartition {
                            topic: p.topic().to_string(),
                            partition: p.partition(),
                        },
                        weir_replication::FetchPosition {
                            fetch_offset: p.fetch_offset(),
                            last_fetched_epoch: p.last_fetched_epoch(),
                            leader_epoch: p.leader_epoch(),
                        },
                        p.max_bytes(),
                    )
                })
                .collect();
            NativeRequest::ReplicaFetch {
                replica: r.replica(),
                max_wait_ms: r.max_wait_ms(),
                min_bytes: r.min_bytes(),
                max_bytes: r.max_bytes(),
                partitions,
            }
        }
        Body::InitProducerRequest => {
            let r = request
                .body_as_init_producer_request()
                .ok_or_else(|| invalid("init producer body"))?;
            NativeRequest::InitProducer {
                transactional_id: r
                    .transactional_id()
                    .filter(|t| !t.is_empty())
                    .map(str::to_string),
                timeout_ms: r.transaction_timeout_ms(),
                current: (r.producer_id() >= 0).then_some((r.producer_id(), r.producer_epoch())),
            }
        }
        Body::AddPartitionsToTxnRequest => {
            let r = request
                .body_as_add_partitions_to_txn_request()
                .ok_or_else(|| invalid("add partitions to txn body"))?;
            let partitions = r
                .topics()
                .into_iter()
                .flatten()
                .flat_map(|t| {
                    t.partitions()
                        .into_iter()
                        .flatten()
                        .map(move |partition| TopicPartition {
                            topic: t.name().to_string(),
                            partition,
                        })
                })
                .collect();
            NativeRequest::AddPartitionsToTxn {
                transactional_id: r.transactional_id().to_string(),
                producer: (r.producer_id(), r.producer_epoch()),
                partitions,
            }
        }
        Body::AddOffsetsToTxnRequest => {
            let r = request
                .body_as_add_offsets_to_txn_request()
                .ok_or_else(|| invalid("add offsets to txn body"))?;
            NativeRequest::AddOffsetsToTxn {
                transactional_id: r.transactional_id().to_string(),
                producer: (r.producer_id(), r.producer_epoch()),
                group: r.group().to_string(),
            }
        }
        Body::EndTxnRequest => {
            let r = request
                .body_as_end_txn_request()
                .ok_or_else(|| invalid("end txn body"))?;
            NativeRequest::EndTxn {
                transactional_id: r.transactional_id().to_string(),
                producer: (r.producer_id(), r.producer_epoch()),
                commit: r.commit(),
            }
        }
        Body::TxnCommitOffsetsRequest => {
            let r = request
                .body_as_txn_commit_offsets_request()
                .ok_or_else(|| invalid("txn commit offsets body"))?;
            NativeRequest::TxnCommitOffsets {
                producer: (r.producer_id(), r.producer_epoch()),
                group: r.group().to_string(),
                offsets: commits(r.topics()),
                transactional_id: r.transactional_id().map(str::to_string),
            }
        }
        Body::AlterScramCredentialsRequest => {
            use crate::security::users::{Deletion, Upsertion};
            let r = request
                .body_as_alter_scram_credentials_request()
                .ok_or_else(|| invalid("alter scram credentials body"))?;
            NativeRequest::AlterScramCredentials {
                upsertions: r
                    .upsertions()
                    .iter()
                    .flatten()
                    .map(|u| Upsertion {
                        user: u.user().to_string(),
                        mechanism: u.mechanism(),
                        iterations: u.iterations(),
                        salt: u.salt().map(|b| b.bytes().to_vec()).unwrap_or_default(),
                        salted_password: u
                            .salted_password()
                            .map(|b| b.bytes().to_vec())
                            .unwrap_or_default(),
                    })
                    .collect(),
                deletions: r
                    .deletions()
                    .iter()
                    .flatten()
                    .map(|d| Deletion {
                        user: d.user().to_string(),
                        mechanism: d.mechanism(),
                    })
                    .collect(),
            }
        }
        Body::DescribeScramCredentialsRequest => {
            let r = request
                .body_as_describe_scram_credentials_request()
                .ok_or_else(|| invalid("describe scram credentials body"))?;
            let users: Vec<String> = r.users().iter().flatten().map(str::to_string).collect();
            NativeRequest::DescribeScramCredentials {
                users: Some(users).filter(|u| !u.is_empty()),
            }
        }
        Body::CreateAclsRequest => {
            let r = request
                .body_as_create_acls_request()
                .ok_or_else(|| invalid("create acls body"))?;
            NativeRequest::CreateAcls {
                acls: r
                    .acls()
                    .iter()
                    .flatten()
                    .map(|a| {
                        acl::binding(
                            a.resource_type(),
                            a.resource_name(),
                            a.pattern(),
                            a.principal(),
                            a.host(),
                            a.operation(),
                            a.permission(),
                        )
                    })
                    .collect(),
            }
        }
        Body::DescribeAclsRequest => {
            let r = request
                .body_as_describe_acls_request()
                .ok_or_else(|| invalid("describe acls body"))?;
            NativeRequest::DescribeAcls {
                filter: acl_filter(&r.filter()),
            }
        }
        Body::DeleteAclsRequest => {
            let r = request
                .body_as_delete_acls_request()
                .ok_or_else(|| invalid("delete acls body"))?;
            NativeRequest::DeleteAcls {
                filters: r
                    .filters()
                    .iter()
                    .flatten()
                    .map(|f| acl_filter(&f))
                    .collect(),
            }
        }
        Body::AlterClientQuotasRequest => {
            let r = request
                .body_as_alter_client_quotas_request()
                .ok_or_else(|| invalid("alter client quotas body"))?;
            let entries = r
                .entries()
                .iter()
                .flatten()
                .map(|entry| {
                    let mut changes: Vec<(String, Option<f64>)> = entry
                        .set()
                        .iter()
                        .flatten()
                        .map(|v| (v.key().to_string(), Some(v.value())))
                        .collect();
                    changes.extend(
                        entry
                            .remove()
                            .iter()
                            .flatten()
                            .map(|key| (key.to_string(), None)),
                    );
                    (quota_entity(&entry.entity()), changes)
                })
                .collect();
            NativeRequest::AlterClientQuotas {
                entries,
                validate_only: r.validate_only(),
            }
        }
        Body::DescribeClientQuotasRequest => {
            use crate::security::quotas::{CLIENT_ID, QuotaFilter, USER};
            let r = request
                .body_as_describe_client_quotas_request()
                .ok_or_else(|| invalid("describe client quotas body"))?;
            let mut components = Vec::new();
            if let Some(user) = r.user() {
                components.push((USER, 0, Some(user)));
            }
            if let Some(client_id) = r.client_id() {
                components.push((CLIENT_ID, 0, Some(client_id)));
            }
            NativeRequest::DescribeClientQuotas {
                filter: QuotaFilter::new(&components, false),
            }
        }
        _ => return Err(invalid("unknown request type")),
    })
}

/// A native quota entity: each part a name, the default, or absent.
fn quota_entity(e: &schema::QuotaEntity<'_>) -> BrokerResult<weir_replication::QuotaEntity> {
    use crate::security::quotas::{CLIENT_ID, USER};
    let mut parts = Vec::new();
    for (kind, name, default) in [
        (USER, e.user(), e.user_default()),
        (CLIENT_ID, e.client_id(), e.client_id_default()),
    ] {
        match (name, default) {
            (Some(_), true) => {
                return Err(invalid(&format!("{kind}: a name or the default, not both")));
            }
            (Some(name), false) => parts.push((kind, Some(name))),
            (None, true) => parts.push((kind, None)),
            (None, false) => {}
        }
    }
    crate::security::quotas::entity(&parts)
}

fn acl_filter(f: &schema::AclFilter<'_>) -> BrokerResult<AclFilter> {
    AclFilter::new(
        f.resource_type(),
        f.resource_name(),
        f.pattern(),
        f.principal(),
        f.host(),
        f.operation(),
        f.permission(),
    )
}

/// Cuts each partition's records out of the payload. Slices must not overlap.
fn decode_produce(
    request: &schema::Request<'_>,
    mut payload: BytesMut,
) -> BrokerResult<NativeRequest> {
    let r = request
        .body_as_produce_request()
        .ok_or_else(|| invalid("produce body"))?;
    let payload_length = payload.len();
    let mut slices = Vec::new();
    for topic in r.topics().into_iter().flatten() {
        for partition in topic.partitions().into_iter().flatten() {
            let range = native::payload_range(partition.records(), payload_length)?;
            let tp = TopicPartition {
                topic: topic.name().to_string(),
                partition: partition.partition(),
            };
            slices.push((range, slices.len(), tp));
        }
    }
    slices.sort_by_key(|(range, _, _)| range.start);
    if slices
        .windows(2)
        .any(|pair| pair[0].0.end > pair[1].0.start)
    {
        return Err(invalid("produce record slices overlap"));
    }
    let mut consumed = 0;
    let mut partitions: Vec<(usize, TopicPartition, BytesMut)> = Vec::with_capacity(slices.len());
    for (range, order, tp) in slices {
        let _skipped = payload.split_to(range.start - consumed);
        partitions.push((order, tp, payload.split_to(range.len())));
        consumed = range.end;
    }
    partitions.sort_by_key(|(order, _, _)| *order);
    Ok(NativeRequest::Produce {
        acks: r.acks(),
        partitions: partitions.into_iter().map(|(_, tp, b)| (tp, b)).collect(),
        transactional_id: r.transactional_id().map(str::to_string),
    })
}

/// Builds response frames: the flatbuffer header, then payload parts.
pub struct ResponseWriter {
    pub builder: FlatBufferBuilder<'static>,
    pub payload: Vec<Bytes>,
    payload_length: usize,
}

impl ResponseWriter {
    pub fn new() -> ResponseWriter {
        ResponseWriter {
            builder: FlatBufferBuilder::with_capacity(1024),
            payload: Vec::new(),
            payload_length: 0,
        }
    }

    /// Adds record batches to the payload and returns the slice that refers to them.
    pub fn add_records(&mut self, batches: Vec<Bytes>) -> schema::PayloadSlice {
        let offset = self.payload_length;
        let length: usize = batches.iter().map(Bytes::len).sum();
        self.payload_length += length;
        self.payload.extend(batches);
        schema::PayloadSlice::new(offset as u32, length as u32)
    }

    pub fn string(&mut self, text: &str) -> WIPOffset<&'static str> {
        self.builder.create_string(text)
    }

    /// Finishes a response around `body` and returns the frame's parts.
    pub fn finish(
        mut self,
        request_id: u64,
        error: Option<&BrokerError>,
        body: Option<(schema::ResponseBody, WIPOffset<flatbuffers::UnionWIPOffset>)>,
    ) -> Vec<Bytes> {
        let error_message = error.map(|e| self.builder.create_string(&e.to_string()));
        let (body_type, body) =
            body.map_or((schema::ResponseBody::NONE, None), |(t, b)| (t, Some(b)));
        let response = schema::Response::create(
            &mut self.builder,
            &schema::ResponseArgs {
                request_id,
                error: error.map_or(ErrorCode::None, BrokerError::code),
                error_message,
                body_type,
                body,
            },
        );
        self.builder.finish(response, Some("WEIR"));
        let header = self.builder.finished_data();
        let mut head = BytesMut::with_capacity(native::FRAME_PREFIX_BYTES + header.len());
        head.extend_from_slice(&encode_prefix(header.len(), self.payload_length));
        head.extend_from_slice(header);
        let mut parts = Vec::with_capacity(1 + self.payload.len());
        parts.push(head.freeze());
        parts.extend(self.payload);
        parts
    }
}

/// The code and message of a per-partition error, for result tables.
pub fn error_fields(
    writer: &mut ResponseWriter,
    error: Option<&BrokerError>,
) -> (ErrorCode, Option<WIPOffset<&'static str>>) {
    match error {
        None => (ErrorCode::None, None),
        Some(error) => (error.code(), Some(writer.string(&error.to_string()))),
    }
}
