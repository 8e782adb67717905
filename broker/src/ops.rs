//! The broker's operations, whatever the protocol: both front doors (native and Kafka)
//! decode a request, call these, and encode what they return.
//!
//! Per-partition work goes to the partition's owning shard; these functions fan it out
//! and gather the answers in request order.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use weir_wire::native::schema::{Acks, OffsetSpec};

use crate::error::{BrokerError, BrokerResult};
use crate::group::GroupState;
use crate::metadata::OFFSETS_TOPIC;
use crate::net::MemoryPermit;
use crate::offsets;
use crate::router::{
    Committed, Fetched, GroupAnswer, GroupCall, MemberClaim, OffsetCommit, PartitionStatus,
    Pending, ShardAnswer, ShardCall, TopicPartition,
};
use crate::security::Caller;
use crate::shard::{ReplicaFetched, Shard};
use crate::topic;
use crate::txn::coordinator::TXN_TOPIC;
use weir_replication::{AclOperation, AclResourceType};
use weir_storage::ReadLimit;

/// The longest a fetch may wait for data, whatever it asks for.
pub const FETCH_WAIT_MAX: Duration = Duration::from_secs(30);

/// A timestamp lookup for this asks for the first record with the largest timestamp
/// (Kafka's ListOffsets -3, KIP-734); over the native protocol too, which has no other
/// use for negative timestamps.
pub const MAX_TIMESTAMP: i64 = -3;

pub fn unexpected(answer: ShardAnswer) -> BrokerError {
    BrokerError::Internal(format!("unexpected shard answer {answer:?}"))
}

/// Where a produce request's appends landed: the first batch's base offset and the log
/// start offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: i64,
    pub log_start_offset: i64,
}

/// Who produces: the caller, and the transactional id it names (Kafka's Produce carries
/// it; a transactional batch needs WRITE on it, with the authorizer on).
#[derive(Debug, Clone, Copy)]
pub struct Producing<'a> {
    pub caller: &'a Caller,
    pub transactional_id: Option<&'a str>,
}

impl Producing<'_> {
    /// Kafka's rule: transactional batches are taken only with a transactional id the
    /// caller may WRITE (else any producer could write into another's transaction).
    fn may_write_transactions(&self, shard: &Shard, batches: &[BytesMut]) -> BrokerResult<()> {
        if !shard.authorizer.enabled() {
            return Ok(());
        }
        let transactional = batches.iter().any(|b| {
            weir_wire::batch::BatchHeader::parse(b).is_ok_and(|h| h.attributes.is_transactional())
        });
        if !transactional {
            return Ok(());
        }
        match self.transactional_id {
            Some(id) => may_txn(shard, self.caller, id),
            None => Err(BrokerError::kafka(
                kafka_protocol::ResponseError::TransactionalIdAuthorizationFailed,
                "transactional batches need the producer's transactional id",
            )),
        }
    }
}

/// A produce request's appends, started at their owners in request order.
pub type StartedProduce = Vec<(TopicPartition, BrokerResult<Pending>)>;

/// Starts each partition's appends in request order (local appends are spawned in order;
/// remote ones are queued at their owner in order). `batches` holds each partition's
/// record batches, already split.
pub async fn start_produce(
    shard: &Rc<Shard>,
    producer: Producing<'_>,
    partitions: Vec<(TopicPartition, BrokerResult<Vec<BytesMut>>)>,
    acks: Acks,
) -> StartedProduce {
    let mut started = Vec::with_capacity(partitions.len());
    for (partition, batches) in partitions {
        let pending = async {
            may_topic(
                shard,
                producer.caller,
                AclOperation::Write,
                &partition.topic,
            )?;
            let batches = batches?;
            producer.may_write_transactions(shard, &batches)?;
            let owner = shard.owner(&partition)?;
            let call = ShardCall::Produce {
                partition: partition.clone(),
                batches,
                acks,
            };
            shard.router.start(shard, owner, call).await
        }
        .await;
        started.push((partition, pending));
    }
    started
}

/// Splits a partition's record bytes into batches (no copy).
pub fn split_batches(shard: &Shard, mut records: BytesMut) -> BrokerResult<Vec<BytesMut>> {
    let ranges = weir_wire::batch::split_batches(&records, shard.config.frame_bytes_max)?;
    let mut batches = Vec::with_capacity(ranges.len());
    for range in ranges {
        batches.push(records.split_to(range.len()));
    }
    Ok(batches)
}

