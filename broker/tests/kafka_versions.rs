//! Every version of every Kafka API the gateway advertises, exercised against a real
//! broker process: requests are encoded and responses decoded with the `kafka-protocol`
//! crate (as a client would), and each answer is checked for what that API must do, not
//! just for decoding. The test fails if ApiVersions advertises a version nobody sent.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, AlterConfigsRequest, ApiKey,
    ApiVersionsRequest, BrokerId, CreatePartitionsRequest, CreateTopicsRequest,
    DeleteGroupsRequest, DeleteRecordsRequest, DeleteTopicsRequest, DescribeClusterRequest,
    DescribeConfigsRequest, DescribeGroupsRequest, EndTxnRequest, FetchRequest,
    FindCoordinatorRequest, GroupId, HeartbeatRequest, IncrementalAlterConfigsRequest,
    InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest,
    ListOffsetsRequest, MetadataRequest, OffsetCommitRequest, OffsetDeleteRequest,
    OffsetFetchRequest, ProduceRequest, ProducerId, RequestHeader, RequestKind, ResponseHeader,
    ResponseKind, SyncGroupRequest, TopicName, TransactionalId, TxnOffsetCommitRequest,
    WriteTxnMarkersRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use weir_broker::kafka::versions::SUPPORTED;
use weir_tests::broker::BrokerProcess;
use weir_wire::BatchBuilder;

const TOPIC: &str = "versions";

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

fn topic_name(text: &str) -> TopicName {
    TopicName(s(text))
}

struct Client {
    stream: TcpStream,
    correlation: i32,
    exercised: BTreeSet<(i16, i16)>,
}

impl Client {
    fn connect(address: &str) -> Client {
        let stream = TcpStream::connect(address).expect("connect to the Kafka port");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Client {
            stream,
            correlation: 0,
            exercised: BTreeSet::new(),
        }
    }

    fn send(&mut self, api: ApiKey, version: i16, body: RequestKind) -> ResponseKind {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(s("versions-test")));
        let mut frame = BytesMut::new();
        header
            .encode(&mut frame, api.request_header_version(version))
            .unwrap();
        body.encode(&mut frame, version)
            .unwrap_or_else(|e| panic!("encoding {api:?} v{version}: {e}"));
        let mut out = (frame.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(&frame);
        self.stream.write_all(&out).unwrap();
        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .unwrap_or_else(|e| panic!("{api:?} v{version}: no response ({e})"));
        let mut response = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut response).unwrap();
        let mut response = Bytes::from(response);
        let header =
            ResponseHeader::decode(&mut response, api.response_header_version(version)).unwrap();
        assert_eq!(
            header.correlation_id, self.correlation,
            "{api:?} v{version}"
        );
        let decoded = ResponseKind::decode(api, &mut response, version)
            .unwrap_or_else(|e| panic!("decoding {api:?} v{version}: {e}"));
        self.exercised.insert((api as i16, version));
        decoded
    }
}

fn versions(api: ApiKey) -> std::ops::RangeInclusive<i16> {
    let (_, min, max) = SUPPORTED
        .iter()
        .find(|(a, _, _)| *a == api)
        .unwrap_or_else(|| panic!("{api:?} is not advertised"));
    *min..=*max
}

fn batch(records: usize) -> Bytes {
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    for i in 0..records {
        builder.append(
            1_700_000_000_000,
            Some(format!("k{i}").as_bytes()),
            Some(b"value"),
            &[],
        );
    }
    Bytes::from(builder.build().to_vec())
}

