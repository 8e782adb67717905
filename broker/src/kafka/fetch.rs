//! Fetch: stored batches go to the socket as they are, never copied in user space.
//!
//! The `kafka-protocol` crate encodes a response into one buffer, which would copy every
//! record byte into it. So the response is encoded with a unique 16-byte sentinel in
//! place of each partition's records; the sentinels are then found in the (small)
//! encoded response, and the frame is sent as a list of buffers: the encoded bytes
//! between sentinels, each with its length prefix rewritten for the real records, and
//! the stored batches themselves. A unit test checks the result is byte for byte what
//! the crate encodes with the records inline.

use std::rc::Rc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, ProducerId, RequestHeader, ResponseKind,
};
use uuid::Uuid;

use super::codec::{self, SIZE_PREFIX_BYTES};
use super::errors;
use super::handlers::{Reply, reply};
use super::sasl::Session;
use super::topics;
use crate::error::BrokerError;
use crate::ops::{self, FetchPartition};
use crate::router::{Fetched, TopicPartition};
use crate::security::quotas::{QuotaKind, throttle_ms};
use crate::shard::Shard;

/// The first version whose records field is compact (varint length + 1).
const FLEXIBLE_VERSION: i16 = 12;
/// The first version that names topics by id.
const TOPIC_ID_VERSION: i16 = 13;
const SENTINEL_BYTES: usize = 16;

thread_local! {
    /// Random per thread, so no encoded field can equal a sentinel by accident.
    static SENTINEL_KEY: [u8; 12] = {
        let mut key = [0u8; 12];
        key.copy_from_slice(&Uuid::new_v4().as_bytes()[..12]);
        key
    };
}

fn sentinel(index: u32) -> Bytes {
    let mut bytes = BytesMut::with_capacity(SENTINEL_BYTES);
    SENTINEL_KEY.with(|key| bytes.put_slice(key));
    bytes.put_u32(index);
    bytes.freeze()
}

/// How a topic of the request is named in the response.
struct TopicSlot {
    name: Option<String>,
    id: Uuid,
    partitions: Vec<PartitionSlot>,
}

enum PartitionSlot {
    /// An index into the partitions read.
    Read(usize),
    Refused(i32, BrokerError),
}

/// `session` is held off for the fetched bytes over the client's quota;
/// `requests_throttle` is what its request quota already asked.
pub async fn fetch(
    shard: &Rc<Shard>,
    session: &Session,
    header: &RequestHeader,
    request: FetchRequest,
    requests_throttle: Duration,
) -> Reply {
    let caller = &*session.caller();
    let version = header.request_api_version;
    if request.session_id != 0 {
        // Fetch sessions are not kept: a client holding one starts over with a full
        // fetch, as it does when a Kafka broker evicts its session.
        let response =
            FetchResponse::default().with_error_code(ResponseError::FetchSessionIdNotFound.code());
        return reply(header, ApiKey::Fetch, &ResponseKind::Fetch(response), true);
    }
    let image = shard.image();
    let mut wanted = Vec::new();
    let mut slots = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = if version >= TOPIC_ID_VERSION {
            image
                .topic_by_id(topic.topic_id.as_bytes())
                .map(|t| t.name.clone())
        } else {
            Some(topic.topic.0.to_string())
        };
        let partitions = topic
            .partitions
            .into_iter()
            .map(|p| match &name {
                Some(name) => {
                    wanted.push(FetchPartition {
                        partition: TopicPartition {
                            topic: name.clone(),
                            partition: p.partition,
                        },
                        offset: p.fetch_offset,
                        max_bytes: p.partition_max_bytes,
                    });
                    PartitionSlot::Read(wanted.len() - 1)
                }
                None => PartitionSlot::Refused(
                    p.partition,
                    BrokerError::kafka(ResponseError::UnknownTopicId, "unknown topic id"),
                ),
            })
            .collect();
        slots.push(TopicSlot {
            name,
            id: topic.topic_id,
            partitions,
        });
    }
    let wait = Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0));
    let read_committed = request.isolation_level == topics::READ_COMMITTED;
    let limits = (request.min_bytes, request.max_bytes);
    let read = ops::fetch(shard, caller, wait, limits, &wanted, read_committed).await;
    let mut results: Vec<Option<_>> = read.results.into_iter().map(|(_, r)| Some(r)).collect();
    let mut records = Vec::new();
    let mut failed = false;
    let responses = slots
        .into_iter()
        .map(|slot| {
            let partitions = slot
                .partitions
                .into_iter()
                .map(|partition| {
                    let (index, result) = match partition {
                        PartitionSlot::Read(at) => (
                            wanted[at].partition.partition,
                            results[at].take().unwrap_or(Err(BrokerError::Internal(
                                "fetch result missing".into(),
                            ))),
                        ),
                        PartitionSlot::Refused(index, error) => (index, Err(error)),
                    };
                    let mut data = PartitionData::default()
                        .with_partition_index(index)
                        .with_aborted_transactions(read_committed.then(Vec::new))
                        .with_records(Some(Bytes::new()));
                    match result {
                        Ok(Fetched {
                            batches,
                            status,
                            aborted,
                        }) => {
                            if read_committed {
                                data.aborted_transactions = Some(
                                    aborted
                                        .iter()
                                        .map(|a| {
                                            AbortedTransaction::default()
                                                .with_producer_id(ProducerId(a.producer_id))
                                                .with_first_offset(a.first_offset)
                                        })
                                        .collect(),
                                );
                            }
                            data = data
                                .with_high_watermark(status.high_watermark)
                                .with_last_stable_offset(status.last_stable_offset);
                            if version >= 5 {
                                data = data.with_log_start_offset(status.log_start_offset);
                            }
                            if !batches.is_empty() {
                                data = data.with_records(Some(sentinel(records.len() as u32)));
                                records.push(batches);
                            }
                        }
                        Err(error) => {
                            failed = true;
                            data = data
                                .with_error_code(errors::code(&error))
                                .with_high_watermark(-1);
                        }
                    }
                    data
                })
                .collect();
            let response = FetchableTopicResponse::default().with_partitions(partitions);
            if version >= TOPIC_ID_VERSION {
                response.with_topic_id(slot.id)
            } else {
                response.with_topic(topics::topic_name(slot.name.as_deref().unwrap_or_default()))
            }
        })
        .collect();
    let fetched: usize = records.iter().flatten().map(Bytes::len).sum();
    let client_id = header.client_id.as_ref().map_or("", |c| c.as_str());
    let bytes_throttle = shard.throttle(QuotaKind::Fetch, caller, client_id, fetched as u64);
    session.mute.hold(bytes_throttle);
    let mut response = FetchResponse::default().with_responses(responses);
    if version >= 1 {
        response.throttle_time_ms = throttle_ms(bytes_throttle.max(requests_throttle));
    }
    match encode_with_records(header.correlation_id, version, &response, records) {
        Ok(parts) => Reply {
            parts,
            failed,
            close_after: false,
            memory: read.memory,
        },
        Err(error) => {
            tracing::error!(%error, version, "encoding a fetch response failed");
            Reply {
                parts: Vec::new(),
                failed: true,
                close_after: true,
                memory: None,
            }
        }
    }
}

