//! loadgen's Kafka-protocol client: the same calls as the native `weir_client::Client`
//! that loadgen makes (metadata, create topic, list offsets, produce, fetch), encoded and
//! decoded with the `kafka-protocol` crate, pipelined on one connection (Kafka answers a
//! connection's requests in order). Results come back as the native client's types so that
//! the load logic is the same for both protocols.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, ApiKey, BrokerId, CreateTopicsRequest, EndTxnRequest, FetchRequest,
    InitProducerIdRequest, ListOffsetsRequest, MetadataRequest, ProduceRequest, ProducerId,
    RequestHeader, RequestKind, ResponseHeader, ResponseKind, TopicName, TransactionalId,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use weir_client::{Acks, ErrorCode, FetchSpec, FetchedPartition, OffsetQuery, ProduceResult};

/// The versions loadgen speaks: those current clients use (librdkafka 2.x, kafka-python).
const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;
const LIST_OFFSETS_VERSION: i16 = 7;
const METADATA_VERSION: i16 = 9;
const CREATE_TOPICS_VERSION: i16 = 5;
const INIT_PRODUCER_ID_VERSION: i16 = 4;
/// AddPartitionsToTxn and EndTxn: the versions librdkafka uses.
const TXN_VERSION: i16 = 1;
/// The largest response loadgen accepts.
const RESPONSE_BYTES_MAX: usize = 256 << 20;

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

fn code(error: i16) -> ErrorCode {
    if error == 0 {
        ErrorCode::None
    } else {
        ErrorCode::Unknown
    }
}

struct Connection {
    writer: RefCell<Option<WriteHalf<TcpStream>>>,
    /// Requests are written in the order `call` was entered: a FIFO gate, so an
    /// idempotent producer's pipelined batches keep their sequence order.
    write_turn: Rc<weir_client::ArrivalGate>,
    /// Requests awaiting their response, in the order they were sent.
    waiting: RefCell<VecDeque<(i32, LocalSender<Bytes>)>>,
    correlation: Cell<i32>,
}

#[derive(Clone)]
pub struct KafkaClient {
    connection: Rc<Connection>,
}

