//! Followers' fetchers: on each shard, one task per leader broker fetches every partition
//! this shard follows there, in one request per round (inter-broker traffic batched per
//! broker pair and shard), and turns the answers into appends, truncations and resets
//! through the follower state machine (`weir_replication::FollowerReplica`).
//!
//! A round waits until each partition's tail is durable before naming its log end
//! (`FollowerReplica::position`), so the offset the leader counts toward the high
//! watermark is one a crash here cannot take back.

use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use flatbuffers::FlatBufferBuilder;
use weir_client::{Connection, ResponseFrame};
use weir_replication::{FetchPosition, FollowerAction, NodeId};
use weir_storage::Log;
use weir_wire::native::schema::{self, ErrorCode};

use crate::replica::{LogView, Replication, Role};
use crate::router::TopicPartition;
use crate::shard::Shard;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Beyond the leader's own wait: a fetch not answered by then is given up (the leader or
/// the path to it is gone) and the connection made again.
const FETCH_TIMEOUT_SLACK: Duration = Duration::from_secs(2);
const BACKOFF: Duration = Duration::from_millis(50);
/// A fetcher with nothing to fetch for this long stops.
const IDLE_STOP: Duration = Duration::from_secs(5);

/// Fetches from `leader` for as long as this shard follows it for some partition.
pub async fn run(shard: Rc<Shard>, leader: NodeId) {
    let mut connection: Option<Rc<Connection>> = None;
    let mut idle_since = std::time::Instant::now();
    while !shard.shutting_down() {
        let followed = shard.followed(leader);
        if followed.is_empty() {
            if idle_since.elapsed() >= IDLE_STOP {
                break;
            }
            let changed = shard.metadata_changed.listen();
            futures_lite::future::or(changed, glommio::timer::sleep(Duration::from_millis(200)))
                .await;
            continue;
        }
        idle_since = std::time::Instant::now();
        let mut positions = Vec::with_capacity(followed.len());
        for (partition, log, replication) in &followed {
            if let Some(position) = position(log, replication).await {
                positions.push((
                    partition.clone(),
                    log.clone(),
                    replication.clone(),
                    position,
                ));
            }
        }
        if connection.as_ref().is_none_or(|c| c.is_broken()) {
            connection = connect(&shard, leader).await;
        }
        let Some(open) = &connection else {
            glommio::timer::sleep(BACKOFF).await;
            continue;
        };
        let wait = Duration::from_millis(shard.config.replica_fetch_wait_max_ms);
        let fetched = crate::cluster::peers::with_timeout(
            wait + FETCH_TIMEOUT_SLACK,
            fetch(&shard, open, &positions, wait),
        )
        .await;
        let frame = match fetched {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                tracing::debug!(leader, %error, "replica fetch failed");
                connection = None;
                glommio::timer::sleep(BACKOFF).await;
                continue;
            }
            None => {
                tracing::debug!(leader, "replica fetch timed out");
                connection = None;
                continue;
            }
        };
        match apply(&positions, &frame).await {
            Ok(progressed) if !progressed => glommio::timer::sleep(BACKOFF).await,
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(leader, %error, "applying a replica fetch failed");
                glommio::timer::sleep(BACKOFF).await;
            }
        }
    }
    shard.fetcher_stopped(leader);
}

/// Where to fetch a partition from, once its tail is durable; `None` if it is no longer
/// a follower.
async fn position(log: &Log, replication: &Replication) -> Option<FetchPosition> {
    loop {
        let position = match &*replication.role.borrow() {
            Role::Follower(follower) => follower.position(&LogView(log)),
            _ => return None,
        };
        if position.is_some() {
            return position;
        }
        if log.wait_durable(log.log_end_offset()).await.is_err() {
            return None;
        }
    }
}

async fn connect(shard: &Shard, leader: NodeId) -> Option<Rc<Connection>> {
    let image = shard.image();
    let address = crate::metadata::native_address(image.broker(leader)?);
    let opened = Connection::open(&address, shard.peer_tls.native.as_deref());
    match crate::cluster::peers::with_timeout(CONNECT_TIMEOUT, opened).await {
        Some(Ok(connection)) => Some(connection),
        Some(Err(error)) => {
            tracing::debug!(leader, %address, %error, "cannot reach the leader");
            None
        }
        None => None,
    }
}

type Positioned = (TopicPartition, Rc<Log>, Rc<Replication>, FetchPosition);

async fn fetch(
    shard: &Shard,
    connection: &Connection,
    positions: &[Positioned],
    wait: Duration,
) -> weir_client::ClientResult<ResponseFrame> {
    let replica = shard.node;
    let max_bytes = shard.config.replica_fetch_max_bytes as i32;
    let per_partition = (max_bytes / positions.len().max(1) as i32).max(64 << 10);
    let wanted: Vec<(String, i32, FetchPosition)> = positions
        .iter()
        .map(|(tp, _, _, position)| (tp.topic.clone(), tp.partition, *position))
        .collect();
    let frame = connection
        .request(
            schema::RequestBody::ReplicaFetchRequest,
            move |builder: &mut FlatBufferBuilder<'static>| {
                let partitions: Vec<_> = wanted
                    .iter()
                    .map(|(topic, partition, position)| {
                        let topic = builder.create_string(topic);
                        schema::ReplicaFetchPartition::create(
                            builder,
                            &schema::ReplicaFetchPartitionArgs {
                                topic: Some(topic),
                                partition: *partition,
                                fetch_offset: position.fetch_offset,
                                last_fetched_epoch: position.last_fetched_epoch,
                                leader_epoch: position.leader_epoch,
                                max_bytes: per_partition,
                            },
                        )
                    })
                    .collect();
                let partitions = builder.create_vector(&partitions);
                schema::ReplicaFetchRequest::create(
                    builder,
                    &schema::ReplicaFetchRequestArgs {
                        replica,
                        max_wait_ms: wait.as_millis() as i32,
                        min_bytes: 1,
                        max_bytes,
                        partitions: Some(partitions),
                    },
                )
                .as_union_value()
            },
            Vec::new(),
            true,
        )
        .await?;
    frame.ok_or_else(|| weir_client::ClientError::Invalid("no answer to a replica fetch".into()))
}