/// Awaits each partition's appends.
pub async fn finish_produce(
    started: StartedProduce,
) -> Vec<(TopicPartition, BrokerResult<Appended>)> {
    let mut results = Vec::with_capacity(started.len());
    for (partition, pending) in started {
        let result = match pending {
            Ok(pending) => match pending.wait().await {
                Ok(ShardAnswer::Produce(result)) => result.map(|(base, start)| Appended {
                    base_offset: base,
                    log_start_offset: start,
                }),
                Ok(other) => Err(unexpected(other)),
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        if let Err(error) = &result {
            tracing::debug!(%partition, %error, "produce failed");
        }
        results.push((partition, result));
    }
    results
}

/// Starts `call` for each partition at its owner, then awaits every answer.
pub async fn fan_out<T>(
    shard: &Rc<Shard>,
    partitions: Vec<TopicPartition>,
    call: impl Fn(TopicPartition) -> ShardCall,
    answer: impl Fn(ShardAnswer) -> BrokerResult<T>,
) -> Vec<(TopicPartition, BrokerResult<T>)> {
    let calls = partitions
        .iter()
        .map(|p| (p.clone(), call(p.clone())))
        .collect();
    let results = call_each(shard, calls, answer).await;
    partitions.into_iter().zip(results).collect()
}

/// The partitions of `names` that exist, in order.
pub fn partitions_of(shard: &Shard, names: &[String]) -> Vec<TopicPartition> {
    let image = shard.image();
    names
        .iter()
        .filter_map(|name| image.topic(name))
        .flat_map(|t| {
            (0..t.partition_count()).map(|p| TopicPartition {
                topic: t.name.clone(),
                partition: p,
            })
        })
        .collect()
}

pub async fn partition_statuses(
    shard: &Rc<Shard>,
    partitions: Vec<TopicPartition>,
) -> Vec<(TopicPartition, BrokerResult<PartitionStatus>)> {
    fan_out(
        shard,
        partitions,
        |partition| ShardCall::PartitionStatus { partition },
        |answer| match answer {
            ShardAnswer::PartitionStatus(result) => result,
            other => Err(unexpected(other)),
        },
    )
    .await
}

/// A partition's part of a fetch request.
#[derive(Debug, Clone)]
pub struct FetchPartition {
    pub partition: TopicPartition,
    pub offset: i64,
    pub max_bytes: i32,
}

/// Each partition's batches and status, or its error.
pub type FetchResults = Vec<(TopicPartition, BrokerResult<Fetched>)>;

/// What a fetch read: each partition's answer, and the shard memory its batches hold
/// until the response is written (none when nothing was read).
#[derive(Debug)]
pub struct FetchRead {
    pub results: FetchResults,
    pub memory: Option<MemoryPermit>,
}

/// Reads each partition at its owner, within `max_bytes` for the whole response (and the
/// broker's `fetch_bytes_max`); if fewer than `min_bytes` came back, waits for any of
/// them to get new data (or `max_wait`) and reads again.
/// Under `read_committed` only what is below each partition's last stable offset is read,
/// with the aborted transactions among it.
pub async fn fetch(
    shard: &Rc<Shard>,
    caller: &Caller,
    max_wait: Duration,
    (min_bytes, max_bytes): (i32, i32),
    partitions: &[FetchPartition],
    read_committed: bool,
) -> FetchRead {
    let limits = FetchLimits {
        max_wait,
        min_bytes: min_bytes.max(0) as usize,
        max_bytes: (max_bytes.max(0) as usize).min(shard.config.fetch_bytes_max),
    };
    // Partitions the caller may not read are answered at once and left out of the wait
    // (which an error would otherwise end early, every time).
    let may_read =
        |p: &FetchPartition| may_topic(shard, caller, AclOperation::Read, &p.partition.topic);
    if !shard.authorizer.enabled() || partitions.iter().all(|p| may_read(p).is_ok()) {
        return fetch_allowed(shard, limits, partitions, read_committed).await;
    }
    let refused: Vec<Option<BrokerError>> = partitions.iter().map(|p| may_read(p).err()).collect();
    let allowed: Vec<FetchPartition> = partitions
        .iter()
        .zip(&refused)
        .filter(|(_, r)| r.is_none())
        .map(|(p, _)| p.clone())
        .collect();
    // Nothing to read: the refusals are the whole answer, now.
    let FetchRead { results, memory } = if allowed.is_empty() {
        FetchRead {
            results: Vec::new(),
            memory: None,
        }
    } else {
        fetch_allowed(shard, limits, &allowed, read_committed).await
    };
    let mut read = results.into_iter();
    let results = partitions
        .iter()
        .zip(refused)
        .map(|(p, refusal)| match refusal {
            Some(error) => (p.partition.clone(), Err(error)),
            None => read.next().unwrap_or_else(|| {
                let missing = BrokerError::Internal("a fetch result is missing".into());
                (p.partition.clone(), Err(missing))
            }),
        })
        .collect();
    FetchRead { results, memory }
}

#[derive(Debug, Clone, Copy)]
struct FetchLimits {
    max_wait: Duration,
    min_bytes: usize,
    /// For the whole response.
    max_bytes: usize,
}

async fn fetch_allowed(
    shard: &Rc<Shard>,
    limits: FetchLimits,
    partitions: &[FetchPartition],
    read_committed: bool,
) -> FetchRead {
    let deadline = Instant::now() + limits.max_wait.min(FETCH_WAIT_MAX);
    loop {
        // Held while reading, cut to what was read, and let go while waiting: a long
        // poll holds no memory.
        let tps = partitions.iter().map(|p| &p.partition);
        let mut memory = match reserve_fetch(shard, limits.max_bytes, tps).await {
            Ok(memory) => memory,
            Err(results) => {
                return FetchRead {
                    results,
                    memory: None,
                };
            }
        };
        let mut results =
            read_partitions(shard, partitions, limits.max_bytes, read_committed).await;
        limit_response_bytes(&mut results, limits.max_bytes);
        let total: usize = results
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .flat_map(|f| &f.batches)
            .map(Bytes::len)
            .sum();
        // Only a first batch larger than the whole limit reads past it (bounded by the
        // topic's max.message.bytes).
        memory.settle(total as u64);
        let any_error = results.iter().any(|(_, r)| r.is_err());
        let remaining = deadline.checked_duration_since(Instant::now());
        if total >= limits.min_bytes || any_error || remaining.is_none() || shard.shutting_down() {
            return FetchRead {
                results,
                memory: Some(memory),
            };
        }
        drop(memory);
        let watched: Vec<(TopicPartition, i64)> = partitions
            .iter()
            .map(|p| (p.partition.clone(), p.offset))
            .collect();
        let wait = Watching {
            to_log_end: false,
            read_committed,
        };
        wait_for_data(shard, watched, remaining.unwrap_or_default(), wait).await;
    }
}

/// Reserves a fetch's limit of the shard's memory; when the budget cannot be had (the
/// shard is stopping), the answer for every partition is why.
async fn reserve_fetch<'a, T>(
    shard: &Rc<Shard>,
    limit: usize,
    partitions: impl Iterator<Item = &'a TopicPartition>,
) -> Result<MemoryPermit, Vec<(TopicPartition, BrokerResult<T>)>> {
    MemoryPermit::reserve(shard, limit as u64)
        .await
        .map_err(|reason| {
            partitions
                .map(|tp| (tp.clone(), Err(BrokerError::Internal(reason.clone()))))
                .collect()
        })
}

/// Reads each partition at its owner within `limit` bytes for all of them.
///
/// Partitions are read in waves, a wave's reads all at once, their limits (each its
/// partition's own, cut to what is left) adding up to at most what is left of `limit`,
/// so that what a fetch of many partitions allocates stays within its limit (reading
/// every partition up to its own limit at once would not). Reads return whole batches
/// and never more than their limit, except the first partition read, whose first batch
/// comes whole however large, so a consumer whose limit is below a batch progresses (as
/// in Kafka); partitions left no room are read for their status alone. Were nothing
/// read while some partition held a batch too large for its share, that partition is
/// read again as the first.
async fn read_partitions(
    shard: &Rc<Shard>,
    partitions: &[FetchPartition],
    limit: usize,
    read_committed: bool,
) -> FetchResults {
    let reads: Vec<(i64, usize)> = partitions
        .iter()
        .map(|p| (p.offset, p.max_bytes.max(0) as usize))
        .collect();
    let read = |wave| read_wave(shard, partitions, wave, read_committed);
    let withheld =
        |f: &Fetched, offset: i64| f.batches.is_empty() && offset < readable_end(f, read_committed);
    let results = read_in_waves(&reads, limit, read, |f| batches_bytes(&f.batches), withheld).await;
    partitions
        .iter()
        .map(|p| p.partition.clone())
        .zip(results)
        .collect()
}

/// Reads partitions (`reads`: each one's offset and own limit) in waves within `limit`
/// for all of them, through `read`, which reads a wave's partitions at once, each within
/// its `ReadLimit`; answers in the order of `reads`. `bytes` is what an answer carries;
/// `withheld` whether it left out data at the offset (a first batch that did not fit).
async fn read_in_waves<T, Wave, Read>(
    reads: &[(i64, usize)],
    limit: usize,
    read: Read,
    bytes: impl Fn(&T) -> usize,
    withheld: impl Fn(&T, i64) -> bool,
) -> Vec<BrokerResult<T>>
where
    Read: Fn(Vec<(usize, ReadLimit)>) -> Wave,
    Wave: Future<Output = Vec<BrokerResult<T>>>,
{
    let mut results: Vec<Option<BrokerResult<T>>> = reads.iter().map(|_| None).collect();
    let own: Vec<usize> = reads.iter().map(|(_, own)| *own).collect();
    let mut left = limit;
    let mut next = 0;
    let mut read_any = false;
    while next < reads.len() {
        let wave = fetch_wave(&own, next, left, !read_any && next == 0);
        next += wave.len();
        let indexes: Vec<usize> = wave.iter().map(|(index, _)| *index).collect();
        for (index, result) in indexes.into_iter().zip(read(wave).await) {
            let carried = result.as_ref().map_or(0, &bytes);
            read_any |= carried > 0;
            left = left.saturating_sub(carried);
            results[index] = Some(result);
        }
    }
    if !read_any {
        let too_large = results.iter().zip(reads).position(
            |(result, (offset, _))| matches!(result, Some(Ok(answer)) if withheld(answer, *offset)),
        );
        if let Some(index) = too_large {
            let wave = vec![(index, ReadLimit::at_least_one(own[index].min(limit)))];
            if let Some(result) = read(wave).await.pop() {
                results[index] = Some(result);
            }
        }
    }
    results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| Err(BrokerError::Internal("a fetch result is missing".into())))
        })
        .collect()
}