#[test]
fn every_advertised_version_of_every_api_works() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_with_env(
        env!("CARGO_BIN_EXE_weir"),
        dir.path(),
        2,
        &[],
        &[
            ("WEIR_GROUP_INITIAL_REBALANCE_DELAY_MS", "0"),
            ("WEIR_KAFKA_LISTENERS", "[\"SASL_PLAINTEXT://127.0.0.1:0\"]"),
            ("WEIR_SASL_FAILED_AUTHENTICATION_DELAY_MS", "1"),
        ],
    )
    .unwrap();
    let mut c = Client::connect(&broker.kafka);
    let sasl_listener = broker.extra_listener("kafka+SASL_PLAINTEXT").unwrap();
    sasl_versions(&mut c, &sasl_listener);
    acl_versions(&mut c);
    quota_versions(&mut c);

    // ApiVersions: exactly the supported table.
    for v in versions(ApiKey::ApiVersions) {
        let mut request = ApiVersionsRequest::default();
        if v >= 3 {
            request = request
                .with_client_software_name(s("versions-test"))
                .with_client_software_version(s("1"));
        }
        let ResponseKind::ApiVersions(r) = c.send(ApiKey::ApiVersions, v, request.into()) else {
            unreachable!()
        };
        assert_eq!(r.error_code, 0);
        let advertised: Vec<(i16, i16, i16)> = r
            .api_keys
            .iter()
            .map(|k| (k.api_key, k.min_version, k.max_version))
            .collect();
        let expected: Vec<(i16, i16, i16)> = SUPPORTED
            .iter()
            .map(|(a, l, h)| (*a as i16, *l, *h))
            .collect();
        assert_eq!(advertised, expected, "ApiVersions v{v}");
    }

    // CreateTopics (the test topic first, then one per version) and DeleteTopics.
    let create_topic = |c: &mut Client, v: i16, name: &str, partitions: i32| {
        let request = CreateTopicsRequest::default()
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(topic_name(name))
                    .with_num_partitions(partitions)
                    .with_replication_factor(1),
            ])
            .with_timeout_ms(10_000);
        let ResponseKind::CreateTopics(r) = c.send(ApiKey::CreateTopics, v, request.into()) else {
            unreachable!()
        };
        r.topics[0].clone()
    };
    for v in versions(ApiKey::CreateTopics) {
        let name = if v == *versions(ApiKey::CreateTopics).start() {
            TOPIC.to_string()
        } else {
            format!("created-{v}")
        };
        let created = create_topic(&mut c, v, &name, 2);
        assert_eq!(created.error_code, 0, "CreateTopics v{v}: {created:?}");
    }
    for v in versions(ApiKey::DeleteTopics) {
        // Each version deletes a topic of its own, made here for it.
        let name = format!("doomed-{v}");
        assert_eq!(
            create_topic(&mut c, 7, &name, 1).error_code,
            0,
            "creating {name}"
        );
        let mut request = DeleteTopicsRequest::default().with_timeout_ms(10_000);
        if v >= 6 {
            request.topics = vec![DeleteTopicState::default().with_name(Some(topic_name(&name)))];
        } else {
            request.topic_names = vec![topic_name(&name)];
        }
        let ResponseKind::DeleteTopics(r) = c.send(ApiKey::DeleteTopics, v, request.into()) else {
            unreachable!()
        };
        assert_eq!(r.responses[0].error_code, 0, "DeleteTopics v{v}");
    }

    // Metadata: the topic, its two partitions led by node 0; the topic id for Fetch.
    let mut topic_id = uuid::Uuid::nil();
    for v in versions(ApiKey::Metadata) {
        let request = MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name(TOPIC))),
        ]));
        let ResponseKind::Metadata(r) = c.send(ApiKey::Metadata, v, request.into()) else {
            unreachable!()
        };
        assert_eq!(r.brokers.len(), 1, "Metadata v{v}");
        let topic = &r.topics[0];
        assert_eq!((topic.error_code, topic.partitions.len()), (0, 2), "v{v}");
        assert!(topic.partitions.iter().all(|p| p.leader_id == BrokerId(0)));
        if v >= 10 {
            topic_id = topic.topic_id;
            assert!(!topic_id.is_nil());
        }
    }

    // Produce: one batch per version to partition 0, offsets increasing.
    let mut next_offset = 0;
    for v in versions(ApiKey::Produce) {
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(topic_name(TOPIC))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(batch(3))),
                    ]),
            ]);
        let ResponseKind::Produce(r) = c.send(ApiKey::Produce, v, request.into()) else {
            unreachable!()
        };
        let p = &r.responses[0].partition_responses[0];
        assert_eq!(
            (p.error_code, p.base_offset),
            (0, next_offset),
            "Produce v{v}"
        );
        next_offset += 3;
    }

    // Fetch: every version reads the first batch back, by name or (v13+) by topic id.
    for v in versions(ApiKey::Fetch) {
        let mut topic = FetchTopic::default().with_partitions(vec![
            FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20),
        ]);
        if v >= 13 {
            topic.topic_id = topic_id;
        } else {
            topic.topic = topic_name(TOPIC);
        }
        let mut request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(100)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![topic]);
        if v >= 7 {
            request.session_epoch = -1;
        }
        if v >= 15 {
            request.replica_id = BrokerId(-1);
        }
        let ResponseKind::Fetch(r) = c.send(ApiKey::Fetch, v, request.into()) else {
            unreachable!()
        };
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "Fetch v{v}");
        assert_eq!(p.high_watermark, next_offset, "Fetch v{v}");
        let records = p.records.as_ref().expect("records");
        assert_eq!(records.slice(..8), Bytes::from(0i64.to_be_bytes().to_vec()));
    }

    // ListOffsets: latest is the end of what was produced; v7+ also the max timestamp
    // (KIP-734, why v7 exists): every record has the same one, so the first carries it.
    let list_offsets = |c: &mut Client, v: i16, timestamp: i64| {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(topic_name(TOPIC))
                    .with_partitions(vec![
                        ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_timestamp(timestamp),
                    ]),
            ]);
        let ResponseKind::ListOffsets(r) = c.send(ApiKey::ListOffsets, v, request.into()) else {
            unreachable!()
        };
        let p = &r.topics[0].partitions[0];
        (p.error_code, p.offset, p.timestamp)
    };
    for v in versions(ApiKey::ListOffsets) {
        let (code, offset, _) = list_offsets(&mut c, v, -1);
        assert_eq!((code, offset), (0, next_offset), "ListOffsets v{v}");
        if v >= 7 {
            assert_eq!(
                list_offsets(&mut c, v, -3),
                (0, 0, 1_700_000_000_000),
                "ListOffsets v{v} max timestamp"
            );
        }
    }

    // DeleteRecords: the log start offset moves up.
    for v in versions(ApiKey::DeleteRecords) {
        let offset = i64::from(v) + 1;
        let request = DeleteRecordsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![
                DeleteRecordsTopic::default()
                    .with_name(topic_name(TOPIC))
                    .with_partitions(vec![
                        DeleteRecordsPartition::default()
                            .with_partition_index(0)
                            .with_offset(offset),
                    ]),
            ]);
        let ResponseKind::DeleteRecords(r) = c.send(ApiKey::DeleteRecords, v, request.into())
        else {
            unreachable!()
        };
        let p = &r.topics[0].partitions[0];
        assert_eq!(
            (p.error_code, p.low_watermark),
            (0, offset),
            "DeleteRecords v{v}"
        );
    }

    // FindCoordinator: this node, for groups.
    for v in versions(ApiKey::FindCoordinator) {
        let mut request = FindCoordinatorRequest::default();
        if v >= 4 {
            request.coordinator_keys = vec![s("g")];
        } else {
            request.key = s("g");
        }
        let ResponseKind::FindCoordinator(r) = c.send(ApiKey::FindCoordinator, v, request.into())
        else {
            unreachable!()
        };
        let (error, node) = if v >= 4 {
            (r.coordinators[0].error_code, r.coordinators[0].node_id)
        } else {
            (r.error_code, r.node_id)
        };
        assert_eq!((error, node), (0, BrokerId(0)), "FindCoordinator v{v}");
    }

    // Group membership: for each JoinGroup version a fresh group goes through join, sync,
    // heartbeat, describe, leave and delete, each API at the highest version not above.
    for v in versions(ApiKey::JoinGroup) {
        let group = format!("members-{v}");
        let mut join = JoinGroupRequest::default()
            .with_group_id(GroupId(s(&group)))
            .with_session_timeout_ms(10_000)
            .with_member_id(s(""))
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![
                JoinGroupRequestProtocol::default()
                    .with_name(s("range"))
                    .with_metadata(Bytes::from_static(b"subscription")),
            ]);
        if v >= 1 {
            join.rebalance_timeout_ms = 10_000;
        }
        let ResponseKind::JoinGroup(mut r) = c.send(ApiKey::JoinGroup, v, join.clone().into())
        else {
            unreachable!()
        };
        if v >= 4 {
            assert_eq!(
                r.error_code, 79,
                "JoinGroup v{v} asks for a member id first"
            );
            join.member_id = r.member_id.clone();
            let ResponseKind::JoinGroup(again) = c.send(ApiKey::JoinGroup, v, join.into()) else {
                unreachable!()
            };
            r = again;
        }
        assert_eq!(r.error_code, 0, "JoinGroup v{v}");
        assert_eq!(r.generation_id, 1);
        assert_eq!(r.leader, r.member_id, "the only member leads");
        assert_eq!(r.members.len(), 1);
        assert_eq!(r.members[0].metadata, Bytes::from_static(b"subscription"));
        let member = r.member_id.clone();

        let sv = v.min(*versions(ApiKey::SyncGroup).end());
        let mut sync = SyncGroupRequest::default()
            .with_group_id(GroupId(s(&group)))
            .with_generation_id(1)
            .with_member_id(member.clone())
            .with_assignments(vec![
                SyncGroupRequestAssignment::default()
                    .with_member_id(member.clone())
                    .with_assignment(Bytes::from_static(b"assignment")),
            ]);
        if sv >= 5 {
            sync.protocol_type = Some(s("consumer"));
            sync.protocol_name = Some(s("range"));
        }
        let ResponseKind::SyncGroup(r) = c.send(ApiKey::SyncGroup, sv, sync.into()) else {
            unreachable!()
        };
        assert_eq!(r.error_code, 0, "SyncGroup v{sv}");
        assert_eq!(r.assignment, Bytes::from_static(b"assignment"));

        let hv = v.min(*versions(ApiKey::Heartbeat).end());
        let heartbeat = HeartbeatRequest::default()
            .with_group_id(GroupId(s(&group)))
            .with_generation_id(1)
            .with_member_id(member.clone());
        let ResponseKind::Heartbeat(r) = c.send(ApiKey::Heartbeat, hv, heartbeat.into()) else {
            unreachable!()
        };
        assert_eq!(r.error_code, 0, "Heartbeat v{hv}");

        let dv = v.min(*versions(ApiKey::DescribeGroups).end());
        let describe = DescribeGroupsRequest::default().with_groups(vec![GroupId(s(&group))]);
        let ResponseKind::DescribeGroups(r) = c.send(ApiKey::DescribeGroups, dv, describe.into())
        else {
            unreachable!()
        };
        let described = &r.groups[0];
        assert_eq!(
            described.group_state.as_str(),
            "Stable",
            "DescribeGroups v{dv}"
        );
        assert_eq!(described.protocol_data.as_str(), "range");
        assert_eq!(described.members[0].member_id, member);

        let lv = v.min(*versions(ApiKey::ListGroups).end());
        let ResponseKind::ListGroups(r) =
            c.send(ApiKey::ListGroups, lv, ListGroupsRequest::default().into())
        else {
            unreachable!()
        };
        assert!(
            r.groups.iter().any(|g| g.group_id.as_str() == group),
            "ListGroups v{lv}"
        );

        let leave_v = v.min(*versions(ApiKey::LeaveGroup).end());
        let mut leave = LeaveGroupRequest::default().with_group_id(GroupId(s(&group)));
        if leave_v >= 3 {
            leave.members = vec![MemberIdentity::default().with_member_id(member.clone())];
        } else {
            leave.member_id = member.clone();
        }
        let ResponseKind::LeaveGroup(r) = c.send(ApiKey::LeaveGroup, leave_v, leave.into()) else {
            unreachable!()
        };
        let code = if leave_v >= 3 {
            r.members[0].error_code
        } else {
            r.error_code
        };
        assert_eq!(code, 0, "LeaveGroup v{leave_v}");

        let delete_v = v.min(*versions(ApiKey::DeleteGroups).end());
        let delete = DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s(&group))]);
        let ResponseKind::DeleteGroups(r) = c.send(ApiKey::DeleteGroups, delete_v, delete.into())
        else {
            unreachable!()
        };
        assert_eq!(r.results[0].error_code, 0, "DeleteGroups v{delete_v}");
    }

    // OffsetCommit outside membership (generation -1), then OffsetFetch reads it back.
    for v in versions(ApiKey::OffsetCommit) {
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(s("committer")))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(s(""))
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(topic_name(TOPIC))
                    .with_partitions(vec![
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(1)
                            .with_committed_offset(i64::from(v))
                            .with_committed_metadata(Some(s("m"))),
                    ]),
            ]);
        let request = if (2..=4).contains(&v) {
            request.with_retention_time_ms(-1)
        } else {
            request
        };
        let ResponseKind::OffsetCommit(r) = c.send(ApiKey::OffsetCommit, v, request.into()) else {
            unreachable!()
        };
        assert_eq!(r.topics[0].partitions[0].error_code, 0, "OffsetCommit v{v}");
    }
    let committed = i64::from(*versions(ApiKey::OffsetCommit).end());
    for v in versions(ApiKey::OffsetFetch) {
        let mut request = OffsetFetchRequest::default();
        let offset = if v >= 8 {
            request.groups = vec![
                OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(s("committer")))
                    .with_topics(Some(vec![
                        OffsetFetchRequestTopics::default()
                            .with_name(topic_name(TOPIC))
                            .with_partition_indexes(vec![1]),
                    ])),
            ];
            let ResponseKind::OffsetFetch(r) = c.send(ApiKey::OffsetFetch, v, request.into())
            else {
                unreachable!()
            };
            r.groups[0].topics[0].partitions[0].committed_offset
        } else {
            request.group_id = GroupId(s("committer"));
            request.topics = Some(vec![
                OffsetFetchRequestTopic::default()
                    .with_name(topic_name(TOPIC))
                    .with_partition_indexes(vec![1]),
            ]);
            let ResponseKind::OffsetFetch(r) = c.send(ApiKey::OffsetFetch, v, request.into())
            else {
                unreachable!()
            };
            r.topics[0].partitions[0].committed_offset
        };
        assert_eq!(offset, committed, "OffsetFetch v{v}");
    }
    for v in versions(ApiKey::OffsetDelete) {
        let request = OffsetDeleteRequest::default()
            .with_group_id(GroupId(s("committer")))
            .with_topics(vec![
                OffsetDeleteRequestTopic::default()
                    .with_name(topic_name(TOPIC))
                    .with_partitions(vec![
                        OffsetDeleteRequestPartition::default().with_partition_index(1),
                    ]),
            ]);
        let ResponseKind::OffsetDelete(r) = c.send(ApiKey::OffsetDelete, v, request.into()) else {
            unreachable!()
        };
        assert_eq!(r.error_code, 0, "OffsetDelete v{v}");
        assert_eq!(r.topics[0].partitions[0].error_code, 0);
    }

    // InitProducerId: a fresh id, or the same id with the next epoch.
    for v in versions(ApiKey::InitProducerId) {
        let mut request = InitProducerIdRequest::default().with_transaction_timeout_ms(60_000);
        if v >= 3 {
            request.producer_id = ProducerId(-1);
            request.producer_epoch = -1;
        }
        let ResponseKind::InitProducerId(r) = c.send(ApiKey::InitProducerId, v, request.into())
        else {
            unreachable!()
        };
        assert_eq!(r.error_code, 0, "InitProducerId v{v}");
        assert!(r.producer_id.0 >= 0);
        assert_eq!(r.producer_epoch, 0);
    }

    // Configs: alter, incrementally alter, describe.
    for v in versions(ApiKey::AlterConfigs) {
        use kafka_protocol::messages::alter_configs_request::{
            AlterConfigsResource, AlterableConfig,
        };
        let retention = format!("{}", 3_600_000 + i64::from(v));
        let request = AlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s(TOPIC))
                .with_configs(vec![
                    AlterableConfig::default()
                        .with_name(s("retention.ms"))
                        .with_value(Some(s(&retention))),
                ]),
        ]);
        let ResponseKind::AlterConfigs(r) = c.send(ApiKey::AlterConfigs, v, request.into()) else {
            unreachable!()
        };
        assert_eq!(r.responses[0].error_code, 0, "AlterConfigs v{v}");
    }
    for v in versions(ApiKey::IncrementalAlterConfigs) {
        use kafka_protocol::messages::incremental_alter_configs_request::{
            AlterConfigsResource, AlterableConfig,
        };
        let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s(TOPIC))
                .with_configs(vec![
                    AlterableConfig::default()
                        .with_name(s("retention.bytes"))
                        .with_config_operation(0)
                        .with_value(Some(s(&format!("{}", 1_000_000 + i64::from(v))))),
                ]),
        ]);
        let ResponseKind::IncrementalAlterConfigs(r) =
            c.send(ApiKey::IncrementalAlterConfigs, v, request.into())
        else {
            unreachable!()
        };
        assert_eq!(r.responses[0].error_code, 0, "IncrementalAlterConfigs v{v}");
    }
    for v in versions(ApiKey::DescribeConfigs) {
        let request = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s(TOPIC))
                .with_configuration_keys(None),
        ]);
        let ResponseKind::DescribeConfigs(r) = c.send(ApiKey::DescribeConfigs, v, request.into())
        else {
            unreachable!()
        };
        let result = &r.results[0];
        assert_eq!(result.error_code, 0, "DescribeConfigs v{v}");
        let value = |name: &str| {
            result
                .configs
                .iter()
                .find(|c| c.name.as_str() == name)
                .and_then(|c| c.value.as_ref())
                .map(|v| v.to_string())
        };
        // AlterConfigs replaced the overrides whole, then the incremental call added one.
        let last_alter = *versions(ApiKey::AlterConfigs).end();
        let last_incremental = *versions(ApiKey::IncrementalAlterConfigs).end();
        assert_eq!(
            value("retention.ms"),
            Some(format!("{}", 3_600_000 + i64::from(last_alter)))
        );
        assert_eq!(
            value("retention.bytes"),
            Some(format!("{}", 1_000_000 + i64::from(last_incremental)))
        );
    }

    // CreatePartitions: each version adds one.
    let mut partitions = 2;
    for v in versions(ApiKey::CreatePartitions) {
        partitions += 1;
        let request = CreatePartitionsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![
                CreatePartitionsTopic::default()
                    .with_name(topic_name(TOPIC))
                    .with_count(partitions),
            ]);
        let ResponseKind::CreatePartitions(r) = c.send(ApiKey::CreatePartitions, v, request.into())
        else {
            unreachable!()
        };
        assert_eq!(r.results[0].error_code, 0, "CreatePartitions v{v}");
    }

    for v in versions(ApiKey::DescribeCluster) {
        let mut request = DescribeClusterRequest::default();
        if v >= 1 {
            request.endpoint_type = 1;
        }
        let ResponseKind::DescribeCluster(r) = c.send(ApiKey::DescribeCluster, v, request.into())
        else {
            unreachable!()
        };
        assert_eq!(r.error_code, 0, "DescribeCluster v{v}");
        assert!(!r.cluster_id.is_empty());
        assert_eq!(r.brokers.len(), 1);
    }

    // Transactions: per version of the transaction APIs, one transaction of its own id
    // (committed at even versions, aborted at odd ones) producing to partition v of a
    // topic of its own, with offsets sent to it; then a read_committed fetch of each
    // partition sees the aborted ones listed. WriteTxnMarkers ends one more transaction.
    const TXN_TOPIC: &str = "versions-txn";
    let txn_versions = versions(ApiKey::EndTxn);
    let partitions = i32::from(*txn_versions.end()) + 2;
    assert_eq!(create_topic(&mut c, 7, TXN_TOPIC, partitions).error_code, 0);
    for v in txn_versions.clone() {
        assert_eq!(versions(ApiKey::AddPartitionsToTxn), txn_versions);
        assert_eq!(versions(ApiKey::AddOffsetsToTxn), txn_versions);
        assert_eq!(versions(ApiKey::TxnOffsetCommit), txn_versions);
        let id = format!("versions-txn-{v}");
        let commit = v % 2 == 0;
        let coordinator = FindCoordinatorRequest::default()
            .with_key(s(&id))
            .with_key_type(1);
        let ResponseKind::FindCoordinator(r) =
            c.send(ApiKey::FindCoordinator, 3, coordinator.into())
        else {
            unreachable!()
        };
        assert_eq!((r.error_code, r.node_id), (0, BrokerId(0)), "{id}");
        let (producer, epoch) = init_transactional(&mut c, &id);
        let request = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(s(&id)))
            .with_v3_and_below_producer_id(ProducerId(producer))
            .with_v3_and_below_producer_epoch(epoch)
            .with_v3_and_below_topics(vec![
                AddPartitionsToTxnTopic::default()
                    .with_name(topic_name(TXN_TOPIC))
                    .with_partitions(vec![i32::from(v)]),
            ]);
        let ResponseKind::AddPartitionsToTxn(r) =
            c.send(ApiKey::AddPartitionsToTxn, v, request.into())
        else {
            unreachable!()
        };
        let result = &r.results_by_topic_v3_and_below[0].results_by_partition[0];
        assert_eq!(result.partition_error_code, 0, "AddPartitionsToTxn v{v}");
        produce_transactional(&mut c, &id, TXN_TOPIC, i32::from(v), (producer, epoch));
        let group = format!("versions-txn-group-{v}");
        let request = AddOffsetsToTxnRequest::default()
            .with_transactional_id(TransactionalId(s(&id)))
            .with_producer_id(ProducerId(producer))
            .with_producer_epoch(epoch)
            .with_group_id(GroupId(s(&group)));
        let ResponseKind::AddOffsetsToTxn(r) = c.send(ApiKey::AddOffsetsToTxn, v, request.into())
        else {
            unreachable!()
        };
        assert_eq!(r.error_code, 0, "AddOffsetsToTxn v{v}");
        let request = TxnOffsetCommitRequest::default()
            .with_transactional_id(TransactionalId(s(&id)))
            .with_group_id(GroupId(s(&group)))
            .with_producer_id(ProducerId(producer))
            .with_producer_epoch(epoch)
            .with_generation_id(-1)
            .with_topics(vec![
                TxnOffsetCommitRequestTopic::default()
                    .with_name(topic_name(TOPIC))
                    .with_partitions(vec![
                        TxnOffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(7),
                    ]),
            ]);
        let ResponseKind::TxnOffsetCommit(r) = c.send(ApiKey::TxnOffsetCommit, v, request.into())
        else {
            unreachable!()
        };
        assert_eq!(
            r.topics[0].partitions[0].error_code, 0,
            "TxnOffsetCommit v{v}"
        );
        // KIP-447: a consumer asking for stable offsets is told to wait for this one.
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(s(&group)))
            .with_require_stable(true)
            .with_topics(Some(vec![
                OffsetFetchRequestTopic::default()
                    .with_name(topic_name(TOPIC))
                    .with_partition_indexes(vec![0]),
            ]));
        let ResponseKind::OffsetFetch(r) = c.send(ApiKey::OffsetFetch, 7, request.into()) else {
            unreachable!()
        };
        assert_eq!(
            r.topics[0].partitions[0].error_code,
            ResponseError::UnstableOffsetCommit.code(),
            "OffsetFetch require_stable during {id}"
        );
        let request = EndTxnRequest::default()
            .with_transactional_id(TransactionalId(s(&id)))
            .with_producer_id(ProducerId(producer))
            .with_producer_epoch(epoch)
            .with_committed(commit);
        let ResponseKind::EndTxn(r) = c.send(ApiKey::EndTxn, v, request.into()) else {
            unreachable!()
        };
        assert_eq!(r.error_code, 0, "EndTxn v{v}");
        // The offsets count only if the transaction committed.
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(s(&group)))
            .with_topics(Some(vec![
                OffsetFetchRequestTopic::default()
                    .with_name(topic_name(TOPIC))
                    .with_partition_indexes(vec![0]),
            ]));
        let ResponseKind::OffsetFetch(r) = c.send(ApiKey::OffsetFetch, 5, request.into()) else {
            unreachable!()
        };
        let expected = if commit { 7 } else { -1 };
        assert_eq!(r.topics[0].partitions[0].committed_offset, expected, "{id}");
        // A stale epoch is fenced, named as the version knows it.
        let request = EndTxnRequest::default()
            .with_transactional_id(TransactionalId(s(&id)))
            .with_producer_id(ProducerId(producer))
            .with_producer_epoch(epoch - 1)
            .with_committed(commit);
        let ResponseKind::EndTxn(r) = c.send(ApiKey::EndTxn, v, request.into()) else {
            unreachable!()
        };
        let fenced = if v >= 2 {
            ResponseError::ProducerFenced
        } else {
            ResponseError::InvalidProducerEpoch
        };
        assert_eq!(r.error_code, fenced.code(), "EndTxn v{v} with an old epoch");
    }
    // The marker's own partition: WriteTxnMarkers aborts an open transaction there.
    let id = "versions-txn-markers";
    let last = partitions - 1;
    let (producer, epoch) = init_transactional(&mut c, id);
    produce_transactional(&mut c, id, TXN_TOPIC, last, (producer, epoch));
    let (lso, _) = fetch_committed(&mut c, TXN_TOPIC, last);
    assert_eq!(lso, 0, "an open transaction holds the last stable offset");
    for v in versions(ApiKey::WriteTxnMarkers) {
        let request = WriteTxnMarkersRequest::default().with_markers(vec![
            WritableTxnMarker::default()
                .with_producer_id(ProducerId(producer))
                .with_producer_epoch(epoch)
                .with_transaction_result(false)
                .with_coordinator_epoch(0)
                .with_topics(vec![
                    WritableTxnMarkerTopic::default()
                        .with_name(topic_name(TXN_TOPIC))
                        .with_partition_indexes(vec![last]),
                ]),
        ]);
        let ResponseKind::WriteTxnMarkers(r) = c.send(ApiKey::WriteTxnMarkers, v, request.into())
        else {
            unreachable!()
        };
        assert_eq!(
            r.markers[0].topics[0].partitions[0].error_code, 0,
            "WriteTxnMarkers v{v}"
        );
    }
    for partition in 0..partitions {
        let (lso, aborted) = fetch_committed(&mut c, TXN_TOPIC, partition);
        // 3 records and a marker.
        assert_eq!(lso, 4, "{TXN_TOPIC}-{partition}");
        let aborts = partition % 2 == 1 || partition == last;
        assert_eq!(
            aborted,
            if aborts { vec![0] } else { vec![] },
            "{TXN_TOPIC}-{partition}"
        );
    }

    let advertised: BTreeSet<(i16, i16)> = SUPPORTED
        .iter()
        .flat_map(|(api, min, max)| (*min..=*max).map(move |v| (*api as i16, v)))
        .collect();
    let missed: Vec<_> = advertised.difference(&c.exercised).collect();
    assert!(
        missed.is_empty(),
        "advertised but never exercised: {missed:?}"
    );
}