impl KafkaClient {
    pub async fn connect(address: &str) -> anyhow::Result<KafkaClient> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(std::io::Error::from)
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true).map_err(std::io::Error::from)?;
        let (reader, writer) = futures_lite::io::split(stream);
        let connection = Rc::new(Connection {
            writer: RefCell::new(Some(writer)),
            write_turn: weir_client::ArrivalGate::new(),
            waiting: RefCell::new(VecDeque::new()),
            correlation: Cell::new(0),
        });
        glommio::spawn_local(read_responses(reader, connection.clone())).detach();
        Ok(KafkaClient { connection })
    }

    /// Sends a request; returns its response body unless `expect_response` is false.
    async fn call(
        &self,
        api: ApiKey,
        version: i16,
        body: RequestKind,
        expect_response: bool,
    ) -> anyhow::Result<Option<ResponseKind>> {
        let connection = &self.connection;
        let turn = connection.write_turn.take_ticket();
        let correlation = connection.correlation.get().wrapping_add(1);
        connection.correlation.set(correlation);
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(s("loadgen")));
        // Sized up front: a produce request carries its batches, and growing the buffer
        // while they are encoded copied each batch about three times (perf: memmove
        // was 29% of loadgen's CPU in Kafka mode at full speed).
        let body_bytes = match &body {
            RequestKind::Produce(request) => request.compute_size(version)?,
            _ => 0,
        };
        let mut frame = BytesMut::with_capacity(256 + body_bytes);
        frame.extend_from_slice(&[0; 4]);
        header.encode(&mut frame, api.request_header_version(version))?;
        body.encode(&mut frame, version)?;
        let size = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        let receiver = {
            turn.wait_turn().await;
            let _turn = turn;
            let receiver = expect_response.then(|| {
                let (sender, receiver) = local_channel::new_bounded(1);
                connection
                    .waiting
                    .borrow_mut()
                    .push_back((correlation, sender));
                receiver
            });
            let mut writer = connection
                .writer
                .borrow_mut()
                .take()
                .context("connection closed")?;
            let written = writer.write_all(&frame).await;
            *connection.writer.borrow_mut() = Some(writer);
            written.context("sending a request")?;
            receiver
        };
        let Some(receiver) = receiver else {
            return Ok(None);
        };
        let mut response = receiver.recv().await.context("the connection closed")?;
        ResponseHeader::decode(&mut response, api.response_header_version(version))?;
        Ok(Some(ResponseKind::decode(api, &mut response, version)?))
    }

    pub async fn partition_count(&self, topic: &str) -> anyhow::Result<i32> {
        let request = MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(TopicName(s(topic)))),
        ]));
        // Metadata auto-creates missing topics (with the broker's count); ask it not to.
        let request = request.with_allow_auto_topic_creation(false);
        let Some(ResponseKind::Metadata(response)) = self
            .call(ApiKey::Metadata, METADATA_VERSION, request.into(), true)
            .await?
        else {
            bail!("no metadata response");
        };
        let topic = response.topics.first().context("empty metadata")?;
        if topic.error_code != 0 {
            bail!("topic {topic:?}: error {}", topic.error_code);
        }
        Ok(topic.partitions.len() as i32)
    }

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &[(String, String)],
    ) -> anyhow::Result<()> {
        let topic = CreatableTopic::default()
            .with_name(TopicName(s(name)))
            .with_num_partitions(partitions)
            .with_replication_factor(1)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(s(k))
                            .with_value(Some(s(v)))
                    })
                    .collect(),
            );
        let request = CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(30_000);
        let Some(ResponseKind::CreateTopics(response)) = self
            .call(
                ApiKey::CreateTopics,
                CREATE_TOPICS_VERSION,
                request.into(),
                true,
            )
            .await?
        else {
            bail!("no create-topics response");
        };
        match response.topics.first() {
            Some(t) if t.error_code == 0 => Ok(()),
            other => bail!("creating {name}: {other:?}"),
        }
    }

    pub async fn list_offsets(
        &self,
        partitions: &[(String, i32)],
        query: OffsetQuery,
    ) -> anyhow::Result<Vec<(String, i32, i64, i64)>> {
        let timestamp = match query {
            OffsetQuery::Earliest => -2,
            OffsetQuery::Latest => -1,
            OffsetQuery::Timestamp(ts) => ts,
        };
        let mut topics: Vec<ListOffsetsTopic> = Vec::new();
        for (topic, partition) in partitions {
            let entry = ListOffsetsPartition::default()
                .with_partition_index(*partition)
                .with_timestamp(timestamp);
            match topics.iter_mut().find(|t| t.name.as_str() == topic) {
                Some(t) => t.partitions.push(entry),
                None => topics.push(
                    ListOffsetsTopic::default()
                        .with_name(TopicName(s(topic)))
                        .with_partitions(vec![entry]),
                ),
            }
        }
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(topics);
        let Some(ResponseKind::ListOffsets(response)) = self
            .call(
                ApiKey::ListOffsets,
                LIST_OFFSETS_VERSION,
                request.into(),
                true,
            )
            .await?
        else {
            bail!("no list-offsets response");
        };
        let mut found = Vec::new();
        for topic in response.topics {
            for p in topic.partitions {
                if p.error_code != 0 {
                    bail!(
                        "list offsets {}-{}: error {}",
                        topic.name.as_str(),
                        p.partition_index,
                        p.error_code
                    );
                }
                found.push((
                    topic.name.to_string(),
                    p.partition_index,
                    p.offset,
                    p.timestamp,
                ));
            }
        }
        Ok(found)
    }

    pub async fn produce(
        &self,
        acks: Acks,
        timeout_ms: i32,
        records: Vec<(String, i32, Bytes)>,
    ) -> anyhow::Result<Vec<ProduceResult>> {
        let acks = match acks {
            Acks::None => 0,
            Acks::Leader => 1,
            _ => -1,
        };
        let mut topics: Vec<TopicProduceData> = Vec::new();
        for (topic, partition, batch) in records {
            let entry = PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch));
            match topics.iter_mut().find(|t| t.name.as_str() == topic) {
                Some(t) => t.partition_data.push(entry),
                None => topics.push(
                    TopicProduceData::default()
                        .with_name(TopicName(s(&topic)))
                        .with_partition_data(vec![entry]),
                ),
            }
        }
        let request = ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(timeout_ms)
            .with_topic_data(topics);
        let response = self
            .call(ApiKey::Produce, PRODUCE_VERSION, request.into(), acks != 0)
            .await?;
        let Some(ResponseKind::Produce(response)) = response else {
            return Ok(Vec::new());
        };
        let mut results = Vec::new();
        for topic in response.responses {
            for p in topic.partition_responses {
                results.push(ProduceResult {
                    topic: topic.name.to_string(),
                    partition: p.index,
                    error: code(p.error_code),
                    error_message: p.error_message.map_or_else(
                        || format!("Kafka error {}", p.error_code),
                        |m| m.to_string(),
                    ),
                    base_offset: p.base_offset,
                });
            }
        }
        Ok(results)
    }

    /// InitProducerId: an idempotent producer's id and epoch, or a transactional one's.
    pub async fn init_producer_id(
        &self,
        transactional_id: Option<&str>,
    ) -> anyhow::Result<(i64, i16)> {
        let request = InitProducerIdRequest::default()
            .with_transactional_id(transactional_id.map(|t| TransactionalId(s(t))))
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let response = self
            .call_retrying(
                ApiKey::InitProducerId,
                INIT_PRODUCER_ID_VERSION,
                request.into(),
            )
            .await?;
        let ResponseKind::InitProducerId(r) = response else {
            bail!("InitProducerId answered with {response:?}");
        };
        if r.error_code != 0 {
            bail!("InitProducerId: Kafka error {}", r.error_code);
        }
        Ok((r.producer_id.0, r.producer_epoch))
    }

    pub async fn add_partitions_to_txn(
        &self,
        transactional_id: &str,
        producer: (i64, i16),
        partitions: &[(String, i32)],
    ) -> anyhow::Result<()> {
        let topics = partitions
            .iter()
            .map(|(topic, partition)| {
                AddPartitionsToTxnTopic::default()
                    .with_name(TopicName(s(topic)))
                    .with_partitions(vec![*partition])
            })
            .collect();
        let request = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(s(transactional_id)))
            .with_v3_and_below_producer_id(ProducerId(producer.0))
            .with_v3_and_below_producer_epoch(producer.1)
            .with_v3_and_below_topics(topics);
        let response = self
            .call_retrying(ApiKey::AddPartitionsToTxn, TXN_VERSION, request.into())
            .await?;
        let ResponseKind::AddPartitionsToTxn(r) = response else {
            bail!("AddPartitionsToTxn answered with {response:?}");
        };
        for topic in &r.results_by_topic_v3_and_below {
            for p in &topic.results_by_partition {
                if p.partition_error_code != 0 {
                    bail!("AddPartitionsToTxn: Kafka error {}", p.partition_error_code);
                }
            }
        }
        Ok(())
    }

    pub async fn end_txn(
        &self,
        transactional_id: &str,
        producer: (i64, i16),
        commit: bool,
    ) -> anyhow::Result<()> {
        let request = EndTxnRequest::default()
            .with_transactional_id(TransactionalId(s(transactional_id)))
            .with_producer_id(ProducerId(producer.0))
            .with_producer_epoch(producer.1)
            .with_committed(commit);
        let response = self
            .call_retrying(ApiKey::EndTxn, TXN_VERSION, request.into())
            .await?;
        let ResponseKind::EndTxn(r) = response else {
            bail!("EndTxn answered with {response:?}");
        };
        if r.error_code != 0 {
            bail!("EndTxn: Kafka error {}", r.error_code);
        }
        Ok(())
    }

    /// A coordinator call, again while the coordinator says it is busy with the id
    /// (CONCURRENT_TRANSACTIONS) or not ready (COORDINATOR_LOAD_IN_PROGRESS).
    async fn call_retrying(
        &self,
        api: ApiKey,
        version: i16,
        body: RequestKind,
    ) -> anyhow::Result<ResponseKind> {
        const RETRIABLE: [i16; 2] = [51, 14];
        for _ in 0..100 {
            let response = self
                .call(api, version, body.clone(), true)
                .await?
                .context("no response")?;
            let code = match &response {
                ResponseKind::InitProducerId(r) => r.error_code,
                ResponseKind::EndTxn(r) => r.error_code,
                ResponseKind::AddPartitionsToTxn(r) => r
                    .results_by_topic_v3_and_below
                    .iter()
                    .flat_map(|t| &t.results_by_partition)
                    .map(|p| p.partition_error_code)
                    .find(|c| *c != 0)
                    .unwrap_or(0),
                _ => 0,
            };
            if !RETRIABLE.contains(&code) {
                return Ok(response);
            }
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        }
        bail!("{api:?}: the coordinator stayed busy")
    }

    pub async fn fetch(&self, spec: &FetchSpec) -> anyhow::Result<Vec<FetchedPartition>> {
        let mut topics: Vec<FetchTopic> = Vec::new();
        for (topic, partition, offset, max_bytes) in &spec.partitions {
            let entry = FetchPartition::default()
                .with_partition(*partition)
                .with_fetch_offset(*offset)
                .with_partition_max_bytes(*max_bytes);
            match topics.iter_mut().find(|t| t.topic.as_str() == topic) {
                Some(t) => t.partitions.push(entry),
                None => topics.push(
                    FetchTopic::default()
                        .with_topic(TopicName(s(topic)))
                        .with_partitions(vec![entry]),
                ),
            }
        }
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(spec.max_wait_ms)
            .with_min_bytes(spec.min_bytes)
            .with_max_bytes(spec.max_bytes)
            .with_session_epoch(-1)
            .with_topics(topics);
        let Some(ResponseKind::Fetch(response)) = self
            .call(ApiKey::Fetch, FETCH_VERSION, request.into(), true)
            .await?
        else {
            bail!("no fetch response");
        };
        let mut fetched = Vec::new();
        for topic in response.responses {
            for p in topic.partitions {
                fetched.push(FetchedPartition {
                    topic: topic.topic.to_string(),
                    partition: p.partition_index,
                    error: code(p.error_code),
                    error_message: format!("Kafka error {}", p.error_code),
                    high_watermark: p.high_watermark,
                    log_start_offset: p.log_start_offset,
                    last_stable_offset: p.last_stable_offset,
                    records: p.records.unwrap_or_default(),
                    // Read uncommitted: nothing is listed.
                    aborted: Vec::new(),
                });
            }
        }
        Ok(fetched)
    }
}

/// Reads responses and hands each to the request waiting for it (the oldest one).
async fn read_responses(mut reader: ReadHalf<TcpStream>, connection: Rc<Connection>) {
    loop {
        let mut size = [0u8; 4];
        if reader.read_exact(&mut size).await.is_err() {
            break;
        }
        let size = i32::from_be_bytes(size);
        let Some(size) = usize::try_from(size)
            .ok()
            .filter(|s| (4..=RESPONSE_BYTES_MAX).contains(s))
        else {
            break;
        };
        let mut frame = vec![0u8; size];
        if reader.read_exact(&mut frame).await.is_err() {
            break;
        }
        let correlation = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let waiter = connection.waiting.borrow_mut().pop_front();
        match waiter {
            Some((expected, sender)) if expected == correlation => {
                let _ = sender.try_send(Bytes::from(frame));
            }
            _ => break,
        }
    }
    // Dropping the senders fails every waiting request.
    connection.waiting.borrow_mut().clear();
}
