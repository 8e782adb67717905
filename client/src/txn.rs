//! The requests of idempotent and transactional producers: producer ids from any broker
//! (or, with a transactional id, from its coordinator), and the transaction
//! coordinator's requests, each sent to the leader of the id's `__transaction_state`
//! partition and retried through coordinator moves.

use std::rc::Rc;

use weir_wire::native::schema::{self, RequestBody};

use crate::ErrorCode;
use crate::client::{Client, TXN_TOPIC, call_on, commit_topics};
use crate::connection::{Connection, ResponseFrame};
use crate::error::{ClientError, ClientResult};

/// A producer id and epoch.
pub type ProducerId = (i64, i16);

/// The first per-partition error of an AddPartitionsToTxn or TxnCommitOffsets response.
fn first_partition_error(
    topics: Option<
        flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<schema::TxnTopicResult<'_>>>,
    >,
    what: &str,
) -> ClientResult<()> {
    for topic in topics.into_iter().flatten() {
        for p in topic.partitions().into_iter().flatten() {
            if p.error() != ErrorCode::None {
                let message = format!("{what} {}-{}", topic.name(), p.partition());
                return Err(ClientError::broker(p.error(), Some(&message)));
            }
        }
    }
    Ok(())
}

impl Client {
    /// A producer id and epoch: with `transactional_id`, from its coordinator, which
    /// fences (and aborts the open transaction of) any older producer of the id; without,
    /// a new id for an idempotent producer. `current` is the id and epoch the producer
    /// already had, if any.
    pub async fn init_producer(
        &self,
        transactional_id: Option<&str>,
        transaction_timeout_ms: i32,
        current: Option<ProducerId>,
    ) -> ClientResult<ProducerId> {
        let (id, epoch) = current.unwrap_or((-1, -1));
        let call = |connection: Rc<Connection>| async move {
            let build = |b: &mut flatbuffers::FlatBufferBuilder<'static>| {
                let transactional_id = transactional_id.map(|t| b.create_string(t));
                let args = schema::InitProducerRequestArgs {
                    transactional_id,
                    transaction_timeout_ms,
                    producer_id: id,
                    producer_epoch: epoch,
                };
                schema::InitProducerRequest::create(b, &args).as_union_value()
            };
            let frame =
                call_on(&connection, RequestBody::InitProducerRequest, build, vec![]).await?;
            let response = frame.checked()?;
            let body = response
                .body_as_init_producer_response()
                .ok_or_else(|| ClientError::Invalid("no init producer body".into()))?;
            Ok((body.producer_id(), body.producer_epoch()))
        };
        match transactional_id {
            Some(transactional_id) => {
                self.with_coordinator_of(TXN_TOPIC, transactional_id, call)
                    .await
            }
            None => self.with_any_broker(call).await,
        }
    }

    /// Adds partitions to the producer's transaction (before it writes to them).
    pub async fn add_partitions_to_txn(
        &self,
        transactional_id: &str,
        producer: ProducerId,
        partitions: &[(String, i32)],
    ) -> ClientResult<()> {
        let call = |connection: Rc<Connection>| async move {
            let build = |b: &mut flatbuffers::FlatBufferBuilder<'static>| {
                let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
                for (topic, partition) in partitions {
                    match topics.iter_mut().find(|(t, _)| t == topic) {
                        Some((_, list)) => list.push(*partition),
                        None => topics.push((topic, vec![*partition])),
                    }
                }
                let topics: Vec<_> = topics
                    .into_iter()
                    .map(|(name, list)| {
                        let name = b.create_string(name);
                        let partitions = b.create_vector(&list);
                        let args = schema::TxnTopicArgs {
                            name: Some(name),
                            partitions: Some(partitions),
                        };
                        schema::TxnTopic::create(b, &args)
                    })
                    .collect();
                let topics = b.create_vector(&topics);
                let transactional_id = b.create_string(transactional_id);
                let args = schema::AddPartitionsToTxnRequestArgs {
                    transactional_id: Some(transactional_id),
                    producer_id: producer.0,
                    producer_epoch: producer.1,
                    topics: Some(topics),
                };
                schema::AddPartitionsToTxnRequest::create(b, &args).as_union_value()
            };
            let frame = call_on(
                &connection,
                RequestBody::AddPartitionsToTxnRequest,
                build,
                vec![],
            )
            .await?;
            let response = frame.checked()?;
            let body = response
                .body_as_add_partitions_to_txn_response()
                .ok_or_else(|| ClientError::Invalid("no add partitions body".into()))?;
            first_partition_error(body.topics(), "adding")
        };
        self.with_coordinator_of(TXN_TOPIC, transactional_id, call)
            .await
    }

    /// Adds `group`'s offsets to the producer's transaction (before
    /// `txn_commit_offsets`).
    pub async fn add_offsets_to_txn(
        &self,
        transactional_id: &str,
        producer: ProducerId,
        group: &str,
    ) -> ClientResult<()> {
        let call = |connection: Rc<Connection>| async move {
            let build = |b: &mut flatbuffers::FlatBufferBuilder<'static>| {
                let (transactional_id, group) =
                    (b.create_string(transactional_id), b.create_string(group));
                let args = schema::AddOffsetsToTxnRequestArgs {
                    transactional_id: Some(transactional_id),
                    producer_id: producer.0,
                    producer_epoch: producer.1,
                    group: Some(group),
                };
                schema::AddOffsetsToTxnRequest::create(b, &args).as_union_value()
            };
            let frame = call_on(
                &connection,
                RequestBody::AddOffsetsToTxnRequest,
                build,
                vec![],
            )
            .await?;
            checked_body(&frame, |r| {
                r.body_as_add_offsets_to_txn_response().is_some()
            })
        };
        self.with_coordinator_of(TXN_TOPIC, transactional_id, call)
            .await
    }

    /// Commits (`commit`) or aborts the producer's transaction. Answered once every
    /// partition of the transaction has its marker.
    pub async fn end_txn(
        &self,
        transactional_id: &str,
        producer: ProducerId,
        commit: bool,
    ) -> ClientResult<()> {
        let call = |connection: Rc<Connection>| async move {
            let build = |b: &mut flatbuffers::FlatBufferBuilder<'static>| {
                let transactional_id = b.create_string(transactional_id);
                let args = schema::EndTxnRequestArgs {
                    transactional_id: Some(transactional_id),
                    producer_id: producer.0,
                    producer_epoch: producer.1,
                    commit,
                };
                schema::EndTxnRequest::create(b, &args).as_union_value()
            };
            let frame = call_on(&connection, RequestBody::EndTxnRequest, build, vec![]).await?;
            checked_body(&frame, |r| r.body_as_end_txn_response().is_some())
        };
        self.with_coordinator_of(TXN_TOPIC, transactional_id, call)
            .await
    }

    /// Commits `group`'s offsets within the producer's transaction: they take effect
    /// when it commits, and vanish if it aborts.
    pub async fn txn_commit_offsets(
        &self,
        transactional_id: &str,
        group: &str,
        producer: ProducerId,
        offsets: &[(String, i32, i64)],
    ) -> ClientResult<()> {
        let call = |connection: Rc<Connection>| async move {
            let build = |b: &mut flatbuffers::FlatBufferBuilder<'static>| {
                let topics = commit_topics(b, offsets);
                let group = b.create_string(group);
                let transactional_id = b.create_string(transactional_id);
                let args = schema::TxnCommitOffsetsRequestArgs {
                    producer_id: producer.0,
                    producer_epoch: producer.1,
                    group: Some(group),
                    topics: Some(topics),
                    transactional_id: Some(transactional_id),
                };
                schema::TxnCommitOffsetsRequest::create(b, &args).as_union_value()
            };
            let frame = call_on(
                &connection,
                RequestBody::TxnCommitOffsetsRequest,
                build,
                vec![],
            )
            .await?;
            let response = frame.checked()?;
            let body = response
                .body_as_txn_commit_offsets_response()
                .ok_or_else(|| ClientError::Invalid("no txn commit offsets body".into()))?;
            first_partition_error(body.topics(), "committing")
        };
        self.with_coordinator(group, call).await
    }
}

/// Checks a response whose body has no fields: no error, and the body `is_body` expects.
fn checked_body(
    frame: &ResponseFrame,
    is_body: impl Fn(&schema::Response<'_>) -> bool,
) -> ClientResult<()> {
    let response = frame.checked()?;
    if is_body(&response) {
        Ok(())
    } else {
        Err(ClientError::Invalid("unexpected response body".into()))
    }
}