/// The partitions from `from` on that one wave reads (`own`: each one's own limit), with
/// their read limits: while their limits leave some of `left`; once nothing is left, all
/// the rest, for their status.
fn fetch_wave(own: &[usize], from: usize, left: usize, first: bool) -> Vec<(usize, ReadLimit)> {
    let mut wave = Vec::new();
    let mut claimed = 0usize;
    for (index, &own) in own.iter().enumerate().skip(from) {
        if left > 0 && claimed >= left {
            break;
        }
        let max_bytes = own.min(left - claimed);
        let at_least_one = first && wave.is_empty() && left > 0;
        claimed += max_bytes;
        wave.push((
            index,
            ReadLimit {
                max_bytes,
                at_least_one,
            },
        ));
    }
    wave
}

async fn read_wave(
    shard: &Rc<Shard>,
    partitions: &[FetchPartition],
    wave: Vec<(usize, ReadLimit)>,
    read_committed: bool,
) -> Vec<BrokerResult<Fetched>> {
    let calls = wave
        .into_iter()
        .map(|(index, limit)| {
            let p = &partitions[index];
            let call = ShardCall::Fetch {
                partition: p.partition.clone(),
                offset: p.offset,
                limit,
                read_committed,
            };
            (p.partition.clone(), call)
        })
        .collect();
    call_each(shard, calls, |answer| match answer {
        ShardAnswer::Fetch(result) => result,
        other => Err(unexpected(other)),
    })
    .await
}

/// Starts every call at its partition's owner, then waits for each answer, in order.
async fn call_each<T>(
    shard: &Rc<Shard>,
    calls: Vec<(TopicPartition, ShardCall)>,
    answer: impl Fn(ShardAnswer) -> BrokerResult<T>,
) -> Vec<BrokerResult<T>> {
    let mut pending = Vec::with_capacity(calls.len());
    for (partition, call) in calls {
        let started = match shard.owner(&partition) {
            Ok(owner) => shard.router.start(shard, owner, call).await,
            Err(error) => Err(error),
        };
        pending.push(started);
    }
    let mut results = Vec::with_capacity(pending.len());
    for started in pending {
        let result = match started {
            Ok(pending) => pending.wait().await.and_then(&answer),
            Err(error) => Err(error),
        };
        results.push(result);
    }
    results
}

fn batches_bytes(batches: &[Bytes]) -> usize {
    batches.iter().map(Bytes::len).sum()
}

/// Where what a consumer may read of the partition ends.
fn readable_end(fetched: &Fetched, read_committed: bool) -> i64 {
    if read_committed {
        fetched.status.last_stable_offset
    } else {
        fetched.status.high_watermark
    }
}

/// What data counts for a wait: below the log end (a follower's), the high watermark, or
/// the last stable offset (read_committed).
#[derive(Debug, Clone, Copy)]
struct Watching {
    to_log_end: bool,
    read_committed: bool,
}

/// Waits until a shard owning one of the partitions reports new data, or the timeout.
async fn wait_for_data(
    shard: &Rc<Shard>,
    partitions: Vec<(TopicPartition, i64)>,
    timeout: Duration,
    watching: Watching,
) {
    let mut by_owner: BTreeMap<usize, Vec<(TopicPartition, i64)>> = BTreeMap::new();
    for (tp, offset) in partitions {
        if let Ok(owner) = shard.owner(&tp) {
            by_owner.entry(owner).or_default().push((tp, offset));
        }
    }
    let mut waits: Vec<Pin<Box<dyn Future<Output = ()>>>> = Vec::new();
    for (owner, partitions) in by_owner {
        let call = ShardCall::Watch {
            partitions,
            timeout,
            to_log_end: watching.to_log_end,
            read_committed: watching.read_committed,
        };
        if let Ok(pending) = shard.router.start(shard, owner, call).await {
            waits.push(Box::pin(async move {
                let _ = pending.wait().await;
            }));
        }
    }
    // With nothing to watch (an empty fetch, as a consumer whose partitions are all
    // paused sends) the wait is the whole timeout, as Kafka's is, not a busy loop.
    let any = futures_lite::future::poll_fn(|cx| {
        if waits.iter_mut().any(|w| w.as_mut().poll(cx).is_ready()) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    });
    futures_lite::future::or(any, glommio::timer::sleep(timeout)).await;
}