/// Users and SASL: AlterUserScramCredentials sets a credential (salted here, as Kafka's
/// tools do), DescribeUserScramCredentials shows it, and every SaslHandshake and
/// SaslAuthenticate version logs in with PLAIN on the SASL listener (and a wrong password
/// is refused); version 0 of the handshake continues with a bare token.
fn sasl_versions(c: &mut Client, sasl_listener: &str) {
    use kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion;
    use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
    use kafka_protocol::messages::{
        AlterUserScramCredentialsRequest, DescribeUserScramCredentialsRequest,
        SaslAuthenticateRequest, SaslHandshakeRequest,
    };
    let mechanism = weir_replication::ScramMechanism::Sha512;
    let (salt, salted) =
        weir_broker::security::scram::salt_password(mechanism, "pw", 4096).unwrap();
    for v in versions(ApiKey::AlterUserScramCredentials) {
        let request = AlterUserScramCredentialsRequest::default().with_upsertions(vec![
            ScramCredentialUpsertion::default()
                .with_name(s("user"))
                .with_mechanism(mechanism.id())
                .with_iterations(4096)
                .with_salt(Bytes::from(salt.clone()))
                .with_salted_password(Bytes::from(salted.clone())),
        ]);
        let ResponseKind::AlterUserScramCredentials(r) =
            c.send(ApiKey::AlterUserScramCredentials, v, request.into())
        else {
            unreachable!()
        };
        assert_eq!(r.results[0].error_code, 0, "AlterUserScramCredentials v{v}");
    }
    for v in versions(ApiKey::DescribeUserScramCredentials) {
        let request = DescribeUserScramCredentialsRequest::default()
            .with_users(Some(vec![UserName::default().with_name(s("user"))]));
        let ResponseKind::DescribeUserScramCredentials(r) =
            c.send(ApiKey::DescribeUserScramCredentials, v, request.into())
        else {
            unreachable!()
        };
        let info = &r.results[0].credential_infos;
        assert_eq!(
            r.results[0].error_code, 0,
            "DescribeUserScramCredentials v{v}"
        );
        assert_eq!((info[0].mechanism, info[0].iterations), (2, 4096));
    }
    let handshake = |c: &mut Client, v: i16| {
        let request = SaslHandshakeRequest::default().with_mechanism(s("PLAIN"));
        let ResponseKind::SaslHandshake(r) = c.send(ApiKey::SaslHandshake, v, request.into())
        else {
            unreachable!()
        };
        assert_eq!(r.error_code, 0, "SaslHandshake v{v}");
        assert!(r.mechanisms.iter().any(|m| m.as_str() == "SCRAM-SHA-512"));
    };
    let metadata_answered = |c: &mut Client| {
        let ResponseKind::Metadata(r) =
            c.send(ApiKey::Metadata, 1, MetadataRequest::default().into())
        else {
            unreachable!()
        };
        assert!(!r.brokers.is_empty());
    };
    for v in versions(ApiKey::SaslAuthenticate) {
        for (password, expected) in [("wrong", 58), ("pw", 0)] {
            let mut sasl = Client::connect(sasl_listener);
            handshake(&mut sasl, 1);
            let request = SaslAuthenticateRequest::default()
                .with_auth_bytes(Bytes::from(format!("\0user\0{password}")));
            let ResponseKind::SaslAuthenticate(r) =
                sasl.send(ApiKey::SaslAuthenticate, v, request.into())
            else {
                unreachable!()
            };
            assert_eq!(
                r.error_code, expected,
                "SaslAuthenticate v{v} with {password}"
            );
            if expected == 0 {
                metadata_answered(&mut sasl);
            }
            c.exercised.append(&mut sasl.exercised);
        }
    }
    // Version 0: the token goes bare, and so does the answer.
    let mut sasl = Client::connect(sasl_listener);
    handshake(&mut sasl, 0);
    let token = b"\0user\0pw";
    let mut framed = (token.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(token);
    sasl.stream.write_all(&framed).unwrap();
    let mut size = [0u8; 4];
    sasl.stream.read_exact(&mut size).unwrap();
    assert_eq!(i32::from_be_bytes(size), 0, "PLAIN's answer is empty");
    metadata_answered(&mut sasl);
    c.exercised.append(&mut sasl.exercised);
}

/// ACLs: each CreateAcls version adds one (and refuses one whose resource type is a
/// filter value), each DescribeAcls version finds them all by principal, each DeleteAcls
/// version removes its own by exact name.
fn acl_versions(c: &mut Client) {
    use kafka_protocol::messages::create_acls_request::AclCreation;
    use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
    use kafka_protocol::messages::{CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest};
    let creation = |resource_type: i8, name: &str| {
        AclCreation::default()
            .with_resource_type(resource_type)
            .with_resource_name(s(name))
            .with_resource_pattern_type(3)
            .with_principal(s("User:alice"))
            .with_host(s("*"))
            .with_operation(3)
            .with_permission_type(3)
    };
    for v in versions(ApiKey::CreateAcls) {
        let request = CreateAclsRequest::default()
            .with_creations(vec![creation(2, &format!("acl-v{v}")), creation(1, "any")]);
        let ResponseKind::CreateAcls(r) = c.send(ApiKey::CreateAcls, v, request.into()) else {
            unreachable!()
        };
        assert_eq!(r.results[0].error_code, 0, "CreateAcls v{v}");
        assert_ne!(
            r.results[1].error_code, 0,
            "CreateAcls v{v} of resource type ANY"
        );
    }
    let created = versions(ApiKey::CreateAcls).count();
    for v in versions(ApiKey::DescribeAcls) {
        let request = DescribeAclsRequest::default()
            .with_resource_type_filter(1)
            .with_resource_name_filter(None)
            .with_pattern_type_filter(1)
            .with_principal_filter(Some(s("User:alice")))
            .with_host_filter(None)
            .with_operation(1)
            .with_permission_type(1);
        let ResponseKind::DescribeAcls(r) = c.send(ApiKey::DescribeAcls, v, request.into()) else {
            unreachable!()
        };
        assert_eq!(r.error_code, 0, "DescribeAcls v{v}");
        assert_eq!(r.resources.len(), created, "DescribeAcls v{v}");
        assert!(r.resources.iter().all(|res| res.acls.len() == 1));
    }
    for v in versions(ApiKey::DeleteAcls) {
        let request = DeleteAclsRequest::default().with_filters(vec![
            DeleteAclsFilter::default()
                .with_resource_type_filter(2)
                .with_resource_name_filter(Some(s(&format!("acl-v{v}"))))
                .with_pattern_type_filter(3)
                .with_principal_filter(None)
                .with_host_filter(None)
                .with_operation(1)
                .with_permission_type(1),
        ]);
        let ResponseKind::DeleteAcls(r) = c.send(ApiKey::DeleteAcls, v, request.into()) else {
            unreachable!()
        };
        assert_eq!(r.filter_results[0].error_code, 0, "DeleteAcls v{v}");
        assert_eq!(
            r.filter_results[0].matching_acls.len(),
            1,
            "DeleteAcls v{v}"
        );
    }
}

/// Client quotas: each AlterClientQuotas version sets a quota of its own user (and
/// refuses an unknown key, changing nothing of that entity), each DescribeClientQuotas
/// version finds them (exact, and every user with `strict`).
fn quota_versions(c: &mut Client) {
    use kafka_protocol::messages::alter_client_quotas_request::{EntityData, EntryData, OpData};
    use kafka_protocol::messages::describe_client_quotas_request::ComponentData;
    use kafka_protocol::messages::{AlterClientQuotasRequest, DescribeClientQuotasRequest};
    let user = |name: &str| {
        vec![
            EntityData::default()
                .with_entity_type(s("user"))
                .with_entity_name(Some(s(name))),
        ]
    };
    let op = |key: &str, value: f64| OpData::default().with_key(s(key)).with_value(value);
    for v in versions(ApiKey::AlterClientQuotas) {
        let request = AlterClientQuotasRequest::default().with_entries(vec![
            EntryData::default()
                .with_entity(user(&format!("quota-v{v}")))
                .with_ops(vec![op("producer_byte_rate", 1048576.0)]),
            EntryData::default()
                .with_entity(user("refused"))
                .with_ops(vec![
                    op("consumer_byte_rate", 1.0),
                    op("request_percentage", 50.0),
                ]),
        ]);
        let ResponseKind::AlterClientQuotas(r) =
            c.send(ApiKey::AlterClientQuotas, v, request.into())
        else {
            unreachable!()
        };
        assert_eq!(r.entries[0].error_code, 0, "AlterClientQuotas v{v}");
        assert_ne!(
            r.entries[1].error_code, 0,
            "AlterClientQuotas v{v}: unknown key"
        );
    }
    for v in versions(ApiKey::DescribeClientQuotas) {
        let every_user = ComponentData::default()
            .with_entity_type(s("user"))
            .with_match_type(2)
            .with_match(None);
        let request = DescribeClientQuotasRequest::default()
            .with_components(vec![every_user])
            .with_strict(true);
        let ResponseKind::DescribeClientQuotas(r) =
            c.send(ApiKey::DescribeClientQuotas, v, request.into())
        else {
            unreachable!()
        };
        assert_eq!(r.error_code, 0, "DescribeClientQuotas v{v}");
        let entries = r.entries.unwrap_or_default();
        let users: Vec<_> = entries
            .iter()
            .map(|e| e.entity[0].entity_name.as_ref().map(|n| n.to_string()))
            .collect();
        let expected: Vec<_> = versions(ApiKey::AlterClientQuotas)
            .map(|v| Some(format!("quota-v{v}")))
            .collect();
        assert_eq!(users, expected, "DescribeClientQuotas v{v}");
        assert_eq!(entries[0].values[0].key.as_str(), "producer_byte_rate");
        assert_eq!(entries[0].values[0].value, 1048576.0);
    }
}

/// A transactional producer's id and epoch (InitProducerId v3 with the id).
fn init_transactional(c: &mut Client, id: &str) -> (i64, i16) {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(s(id))))
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let ResponseKind::InitProducerId(r) = c.send(ApiKey::InitProducerId, 3, request.into()) else {
        unreachable!()
    };
    assert_eq!(r.error_code, 0, "InitProducerId for {id}");
    (r.producer_id.0, r.producer_epoch)
}