/// Encodes the response with sentinels in place of records, then splices the records
/// in: see the module comment.
fn encode_with_records(
    correlation_id: i32,
    version: i16,
    response: &FetchResponse,
    records: Vec<Vec<Bytes>>,
) -> anyhow::Result<Vec<Bytes>> {
    let body = ResponseKind::Fetch(response.clone());
    let encoded = codec::encode(correlation_id, ApiKey::Fetch, version, &body)?;
    let flexible = version >= FLEXIBLE_VERSION;
    let old_prefix: &[u8] = if flexible {
        &[SENTINEL_BYTES as u8 + 1]
    } else {
        &[0, 0, 0, SENTINEL_BYTES as u8]
    };
    let mut glue = BytesMut::with_capacity(encoded.len() + records.len() * 4);
    // Where each partition's records go: an offset into `glue`.
    let mut cuts = Vec::with_capacity(records.len());
    let mut cursor = 0;
    for (index, _) in records.iter().enumerate() {
        let wanted = sentinel(index as u32);
        let found = find(&encoded[cursor..], &wanted)
            .map(|at| cursor + at)
            .filter(|at| {
                *at >= old_prefix.len() && encoded[at - old_prefix.len()..*at] == *old_prefix
            })
            .ok_or_else(|| anyhow::anyhow!("records placeholder {index} not found"))?;
        glue.put_slice(&encoded[cursor..found - old_prefix.len()]);
        let length: usize = records[index].iter().map(Bytes::len).sum();
        if flexible {
            put_unsigned_varint(&mut glue, u32::try_from(length + 1)?);
        } else {
            glue.put_i32(i32::try_from(length)?);
        }
        cuts.push(glue.len());
        cursor = found + SENTINEL_BYTES;
    }
    glue.put_slice(&encoded[cursor..]);
    let records_bytes: usize = records.iter().flatten().map(Bytes::len).sum();
    let size = i32::try_from(glue.len() - SIZE_PREFIX_BYTES + records_bytes)?;
    glue[..SIZE_PREFIX_BYTES].copy_from_slice(&size.to_be_bytes());
    let glue = glue.freeze();
    let mut parts = Vec::with_capacity(2 * cuts.len() + 1);
    let mut from = 0;
    for (cut, batches) in cuts.into_iter().zip(records) {
        parts.push(glue.slice(from..cut));
        parts.extend(batches);
        from = cut;
    }
    parts.push(glue.slice(from..));
    Ok(parts)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn put_unsigned_varint(out: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::StrBytes;

    fn response(version: i16, records: &[Option<Bytes>]) -> FetchResponse {
        let partitions = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                PartitionData::default()
                    .with_partition_index(i as i32)
                    .with_high_watermark(-2)
                    .with_records(r.clone())
            })
            .collect();
        let topic = FetchableTopicResponse::default().with_partitions(partitions);
        let topic = if version >= TOPIC_ID_VERSION {
            topic.with_topic_id(Uuid::from_u128(7))
        } else {
            topic.with_topic(TopicName(StrBytes::from_static_str("orders")))
        };
        FetchResponse::default().with_responses(vec![topic])
    }

    /// The spliced frame equals what the crate encodes with the records inline, for
    /// every version, records small and large (multi-byte varint lengths).
    #[test]
    fn spliced_frames_match_inline_encoding() {
        let big = Bytes::from(vec![7u8; 300]);
        let small = Bytes::from_static(b"batch-bytes");
        for version in 4..=16 {
            let inline = [
                Some(Bytes::from([small.clone(), big.clone()].concat())),
                Some(Bytes::new()),
                Some(big.clone()),
            ];
            let expected = codec::encode(
                42,
                ApiKey::Fetch,
                version,
                &ResponseKind::Fetch(response(version, &inline)),
            )
            .unwrap();
            let placeholders = [Some(sentinel(0)), Some(Bytes::new()), Some(sentinel(1))];
            let parts = encode_with_records(
                42,
                version,
                &response(version, &placeholders),
                vec![vec![small.clone(), big.clone()], vec![big.clone()]],
            )
            .unwrap();
            assert_eq!(parts.concat(), expected.to_vec(), "version {version}");
        }
    }
}