/// Each partition's answer to a follower's fetch.
pub type ReplicaFetchResults = Vec<(TopicPartition, BrokerResult<ReplicaFetched>)>;

/// What a follower's fetch read, and the shard memory its batches hold until the
/// response is written.
#[derive(Debug)]
pub struct ReplicaFetchRead {
    pub results: ReplicaFetchResults,
    pub memory: Option<MemoryPermit>,
}

/// A follower's fetch: each partition at its owner (which moves the high watermark with
/// the follower's offset at once), read in waves within `max_bytes` (at most the
/// broker's `fetch_bytes_max`) and the memory it reserves as a consumer's fetch is; if
/// nothing came back and nothing needs the follower's attention (a divergence, an
/// error), waits for an append to any of them, up to `wait`, and reads again. Every
/// partition is asked each round, those the limit leaves no room for with a limit of
/// nothing, so each follower position still moves its high watermark.
pub async fn replica_fetch(
    shard: &Rc<Shard>,
    replica: i32,
    wait: Duration,
    min_bytes: i32,
    max_bytes: i32,
    partitions: &[(TopicPartition, weir_replication::FetchPosition, i32)],
) -> ReplicaFetchRead {
    let deadline = Instant::now() + wait.min(FETCH_WAIT_MAX);
    let limit = (max_bytes.max(1) as usize).min(shard.config.fetch_bytes_max);
    let reads: Vec<(i64, usize)> = partitions
        .iter()
        .map(|(_, position, bytes)| (position.fetch_offset, (*bytes).max(0) as usize))
        .collect();
    loop {
        let tps = partitions.iter().map(|(tp, _, _)| tp);
        let mut memory = match reserve_fetch(shard, limit, tps).await {
            Ok(memory) => memory,
            Err(results) => {
                return ReplicaFetchRead {
                    results,
                    memory: None,
                };
            }
        };
        let read = |wave: Vec<(usize, ReadLimit)>| {
            let calls: Vec<(TopicPartition, ShardCall)> = wave
                .into_iter()
                .map(|(index, limit)| {
                    let (partition, position, _) = &partitions[index];
                    let call = ShardCall::ReplicaFetch {
                        partition: partition.clone(),
                        replica,
                        position: *position,
                        limit,
                    };
                    (partition.clone(), call)
                })
                .collect();
            call_each(shard, calls, |answer| match answer {
                ShardAnswer::ReplicaFetch(result) => result,
                other => Err(unexpected(other)),
            })
        };
        let withheld = |f: &ReplicaFetched, offset: i64| {
            f.batches.is_empty() && f.diverging.is_none() && offset < f.log_end_offset
        };
        let results =
            read_in_waves(&reads, limit, read, |f| batches_bytes(&f.batches), withheld).await;
        let results: ReplicaFetchResults = partitions
            .iter()
            .map(|(tp, _, _)| tp.clone())
            .zip(results)
            .collect();
        let total: usize = results
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .map(|f| batches_bytes(&f.batches))
            .sum();
        memory.settle(total as u64);
        let attention = results
            .iter()
            .any(|(_, r)| r.as_ref().map_or(true, |f| f.diverging.is_some()));
        let remaining = deadline.checked_duration_since(Instant::now());
        if total >= min_bytes.max(1) as usize
            || attention
            || remaining.is_none()
            || shard.shutting_down()
        {
            return ReplicaFetchRead {
                results,
                memory: Some(memory),
            };
        }
        drop(memory);
        let watched = partitions
            .iter()
            .map(|(tp, position, _)| (tp.clone(), position.fetch_offset))
            .collect();
        let wait = Watching {
            to_log_end: true,
            read_committed: false,
        };
        wait_for_data(shard, watched, remaining.unwrap_or_default(), wait).await;
    }
}

/// Trims fetched batches to a response's byte limit. The limit is soft: the first
/// partition with data is always included whole, so a consumer makes progress; a later
/// partition that does not fit gets no batches.
fn limit_response_bytes(results: &mut FetchResults, max_bytes: usize) {
    let mut budget = max_bytes;
    let mut first = true;
    for (_, result) in results.iter_mut() {
        let Ok(Fetched { batches, .. }) = result else {
            continue;
        };
        let bytes: usize = batches.iter().map(Bytes::len).sum();
        if !first && bytes > budget {
            batches.clear();
        }
        let taken: usize = batches.iter().map(Bytes::len).sum();
        first &= taken == 0;
        budget = budget.saturating_sub(taken);
    }
}

/// `(offset, timestamp)` per partition; `(-1, -1)` when a timestamp lookup finds nothing.
/// Under `read_committed`, the latest offset is the last stable offset.
pub async fn list_offsets(
    shard: &Rc<Shard>,
    caller: &Caller,
    partitions: Vec<(TopicPartition, OffsetSpec, i64)>,
    read_committed: bool,
) -> Vec<(TopicPartition, BrokerResult<(i64, i64)>)> {
    if !shard.authorizer.enabled() {
        return list_offsets_allowed(shard, partitions, read_committed).await;
    }
    let (partitions, refused) = split_refused(partitions, |(tp, _, _)| {
        may_topic(shard, caller, AclOperation::Describe, &tp.topic)
    });
    let refused = refused.into_iter().map(|((tp, _, _), e)| (tp, Err(e)));
    let mut results = list_offsets_allowed(shard, partitions, read_committed).await;
    results.extend(refused);
    results
}

async fn list_offsets_allowed(
    shard: &Rc<Shard>,
    partitions: Vec<(TopicPartition, OffsetSpec, i64)>,
    read_committed: bool,
) -> Vec<(TopicPartition, BrokerResult<(i64, i64)>)> {
    let specs: HashMap<TopicPartition, (OffsetSpec, i64)> = partitions
        .iter()
        .map(|(tp, spec, ts)| (tp.clone(), (*spec, *ts)))
        .collect();
    fan_out(
        shard,
        partitions.into_iter().map(|(tp, _, _)| tp).collect(),
        |partition| {
            let (spec, timestamp) = specs
                .get(&partition)
                .copied()
                .unwrap_or((OffsetSpec::Latest, -1));
            ShardCall::ListOffsets {
                partition,
                spec,
                timestamp,
                read_committed,
            }
        },
        |answer| match answer {
            ShardAnswer::ListOffsets(result) => result,
            other => Err(unexpected(other)),
        },
    )
    .await
}