/// Applies each partition's answer; returns whether anything moved (records appended or
/// a log cut), so that an idle round backs off.
async fn apply(
    positions: &[Positioned],
    frame: &ResponseFrame,
) -> crate::error::BrokerResult<bool> {
    let invalid =
        |what: &str| crate::error::BrokerError::Internal(format!("replica fetch answer: {what}"));
    let response = frame.checked().map_err(|e| invalid(&e.to_string()))?;
    let body = response
        .body_as_replica_fetch_response()
        .ok_or_else(|| invalid("wrong body"))?;
    let mut progressed = false;
    for result in body.partitions().into_iter().flatten() {
        let Some((partition, log, replication, asked)) = positions
            .iter()
            .find(|(tp, ..)| tp.topic == result.topic() && tp.partition == result.partition())
        else {
            continue;
        };
        // The role may have changed while the fetch was out: its answer is then stale.
        let current = match &*replication.role.borrow() {
            Role::Follower(follower) => follower.leader_epoch == asked.leader_epoch,
            _ => false,
        };
        if !current {
            continue;
        }
        match result.error() {
            ErrorCode::None => {}
            ErrorCode::OffsetOutOfRange => {
                let action = follow(
                    replication,
                    |follower, view| {
                        follower.on_out_of_range(
                            result.log_start_offset(),
                            result.log_end_offset(),
                            view,
                        )
                    },
                    log,
                );
                progressed |= act(partition, log, action).await?;
                continue;
            }
            code => {
                tracing::debug!(%partition, ?code, message = result.error_message(), "replica fetch refused");
                continue;
            }
        }
        if result.diverging_epoch() >= 0 {
            let (epoch, end_offset) = (result.diverging_epoch(), result.diverging_end_offset());
            let action = follow(
                replication,
                |follower, view| follower.on_diverging(epoch, end_offset, view),
                log,
            );
            below_high_watermark(partition, replication, action);
            progressed |= act(partition, log, action).await?;
            continue;
        }
        let records = frame
            .slice(result.records())
            .map_err(|e| invalid(&e.to_string()))?;
        if !records.is_empty() {
            if log.log_end_offset() != asked.fetch_offset {
                continue;
            }
            append(log, records).await?;
            progressed = true;
        }
        if let Role::Follower(follower) = &mut *replication.role.borrow_mut() {
            follower.on_records(result.high_watermark(), &LogView(log));
        }
        replication.changed.notify(usize::MAX);
    }
    Ok(progressed)
}

/// The high watermark a follower learnt never moves back; a cut below it would remove
/// acknowledged records, which replication must never do. Reported loudly.
fn below_high_watermark(
    partition: &TopicPartition,
    replication: &Replication,
    action: Option<FollowerAction>,
) {
    let known = replication.role.borrow().high_watermark();
    if let Some(FollowerAction::Truncate { offset }) = action
        && offset < known
    {
        tracing::error!(%partition, offset, high_watermark = known, "truncating below the high watermark this follower knew");
    }
}

fn follow(
    replication: &Replication,
    decide: impl FnOnce(&mut weir_replication::FollowerReplica, &LogView<'_>) -> FollowerAction,
    log: &Log,
) -> Option<FollowerAction> {
    match &mut *replication.role.borrow_mut() {
        Role::Follower(follower) => Some(decide(follower, &LogView(log))),
        _ => None,
    }
}

async fn act(
    partition: &TopicPartition,
    log: &Log,
    action: Option<FollowerAction>,
) -> crate::error::BrokerResult<bool> {
    match action {
        Some(FollowerAction::Truncate { offset }) => {
            tracing::info!(%partition, offset, from = log.log_end_offset(), durable = log.durable_offset(), "truncating a divergent tail");
            log.truncate_to(offset).await?;
            Ok(true)
        }
        Some(FollowerAction::Reset { offset }) => {
            tracing::info!(%partition, offset, "starting over at the leader's log start");
            log.reset_to(offset).await?;
            Ok(true)
        }
        Some(FollowerAction::Append) | None => Ok(false),
    }
}

/// Appends the leader's batches as they are (offsets and leader epochs kept), then waits
/// until they are durable under the log's policy. The batches are copied once out of the
/// response frame: the log takes each batch as its own buffer.
async fn append(log: &Rc<Log>, records: Bytes) -> crate::error::BrokerResult<()> {
    // Batches are bounded by the response frame they came in.
    let ranges = weir_wire::batch::split_batches(&records, records.len())?;
    let mut last = None;
    for range in ranges {
        let batch = BytesMut::from(&records[range]);
        last = Some(log.start_append_replica(batch)?);
    }
    if let Some(last) = last {
        log.finish_append(&last).await?;
    }
    Ok(())
}