/// Three records of the producer's transaction to `topic`-`partition`.
fn produce_transactional(
    c: &mut Client,
    id: &str,
    topic: &str,
    partition: i32,
    producer: (i64, i16),
) {
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    builder.producer(producer.0, producer.1, 0);
    builder.transactional();
    for i in 0..3 {
        builder.append(
            1_700_000_000_000,
            Some(format!("k{i}").as_bytes()),
            Some(b"v"),
            &[],
        );
    }
    let request = ProduceRequest::default()
        .with_transactional_id(Some(TransactionalId(s(id))))
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(topic_name(topic))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(Bytes::from(builder.build().to_vec()))),
                ]),
        ]);
    let ResponseKind::Produce(r) = c.send(ApiKey::Produce, 9, request.into()) else {
        unreachable!()
    };
    assert_eq!(
        r.responses[0].partition_responses[0].error_code, 0,
        "transactional produce"
    );
}

/// A read_committed fetch from offset 0: the last stable offset and the first offsets of
/// the aborted transactions listed.
fn fetch_committed(c: &mut Client, topic: &str, partition: i32) -> (i64, Vec<i64>) {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_isolation_level(1)
        .with_session_epoch(-1)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(partition)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let ResponseKind::Fetch(r) = c.send(ApiKey::Fetch, 11, request.into()) else {
        unreachable!()
    };
    let p = &r.responses[0].partitions[0];
    assert_eq!(
        p.error_code, 0,
        "read_committed fetch of {topic}-{partition}"
    );
    let aborted = p
        .aborted_transactions
        .as_ref()
        .expect("read_committed lists aborted transactions")
        .iter()
        .map(|a| a.first_offset)
        .collect();
    (p.last_stable_offset, aborted)
}