/// Runs an admin call on the controller (shard 0).
pub async fn admin(shard: &Rc<Shard>, call: ShardCall) -> BrokerResult<()> {
    match shard.router.call(shard, 0, call).await? {
        ShardAnswer::Admin(result) => result,
        other => Err(unexpected(other)),
    }
}

/// Every config of a topic with its value and source (`topic::describe`).
pub fn describe_topic_configs(
    shard: &Shard,
    name: &str,
) -> BrokerResult<Vec<topic::DescribedConfig>> {
    let image = shard.image();
    let topic = image
        .topic(name)
        .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
    topic::describe(&shard.topic_defaults, &topic.configs).map_err(BrokerError::InvalidConfig)
}

/// Applies `changes` to a topic's overrides, each key at most once, checks the result as
/// a whole and, unless `validate_only`, records it in the metadata log through the
/// controller (which checks it again against the image it changes). Internal topics are
/// refused, also when only validating.
pub async fn alter_topic_configs(
    shard: &Rc<Shard>,
    name: &str,
    changes: &[(&str, topic::ConfigChange<'_>)],
    validate_only: bool,
) -> BrokerResult<()> {
    let mut configs = alterable_topic(shard, name)?.configs.clone();
    for (index, (key, change)) in changes.iter().enumerate() {
        if changes[..index].iter().any(|(earlier, _)| earlier == key) {
            return Err(BrokerError::InvalidRequest(format!(
                "config {key} is named more than once"
            )));
        }
        topic::change_overrides(&mut configs, &shard.topic_defaults, key, *change)
            .map_err(BrokerError::InvalidConfig)?;
    }
    set_topic_overrides(shard, name, configs, validate_only).await
}

/// Replaces a topic's overrides with `configs`, checked as a whole; applied (recorded in
/// the metadata log through the controller) unless `validate_only`.
pub async fn set_topic_overrides(
    shard: &Rc<Shard>,
    name: &str,
    configs: std::collections::BTreeMap<String, String>,
    validate_only: bool,
) -> BrokerResult<()> {
    alterable_topic(shard, name)?;
    topic::topic_config(&shard.topic_defaults, &configs).map_err(BrokerError::InvalidConfig)?;
    if validate_only {
        return Ok(());
    }
    let call = ShardCall::AlterTopicConfigs {
        name: name.to_string(),
        configs: configs.into_iter().collect(),
    };
    admin(shard, call).await
}

/// The topic, if it exists and is not internal (internal topics keep weir's configs).
fn alterable_topic(
    shard: &Shard,
    name: &str,
) -> BrokerResult<std::sync::Arc<crate::metadata::TopicImage>> {
    let image = shard.image();
    let topic = image
        .topic(name)
        .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
    if topic.internal {
        return Err(BrokerError::InvalidTopic(format!("{name} is internal")));
    }
    Ok(topic.clone())
}

/// The shard holding `group`'s committed offsets (and, for the Kafka protocol, its
/// coordinator).
pub fn group_owner(shard: &Shard, group: &str) -> BrokerResult<usize> {
    offsets::validate_group(group)?;
    internal_owner(shard, OFFSETS_TOPIC, group)
}

/// The shard of this broker leading `key`'s partition of an internal topic (keys spread
/// over its partitions by `offsets::partition_for`).
fn internal_owner(shard: &Shard, topic: &str, key: &str) -> BrokerResult<usize> {
    let image = shard.image();
    let topic = image
        .topic(topic)
        .ok_or_else(|| BrokerError::NotCoordinator(key.to_string()))?;
    let partition = offsets::partition_for(key, topic.partition_count());
    let state = topic
        .partition(partition)
        .ok_or_else(|| BrokerError::Internal(format!("{} partition missing", topic.name)))?;
    match state.replica(shard.node) {
        Some(replica) if state.leader == shard.node => Ok(replica.shard as usize),
        _ => Err(BrokerError::NotCoordinator(key.to_string())),
    }
}

/// The broker coordinating `group` (the leader of its offsets partition), if any.
pub fn group_coordinator(shard: &Shard, group: &str) -> Option<crate::metadata::BrokerImage> {
    internal_leader(shard, OFFSETS_TOPIC, group)
}

/// The broker coordinating the transactions of `transactional_id` (the leader of its
/// `__transaction_state` partition), if any.
pub fn txn_coordinator(
    shard: &Shard,
    transactional_id: &str,
) -> Option<crate::metadata::BrokerImage> {
    internal_leader(shard, TXN_TOPIC, transactional_id)
}

fn internal_leader(shard: &Shard, topic: &str, key: &str) -> Option<crate::metadata::BrokerImage> {
    let image = shard.image();
    let topic = image.topic(topic)?;
    let state = topic.partition(offsets::partition_for(key, topic.partition_count()))?;
    image.broker(state.leader).filter(|b| !b.fenced).cloned()
}

/// A request for the transaction coordinator of `transactional_id`, on this broker.
pub async fn txn_call(
    shard: &Rc<Shard>,
    transactional_id: &str,
    call: crate::txn::TxnCall,
) -> BrokerResult<crate::txn::TxnAnswer> {
    crate::txn::coordinator::validate_id(transactional_id)?;
    let owner = internal_owner(shard, TXN_TOPIC, transactional_id)?;
    match shard
        .router
        .call(shard, owner, ShardCall::Txn(call))
        .await?
    {
        ShardAnswer::Txn(answer) => Ok(answer),
        other => Err(unexpected(other)),
    }
}

/// InitProducerId, whatever the protocol: with a transactional id, at its coordinator
/// (which fences older producers of the id); without, a new producer id for an
/// idempotent producer, or (a producer that hit a sequence error says which id it had)
/// the same id with its epoch bumped.
pub async fn init_producer(
    shard: &Rc<Shard>,
    caller: &Caller,
    transactional_id: Option<String>,
    timeout_ms: i32,
    current: Option<(i64, i16)>,
) -> BrokerResult<(i64, i16)> {
    match &transactional_id {
        Some(id) => may_txn(shard, caller, id)?,
        // Kafka's rule since 3.0 (KIP-679): IDEMPOTENT_WRITE on the cluster, or WRITE on
        // some topic.
        None if !shard.authorizer.allows_some(
            caller,
            AclOperation::Write,
            AclResourceType::Topic,
        ) =>
        {
            shard
                .authorizer
                .check_cluster(caller, AclOperation::IdempotentWrite)?
        }
        None => {}
    }
    match (transactional_id, current) {
        (Some(transactional_id), current) => {
            let call = crate::txn::TxnCall::InitProducerId {
                transactional_id: transactional_id.clone(),
                timeout_ms,
                expected: current,
            };
            match txn_call(shard, &transactional_id, call).await? {
                crate::txn::TxnAnswer::Producer(result) => result,
                other => Err(BrokerError::Internal(format!(
                    "the coordinator answered {other:?}"
                ))),
            }
        }
        (None, Some((id, epoch))) if (0..i16::MAX - 1).contains(&epoch) => Ok((id, epoch + 1)),
        (None, _) => shard.new_producer_id().await.map(|id| (id, 0)),
    }
}

/// A transaction coordinator request that answers only success or failure.
pub async fn txn_done(
    shard: &Rc<Shard>,
    transactional_id: &str,
    call: crate::txn::TxnCall,
) -> BrokerResult<()> {
    match txn_call(shard, transactional_id, call).await? {
        crate::txn::TxnAnswer::Done(result) => result,
        other => Err(BrokerError::Internal(format!(
            "the coordinator answered {other:?}"
        ))),
    }
}

/// AddPartitionsToTxn: the partitions join the producer's transaction. A partition of
/// an unknown (or internal) topic fails the whole request: it is answered
/// UNKNOWN_TOPIC_OR_PARTITION and the others OPERATION_NOT_ATTEMPTED, as Kafka answers.
pub async fn add_partitions_to_txn(
    shard: &Rc<Shard>,
    caller: &Caller,
    transactional_id: String,
    producer: (i64, i16),
    partitions: Vec<TopicPartition>,
) -> Vec<(TopicPartition, BrokerResult<()>)> {
    if let Err(error) = may_txn(shard, caller, &transactional_id) {
        return all_refused(partitions, &error);
    }
    // A partition the caller may not write fails the request as an unknown one does.
    let may_write = |tp: &TopicPartition| may_topic(shard, caller, AclOperation::Write, &tp.topic);
    if shard.authorizer.enabled() && partitions.iter().any(|tp| may_write(tp).is_err()) {
        let refused: Vec<Option<BrokerError>> =
            partitions.iter().map(|tp| may_write(tp).err()).collect();
        return partitions
            .into_iter()
            .zip(refused)
            .map(|(tp, refusal)| {
                let error = refusal.unwrap_or_else(|| {
                    BrokerError::kafka(
                        kafka_protocol::ResponseError::OperationNotAttempted,
                        "another partition of the request is not allowed",
                    )
                });
                (tp, Err(error))
            })
            .collect();
    }
    let image = shard.image();
    let exists = |tp: &TopicPartition| {
        // Internal topics join a transaction only through AddOffsetsToTxn.
        image
            .topic(&tp.topic)
            .filter(|t| !t.internal)
            .is_some_and(|t| (0..t.partition_count()).contains(&tp.partition))
    };
    if !partitions.iter().all(exists) {
        return partitions
            .into_iter()
            .map(|tp| {
                let error = if exists(&tp) {
                    BrokerError::kafka(
                        kafka_protocol::ResponseError::OperationNotAttempted,
                        "another partition of the request is unknown",
                    )
                } else {
                    BrokerError::UnknownTopicOrPartition {
                        topic: tp.topic.clone(),
                        partition: tp.partition,
                    }
                };
                (tp, Err(error))
            })
            .collect();
    }
    let call = crate::txn::TxnCall::AddPartitions {
        transactional_id: transactional_id.clone(),
        producer_id: producer.0,
        producer_epoch: producer.1,
        partitions: partitions.clone(),
    };
    let result = txn_done(shard, &transactional_id, call).await;
    partitions
        .into_iter()
        .map(|tp| (tp, result.as_ref().map(|_| ()).map_err(BrokerError::same)))
        .collect()
}

/// AddOffsetsToTxn: the offsets partition of `group` joins the producer's transaction.
pub async fn add_offsets_to_txn(
    shard: &Rc<Shard>,
    caller: &Caller,
    transactional_id: String,
    producer: (i64, i16),
    group: String,
) -> BrokerResult<()> {
    may_txn(shard, caller, &transactional_id)?;
    may_group(shard, caller, AclOperation::Read, &group)?;
    crate::offsets::validate_group(&group)?;
    let call = crate::txn::TxnCall::AddOffsets {
        transactional_id: transactional_id.clone(),
        producer_id: producer.0,
        producer_epoch: producer.1,
        group,
    };
    txn_done(shard, &transactional_id, call).await
}

/// EndTxn: commits or aborts the producer's transaction.
pub async fn end_txn(
    shard: &Rc<Shard>,
    caller: &Caller,
    transactional_id: String,
    producer: (i64, i16),
    commit: bool,
) -> BrokerResult<()> {
    may_txn(shard, caller, &transactional_id)?;
    let call = crate::txn::TxnCall::End {
        transactional_id: transactional_id.clone(),
        producer_id: producer.0,
        producer_epoch: producer.1,
        commit,
    };
    let result = txn_done(shard, &transactional_id, call).await;
    if let Err(error) = &result {
        tracing::debug!(%error, transactional_id, "EndTxn refused");
    }
    result
}

/// Commits offsets for `group`. Offsets of unknown partitions, and negative offsets, are
/// refused one by one; the rest are committed together.
pub async fn commit_offsets(
    shard: &Rc<Shard>,
    caller: &Caller,
    group: String,
    member: MemberClaim,
    offsets: Vec<OffsetCommit>,
) -> BrokerResult<Vec<(TopicPartition, BrokerResult<()>)>> {
    commit_offsets_with(shard, caller, group, offsets, |group, offsets| {
        ShardCall::CommitOffsets {
            group,
            member,
            offsets,
        }
    })
    .await
}

/// TxnOffsetCommit: like `commit_offsets`, but the offsets take effect when the
/// producer's transaction commits.
pub async fn txn_commit_offsets(
    shard: &Rc<Shard>,
    caller: &Caller,
    group: String,
    producer: (i64, i16),
    member: Option<MemberClaim>,
    offsets: Vec<OffsetCommit>,
) -> BrokerResult<Vec<(TopicPartition, BrokerResult<()>)>> {
    commit_offsets_with(shard, caller, group, offsets, |group, offsets| {
        ShardCall::TxnCommitOffsets {
            group,
            producer_id: producer.0,
            producer_epoch: producer.1,
            member,
            offsets,
        }
    })
    .await
}

async fn commit_offsets_with(
    shard: &Rc<Shard>,
    caller: &Caller,
    group: String,
    offsets: Vec<OffsetCommit>,
    call: impl FnOnce(String, Vec<OffsetCommit>) -> ShardCall,
) -> BrokerResult<Vec<(TopicPartition, BrokerResult<()>)>> {
    may_group(shard, caller, AclOperation::Read, &group)?;
    let owner = group_owner(shard, &group)?;
    let image = shard.image();
    let mut results = Vec::with_capacity(offsets.len());
    let mut known = Vec::with_capacity(offsets.len());
    for commit in offsets {
        let (tp, offset) = (commit.partition.clone(), commit.offset);
        let exists = image
            .topic(&tp.topic)
            .is_some_and(|t| (0..t.partition_count()).contains(&tp.partition));
        if let Err(error) = may_topic(shard, caller, AclOperation::Read, &tp.topic) {
            results.push((tp, Err(error)));
        } else if offset < 0 {
            results.push((
                tp,
                Err(BrokerError::InvalidRequest(format!(
                    "negative offset {offset}"
                ))),
            ));
        } else if !exists {
            let error = BrokerError::UnknownTopicOrPartition {
                topic: tp.topic.clone(),
                partition: tp.partition,
            };
            results.push((tp, Err(error)));
        } else {
            known.push(commit);
        }
    }
    let committed: Vec<TopicPartition> = known.iter().map(|c| c.partition.clone()).collect();
    let call = call(group, known);
    let result = match shard.router.call(shard, owner, call).await? {
        ShardAnswer::CommitOffsets(result) => result,
        other => Err(unexpected(other)),
    };
    let mut all: Vec<(TopicPartition, BrokerResult<()>)> = committed
        .into_iter()
        .map(|tp| (tp, result.as_ref().map(|_| ()).map_err(BrokerError::same)))
        .collect();
    all.extend(results);
    Ok(all)
}

/// The partitions of `group` whose committed offsets an open transaction may change.
pub async fn unstable_offsets(
    shard: &Rc<Shard>,
    group: String,
) -> BrokerResult<Vec<TopicPartition>> {
    let owner = group_owner(shard, &group)?;
    match shard
        .router
        .call(shard, owner, ShardCall::UnstableOffsets { group })
        .await?
    {
        ShardAnswer::UnstableOffsets(result) => result,
        other => Err(unexpected(other)),
    }
}

/// Everything `group` has committed.
pub async fn committed_offsets(shard: &Rc<Shard>, group: String) -> BrokerResult<Vec<Committed>> {
    let owner = group_owner(shard, &group)?;
    match shard
        .router
        .call(shard, owner, ShardCall::FetchOffsets { group })
        .await?
    {
        ShardAnswer::FetchOffsets(result) => result,
        other => Err(unexpected(other)),
    }
}

/// Every group (with members or committed offsets), sorted by name, with its state and
/// protocol type.
pub async fn list_groups(shard: &Rc<Shard>) -> BrokerResult<Vec<(String, GroupState, String)>> {
    let mut groups = Vec::new();
    for owner in 0..shard.count {
        match shard
            .router
            .call(shard, owner, ShardCall::ListGroups)
            .await?
        {
            ShardAnswer::ListGroups(found) => groups.extend(found),
            other => return Err(unexpected(other)),
        }
    }
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    groups.dedup_by(|a, b| a.0 == b.0);
    Ok(groups)
}

/// `list_groups`, as `caller` may see it: every group with DESCRIBE on the cluster, else
/// those it may describe (Kafka's ListGroups).
pub async fn list_groups_described(
    shard: &Rc<Shard>,
    caller: &Caller,
) -> BrokerResult<Vec<(String, GroupState, String)>> {
    let mut groups = list_groups(shard).await?;
    if !shard.authorizer.allows(
        caller,
        AclOperation::Describe,
        AclResourceType::Cluster,
        crate::security::acl::CLUSTER_RESOURCE,
    ) {
        groups.retain(|(group, _, _)| {
            may_group(shard, caller, AclOperation::Describe, group).is_ok()
        });
    }
    Ok(groups)
}

/// Calls the coordinator of `group` (the owner of its offsets partition), if `caller`
/// may do `operation` on the group.
pub async fn group_call(
    shard: &Rc<Shard>,
    caller: &Caller,
    operation: AclOperation,
    group: &str,
    call: GroupCall,
) -> BrokerResult<GroupAnswer> {
    may_group(shard, caller, operation, group)?;
    let owner = group_owner(shard, group)?;
    match shard
        .router
        .call(shard, owner, ShardCall::Group(call))
        .await?
    {
        ShardAnswer::Group(answer) => Ok(answer),
        other => Err(unexpected(other)),
    }
}

/// Deletes a group's committed offsets for these partitions; returns those it deleted.
pub async fn delete_offsets(
    shard: &Rc<Shard>,
    group: String,
    partitions: Vec<TopicPartition>,
) -> BrokerResult<Vec<TopicPartition>> {
    let owner = group_owner(shard, &group)?;
    let call = ShardCall::DeleteOffsets {
        group,
        partitions: Some(partitions),
    };
    match shard.router.call(shard, owner, call).await? {
        ShardAnswer::DeleteOffsets(result) => result,
        other => Err(unexpected(other)),
    }
}

/// Groups per-partition results by topic, keeping the first-seen topic order.
pub fn group_by_topic<T>(results: Vec<(TopicPartition, T)>) -> Vec<(String, Vec<(i32, T)>)> {
    let mut grouped: Vec<(String, Vec<(i32, T)>)> = Vec::new();
    for (tp, value) in results {
        match grouped.iter_mut().find(|(topic, _)| *topic == tp.topic) {
            Some((_, group)) => group.push((tp.partition, value)),
            None => grouped.push((tp.topic, vec![(tp.partition, value)])),
        }
    }
    grouped
}

// ---- authorization, the same for both protocols -----------------------------------

/// `Err` (TOPIC_AUTHORIZATION_FAILED) unless `caller` may do `operation` on the topic.
pub fn may_topic(
    shard: &Shard,
    caller: &Caller,
    operation: AclOperation,
    topic: &str,
) -> BrokerResult<()> {
    shard
        .authorizer
        .check(caller, operation, AclResourceType::Topic, topic)
}

/// `Err` (GROUP_AUTHORIZATION_FAILED) unless `caller` may do `operation` on the group.
pub fn may_group(
    shard: &Shard,
    caller: &Caller,
    operation: AclOperation,
    group: &str,
) -> BrokerResult<()> {
    shard
        .authorizer
        .check(caller, operation, AclResourceType::Group, group)
}

/// `Err` unless `caller` may use the transactional id (WRITE on it).
pub fn may_txn(shard: &Shard, caller: &Caller, transactional_id: &str) -> BrokerResult<()> {
    shard.authorizer.check(
        caller,
        AclOperation::Write,
        AclResourceType::TransactionalId,
        transactional_id,
    )
}

/// `Err` unless `caller` may create the topic: CREATE on the cluster or on the topic.
pub fn may_create_topic(shard: &Shard, caller: &Caller, topic: &str) -> BrokerResult<()> {
    shard
        .authorizer
        .check_cluster(caller, AclOperation::Create)
        .or_else(|_| may_topic(shard, caller, AclOperation::Create, topic))
}

/// Splits `items` into those `check` allows and those it refuses, with the refusal.
pub fn split_refused<T>(
    items: Vec<T>,
    check: impl Fn(&T) -> BrokerResult<()>,
) -> (Vec<T>, Vec<(T, BrokerError)>) {
    let mut allowed = Vec::with_capacity(items.len());
    let mut refused = Vec::new();
    for item in items {
        match check(&item) {
            Ok(()) => allowed.push(item),
            Err(error) => refused.push((item, error)),
        }
    }
    (allowed, refused)
}

fn all_refused<T>(items: Vec<T>, error: &BrokerError) -> Vec<(T, BrokerResult<()>)> {
    items
        .into_iter()
        .map(|item| (item, Err(error.same())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::PartitionStatus;
    use quickcheck::{Arbitrary, Gen, quickcheck};

    /// A partition of the model: the sizes of the batches readable from the fetch
    /// offset (one offset each), and the fetch's limit for the partition.
    #[derive(Debug, Clone)]
    struct ModelPartition {
        batches: Vec<usize>,
        max_bytes: i32,
    }

    impl Arbitrary for ModelPartition {
        fn arbitrary(g: &mut Gen) -> ModelPartition {
            let count = usize::arbitrary(g) % 5;
            ModelPartition {
                batches: (0..count).map(|_| usize::arbitrary(g) % 64 + 1).collect(),
                max_bytes: i32::arbitrary(g).rem_euclid(129),
            }
        }
    }

    /// What a partition's owner answers: whole batches within the read limit.
    fn read_model(model: &ModelPartition, limit: ReadLimit) -> Fetched {
        let mut batches = Vec::new();
        let mut taken = 0;
        for &size in &model.batches {
            if !limit.fits(taken, !batches.is_empty(), size) {
                break;
            }
            taken += size;
            batches.push(Bytes::from(vec![0u8; size]));
        }
        let end = model.batches.len() as i64;
        Fetched {
            batches,
            status: PartitionStatus {
                log_start_offset: 0,
                high_watermark: end,
                last_stable_offset: end,
                log_end_offset: end,
                size_bytes: 0,
            },
            aborted: Vec::new(),
        }
    }

    quickcheck! {
        /// A fetch reads at most its limit plus one batch, whatever each partition's own
        /// limit; it answers for every partition; and it returns data whenever any
        /// partition has some (no consumer stalls behind a batch larger than its limit).
        fn fetch_reads_within_its_limit_and_always_progresses(
            models: Vec<ModelPartition>,
            limit: u8
        ) -> bool {
            let limit = usize::from(limit);
            let partitions: Vec<FetchPartition> = models
                .iter()
                .enumerate()
                .map(|(i, m)| FetchPartition {
                    partition: TopicPartition {
                        topic: "t".into(),
                        partition: i as i32,
                    },
                    offset: 0,
                    max_bytes: m.max_bytes,
                })
                .collect();
            let read_bytes = std::cell::Cell::new(0usize);
            let read = |wave: Vec<(usize, ReadLimit)>| {
                let answers: Vec<BrokerResult<Fetched>> = wave
                    .into_iter()
                    .map(|(index, limit)| {
                        let fetched = read_model(&models[index], limit);
                        let bytes: usize = fetched.batches.iter().map(Bytes::len).sum();
                        read_bytes.set(read_bytes.get() + bytes);
                        Ok(fetched)
                    })
                    .collect();
                std::future::ready(answers)
            };
            let reads: Vec<(i64, usize)> = models.iter().map(|m| (0, m.max_bytes as usize)).collect();
            let bytes = |f: &Fetched| batches_bytes(&f.batches);
            let withheld = |f: &Fetched, offset: i64| {
                f.batches.is_empty() && offset < readable_end(f, false)
            };
            let results = futures_lite::future::block_on(read_in_waves(&reads, limit, read, bytes, withheld));
            let results: Vec<(TopicPartition, BrokerResult<Fetched>)> = partitions
                .iter()
                .map(|p| p.partition.clone())
                .zip(results)
                .collect();
            let largest_batch = models.iter().flat_map(|m| m.batches.iter()).max().copied().unwrap_or(0);
            let mut any = false;
            for ((tp, result), (p, model)) in results.iter().zip(partitions.iter().zip(&models)) {
                let Ok(fetched) = result else { return false };
                if *tp != p.partition {
                    return false;
                }
                // Each partition's part is its log from the offset, whole batches.
                let sizes: Vec<usize> = fetched.batches.iter().map(Bytes::len).collect();
                if !model.batches.starts_with(&sizes) {
                    return false;
                }
                any |= !sizes.is_empty();
            }
            let data_anywhere = models.iter().any(|m| !m.batches.is_empty());
            read_bytes.get() <= limit + largest_batch && any == data_anywhere
        }
    }
}
