//! Produce: record batches are cut out of the request's own buffer and appended as they
//! are, without a copy.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ApiKey, ProduceResponse, RequestHeader, RequestKind, ResponseKind};
use weir_wire::native::schema::Acks;

use super::codec::Request;
use super::handlers::{Reply, reply, str_bytes};
use super::{errors, topics};
use crate::error::{BrokerError, BrokerResult};
use crate::ops::{self, Appended};
use crate::router::TopicPartition;
use crate::security::Caller;
use crate::shard::Shard;

type Finish = Pin<Box<dyn Future<Output = Option<Reply>>>>;

/// Starts the request's appends (in arrival order) and returns what finishes it.
/// `throttle`: how long the client's quotas hold it off (for `throttle_time_ms`).
pub async fn start(
    shard: &Rc<Shard>,
    caller: &Caller,
    request: Request,
    throttle: Duration,
) -> Finish {
    let Request {
        header,
        body,
        frame,
        ..
    } = request;
    let RequestKind::Produce(body) = body else {
        unreachable!("dispatched as produce")
    };
    let acks = match body.acks {
        0 => Ok(Acks::None),
        1 => Ok(Acks::Leader),
        -1 => Ok(Acks::All),
        other => Err(BrokerError::kafka(
            ResponseError::InvalidRequiredAcks,
            format!("acks must be 0, 1 or -1, not {other}"),
        )),
    };
    let refuse_all = acks
        .as_ref()
        .err()
        .map(|error| (errors::code(error), error.to_string()));
    // Only the authorizer reads the transactional id: copied out of the frame only then.
    let transactional_id = body
        .transactional_id
        .as_ref()
        .filter(|_| shard.authorizer.enabled())
        .map(|id| id.to_string());
    // Where each partition's records lie in the frame; then the request (and with it
    // every other reference to the frame) is dropped, so the frame can be cut up.
    let base = frame.as_ptr() as usize;
    // The transactional id is a slice of the frame too.
    drop(body.transactional_id);
    let mut located: Vec<(TopicPartition, Option<Range<usize>>)> = Vec::new();
    for topic in body.topic_data {
        for partition in topic.partition_data {
            let tp = TopicPartition {
                topic: topic.name.0.to_string(),
                partition: partition.index,
            };
            let range = partition.records.as_ref().and_then(|records| {
                let start = (records.as_ptr() as usize).checked_sub(base)?;
                let range = start..start + records.len();
                (range.end <= frame.len()).then_some(range)
            });
            located.push((tp, range));
        }
    }
    if let Some((code, message)) = refuse_all {
        let results = located
            .into_iter()
            .map(|(tp, _)| {
                let error = BrokerError::Kafka {
                    code,
                    message: message.clone(),
                };
                (tp, Err(error))
            })
            .collect();
        return Box::pin(std::future::ready(Some(respond(
            &header, results, throttle,
        ))));
    }
    let acks = acks.unwrap_or(Acks::All);
    let batches = cut(shard, frame, located);
    let producer = ops::Producing {
        caller,
        transactional_id: transactional_id.as_deref(),
    };
    let started = ops::start_produce(shard, producer, batches, acks).await;
    Box::pin(async move {
        let results = ops::finish_produce(started).await;
        if acks != Acks::None {
            return Some(respond(&header, results, throttle));
        }
        // Nothing answers acks=0, so a refusal closes the connection, as Kafka's broker
        // does: the client sees its writes failing instead of vanishing.
        results.iter().any(|(_, result)| result.is_err()).then(|| {
            tracing::debug!("an acks=0 produce was refused; closing the connection");
            Reply {
                parts: Vec::new(),
                failed: true,
                close_after: true,
                memory: None,
            }
        })
    })
}

/// Cuts each partition's records out of the frame, without copying when the frame's
/// buffer is no longer shared (it is not, once the decoded request is gone).
fn cut(
    shard: &Shard,
    frame: Bytes,
    located: Vec<(TopicPartition, Option<Range<usize>>)>,
) -> Vec<(TopicPartition, BrokerResult<Vec<BytesMut>>)> {
    let mut frame = frame.try_into_mut().unwrap_or_else(|shared| {
        tracing::warn!("a produce frame is still shared; copying its records");
        BytesMut::from(&shared[..])
    });
    let mut order: Vec<usize> = (0..located.len()).collect();
    order.sort_by_key(|i| located[*i].1.as_ref().map_or(usize::MAX, |r| r.start));
    let mut pieces: Vec<Option<BytesMut>> = (0..located.len()).map(|_| None).collect();
    let mut consumed = 0;
    for index in order {
        let Some(range) = located[index].1.clone() else {
            continue;
        };
        if range.start < consumed {
            continue; // overlapping records cannot come from a decoder; refuse them
        }
        frame.advance(range.start - consumed);
        pieces[index] = Some(frame.split_to(range.len()));
        consumed = range.end;
    }
    located
        .into_iter()
        .zip(pieces)
        .map(|((tp, _), piece)| {
            let batches = match piece {
                Some(records) => ops::split_batches(shard, records),
                None => Err(BrokerError::InvalidRequest(format!("no records for {tp}"))),
            };
            (tp, batches)
        })
        .collect()
}

fn respond(
    header: &RequestHeader,
    results: Vec<(TopicPartition, BrokerResult<Appended>)>,
    throttle: Duration,
) -> Reply {
    let version = header.request_api_version;
    let failed = results.iter().any(|(_, r)| r.is_err());
    let responses = ops::group_by_topic(results)
        .into_iter()
        .map(|(name, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|(index, result)| partition_response(version, index, result))
                .collect();
            TopicProduceResponse::default()
                .with_name(topics::topic_name(&name))
                .with_partition_responses(partitions)
        })
        .collect();
    let mut response = ProduceResponse::default().with_responses(responses);
    if version >= 1 {
        response.throttle_time_ms = crate::security::quotas::throttle_ms(throttle);
    }
    let body = ResponseKind::Produce(response);
    reply(header, ApiKey::Produce, &body, failed)
}

fn partition_response(
    version: i16,
    index: i32,
    result: BrokerResult<Appended>,
) -> PartitionProduceResponse {
    let response = PartitionProduceResponse::default().with_index(index);
    match result {
        Ok(appended) => {
            let response = response.with_base_offset(appended.base_offset);
            if version >= 5 {
                response.with_log_start_offset(appended.log_start_offset)
            } else {
                response
            }
        }
        Err(error) => {
            let mut response = response
                .with_error_code(errors::code(&error))
                .with_base_offset(-1);
            if version < 8 {
                return response;
            }
            if let BrokerError::InvalidRecords { records, .. } = &error {
                response.record_errors = records
                    .iter()
                    .map(|index| BatchIndexAndErrorMessage::default().with_batch_index(*index))
                    .collect();
            }
            response.with_error_message(Some(str_bytes(&errors::message(&error))))
        }
    }
}
