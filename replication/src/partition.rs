//! Replication of one partition's log, with Kafka's in-sync-replica protocol.
//!
//! Followers pull from the leader. Each fetch names the follower's log end offset and
//! the epoch of its last batch; the leader answers with its batches from there, or with
//! the point where the follower's log diverges from its own (KIP-320: truncation found
//! by fetching, with the leader-epoch cache of KIP-101/KIP-279). The offset a follower
//! fetches from tells the leader how far that follower has the log; the high watermark
//! is the lowest such offset over the in-sync replicas (the leader counting only what it
//! has made durable itself). A follower appends, and with `every-batch` syncs, before it
//! fetches again, so an offset a follower reports is durable there.
//!
//! The leader changes its ISR through the controller (`ControllerRequest::AlterPartition`):
//! a follower that has not caught up for `replica_lag_time_max_ms` is dropped, a follower
//! that has caught up to the high watermark (and to the start of the leader's epoch) is
//! added. While a change is pending, the high watermark counts both the old and the new
//! members (Kafka's "maximal ISR", KIP-497), so it is safe whichever way the change ends.
//!
//! These are state machines: the broker (and the simulator in `tests/`) calls them with
//! what happened and performs what they answer. They never touch a log themselves; they
//! read it through `ReplicaLog`.

use std::collections::BTreeMap;

use crate::metadata::{NodeId, PartitionState};

/// What replication needs to know of a log.
pub trait ReplicaLog {
    fn log_start_offset(&self) -> i64;
    fn log_end_offset(&self) -> i64;
    /// How far this replica counts toward the high watermark: the durable end under the
    /// syncing flush policies, the end under `never`.
    fn committable_end_offset(&self) -> i64;
    /// The epoch of the last batch, if any.
    fn latest_epoch(&self) -> Option<i32>;
    /// The largest epoch at or below `epoch` and where it ends (exclusive), per the
    /// leader-epoch cache; `None` when `epoch` predates every epoch in the log.
    fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// A follower that has not caught up with the leader's log end for this long leaves
    /// the ISR (Kafka's `replica.lag.time.max.ms`).
    pub replica_lag_time_max_ms: u64,
    /// A proposed ISR change not applied after this long is proposed again.
    pub isr_change_retry_ms: u64,
}

impl Default for ReplicationConfig {
    fn default() -> ReplicationConfig {
        ReplicationConfig {
            replica_lag_time_max_ms: 10_000,
            isr_change_retry_ms: 2_000,
        }
    }
}

/// Where a follower fetches from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchPosition {
    pub fetch_offset: i64,
    /// The epoch of the follower's last batch, -1 when its log is empty.
    pub last_fetched_epoch: i32,
    /// The leader epoch the follower believes in.
    pub leader_epoch: i32,
}

/// Why a leader refuses a follower's fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FetchRefusal {
    #[error("this broker does not lead the partition")]
    NotLeader,
    /// The follower's leader epoch is older than the leader's: it must refresh its metadata.
    #[error("the fetch names an older leader epoch")]
    FencedLeaderEpoch,
    /// The follower knows a newer epoch than this leader: this leader's metadata is behind.
    #[error("the fetch names a newer leader epoch")]
    UnknownLeaderEpoch,
    #[error("the fetching broker is not a replica of the partition")]
    NotReplica,
    /// The fetch offset is outside the leader's log.
    #[error("the fetch offset is outside {log_start_offset}..={log_end_offset}")]
    OutOfRange {
        log_start_offset: i64,
        log_end_offset: i64,
    },
}

/// The leader's answer to a follower's fetch position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchAnswer {
    /// Read from the fetch offset up to the leader's log end.
    Read,
    /// The follower's log diverges: its `epoch` ends at `end_offset` on the leader.
    Diverging { epoch: i32, end_offset: i64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FollowerProgress {
    /// Unknown (-1) until the follower fetches in this leader epoch.
    log_end_offset: i64,
    last_caught_up_ms: u64,
    last_fetch_ms: Option<u64>,
    /// The leader's log end when the follower last fetched.
    leader_end_at_last_fetch: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PendingIsr {
    isr: Vec<NodeId>,
    since_ms: u64,
}

/// The leader's side of one partition, for one leader epoch.
#[derive(Debug, Clone)]
pub struct LeaderReplica {
    node: NodeId,
    leader_epoch: i32,
    partition_epoch: i32,
    replicas: Vec<NodeId>,
    isr: Vec<NodeId>,
    pending: Option<PendingIsr>,
    followers: BTreeMap<NodeId, FollowerProgress>,
    high_watermark: i64,
    /// The log end when this epoch began: a follower must reach it to join the ISR.
    epoch_start_offset: i64,
}

impl LeaderReplica {
    /// Takes over as leader in `state.leader_epoch`, knowing the high watermark up to
    /// `high_watermark` (what it learnt as a follower, or its log start).
    pub fn new(
        node: NodeId,
        state: &PartitionState,
        log: &impl ReplicaLog,
        high_watermark: i64,
        now_ms: u64,
    ) -> LeaderReplica {
        let end = log.log_end_offset();
        let followers = state
            .nodes()
            .filter(|n| *n != node)
            .map(|n| (n, new_progress(now_ms, end)))
            .collect();
        LeaderReplica {
            node,
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            replicas: state.nodes().collect(),
            isr: state.isr.clone(),
            pending: None,
            followers,
            high_watermark: high_watermark.clamp(log.log_start_offset(), end),
            epoch_start_offset: end,
        }
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    pub fn partition_epoch(&self) -> i32 {
        self.partition_epoch
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    pub fn isr(&self) -> &[NodeId] {
        &self.isr
    }

    /// How many replicas acks=all can count on now: the committed ISR, less any member a
    /// pending change removes.
    pub fn in_sync_count(&self) -> usize {
        match &self.pending {
            Some(pending) => self.isr.iter().filter(|n| pending.isr.contains(n)).count(),
            None => self.isr.len(),
        }
    }

    /// The committed state changed within this leader epoch (an ISR change applied, a move
    /// added or removed replicas).
    pub fn update(&mut self, state: &PartitionState, now_ms: u64) {
        debug_assert_eq!(state.leader_epoch, self.leader_epoch);
        if state.partition_epoch <= self.partition_epoch {
            return;
        }
        self.partition_epoch = state.partition_epoch;
        // A follower that left the ISR (lagging, or fenced by the controller) must show
        // by fetching again that it caught up before it is proposed back.
        let end = self.epoch_start_offset;
        for node in &self.isr {
            if !state.isr.contains(node)
                && let Some(progress) = self.followers.get_mut(node)
            {
                *progress = new_progress(now_ms, end);
            }
        }
        self.isr = state.isr.clone();
        self.replicas = state.nodes().collect();
        // Whatever was pending was decided one way or the other by this state.
        self.pending = None;
        let end = self.epoch_start_offset;
        for node in state.nodes().filter(|n| *n != self.node) {
            self.followers
                .entry(node)
                .or_insert_with(|| new_progress(now_ms, end));
        }
        let replicas = self.replicas.clone();
        self.followers.retain(|n, _| replicas.contains(n));
    }

    /// A follower fetches at `position`. On `Ok(Read)` its progress is recorded; call
    /// `advance_high_watermark` afterwards.
    pub fn on_fetch(
        &mut self,
        follower: NodeId,
        position: FetchPosition,
        log: &impl ReplicaLog,
        now_ms: u64,
    ) -> Result<FetchAnswer, FetchRefusal> {
        if position.leader_epoch < self.leader_epoch {
            return Err(FetchRefusal::FencedLeaderEpoch);
        }
        if position.leader_epoch > self.leader_epoch {
            return Err(FetchRefusal::UnknownLeaderEpoch);
        }
        if !self.followers.contains_key(&follower) {
            return Err(FetchRefusal::NotReplica);
        }
        let out_of_range = FetchRefusal::OutOfRange {
            log_start_offset: log.log_start_offset(),
            log_end_offset: log.log_end_offset(),
        };
        if position.last_fetched_epoch >= 0 {
            match log.end_offset_for_epoch(position.last_fetched_epoch) {
                None => return Err(out_of_range),
                Some((epoch, end_offset))
                    if epoch < position.last_fetched_epoch
                        || end_offset < position.fetch_offset =>
                {
                    return Ok(FetchAnswer::Diverging { epoch, end_offset });
                }
                Some(_) => {}
            }
        }
        if position.fetch_offset < log.log_start_offset()
            || position.fetch_offset > log.log_end_offset()
        {
            return Err(out_of_range);
        }
        let end = log.log_end_offset();
        if let Some(progress) = self.followers.get_mut(&follower) {
            // Kafka's rule: caught up now if it has everything; caught up as of its last
            // fetch if it has what the leader had then.
            if position.fetch_offset >= end {
                progress.last_caught_up_ms = now_ms;
            } else if let Some(last) = progress.last_fetch_ms
                && position.fetch_offset >= progress.leader_end_at_last_fetch
            {
                progress.last_caught_up_ms = progress.last_caught_up_ms.max(last);
            }
            progress.log_end_offset = position.fetch_offset;
            progress.last_fetch_ms = Some(now_ms);
            progress.leader_end_at_last_fetch = end;
        }
        Ok(FetchAnswer::Read)
    }

    /// Moves the high watermark up to what every member of the (maximal) ISR has; returns
    /// the new one if it moved.
    pub fn advance_high_watermark(&mut self, log: &impl ReplicaLog) -> Option<i64> {
        let mut lowest = log.committable_end_offset().min(log.log_end_offset());
        let pending = self.pending.as_ref().map_or(&[][..], |p| &p.isr[..]);
        for node in self.isr.iter().chain(pending) {
            if *node == self.node {
                continue;
            }
            let known = self
                .followers
                .get(node)
                .map_or(-1, |progress| progress.log_end_offset);
            if known < 0 {
                return None;
            }
            lowest = lowest.min(known);
        }
        if lowest > self.high_watermark {
            self.high_watermark = lowest;
            Some(lowest)
        } else {
            None
        }
    }

    /// The controller refused the ISR change `isr` for good (a replica it adds is not
    /// eligible): it will never be applied, so another may be proposed.
    pub fn isr_change_refused(&mut self, isr: &[NodeId]) {
        if self.pending.as_ref().is_some_and(|p| p.isr == isr) {
            self.pending = None;
        }
    }

    /// The ISR this leader wants the controller to record, if it differs from the
    /// committed one: a new change when none is pending, or the pending one again when
    /// it has waited `isr_change_retry_ms` without being settled.
    pub fn isr_change(&mut self, config: &ReplicationConfig, now_ms: u64) -> Option<Vec<NodeId>> {
        if let Some(pending) = &mut self.pending {
            // One change at a time, and never a different one while this one may still
            // be applied: the high watermark counts its members until the leader knows.
            // It is sent again until the metadata (or a refusal) settles it.
            if now_ms.saturating_sub(pending.since_ms) < config.isr_change_retry_ms {
                return None;
            }
            pending.since_ms = now_ms;
            return Some(pending.isr.clone());
        }
        let lag = config.replica_lag_time_max_ms;
        let mut isr: Vec<NodeId> = self
            .isr
            .iter()
            .copied()
            .filter(|n| {
                *n == self.node
                    || self
                        .followers
                        .get(n)
                        .is_some_and(|p| now_ms.saturating_sub(p.last_caught_up_ms) <= lag)
            })
            .collect();
        if !isr.contains(&self.node) {
            isr.insert(0, self.node);
        }
        let floor = self.high_watermark.max(self.epoch_start_offset);
        for node in &self.replicas {
            if isr.contains(node) {
                continue;
            }
            let joins = self.followers.get(node).is_some_and(|p| {
                p.log_end_offset >= floor
                    && p.last_fetch_ms
                        .is_some_and(|last| now_ms.saturating_sub(last) <= lag)
            });
            if joins {
                isr.push(*node);
            }
        }
        if same_members(&isr, &self.isr) {
            return None;
        }
        self.pending = Some(PendingIsr {
            isr: isr.clone(),
            since_ms: now_ms,
        });
        Some(isr)
    }
}

fn new_progress(now_ms: u64, leader_end: i64) -> FollowerProgress {
    FollowerProgress {
        log_end_offset: -1,
        // A new leader gives every follower a full lag time to show up.
        last_caught_up_ms: now_ms,
        last_fetch_ms: None,
        leader_end_at_last_fetch: leader_end,
    }
}

fn same_members(a: &[NodeId], b: &[NodeId]) -> bool {
    a.len() == b.len() && a.iter().all(|n| b.contains(n))
}

/// What a follower does with the leader's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowerAction {
    /// Append the batches that came back, then fetch again.
    Append,
    /// Cut the log back to this offset (exclusive), then fetch again.
    Truncate { offset: i64 },
    /// Discard the whole log and start it empty at this offset (the leader's log start
    /// passed it by).
    Reset { offset: i64 },
}

/// The follower's side of one partition, for one leader epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerReplica {
    pub leader: NodeId,
    pub leader_epoch: i32,
    high_watermark: i64,
}

impl FollowerReplica {
    pub fn new(state: &PartitionState, high_watermark: i64) -> FollowerReplica {
        FollowerReplica {
            leader: state.leader,
            leader_epoch: state.leader_epoch,
            high_watermark,
        }
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    /// Where to fetch from next: the log end, once everything before it counts (is
    /// durable, under the syncing policies). The offset a follower fetches from tells the
    /// leader how far it holds the log, so it must not name records a crash could still
    /// take: `None` until the log has synced its tail (a former leader's last appends,
    /// the batches of the previous fetch).
    pub fn position(&self, log: &impl ReplicaLog) -> Option<FetchPosition> {
        if log.committable_end_offset() < log.log_end_offset() {
            return None;
        }
        Some(FetchPosition {
            fetch_offset: log.log_end_offset(),
            last_fetched_epoch: log.latest_epoch().unwrap_or(-1),
            leader_epoch: self.leader_epoch,
        })
    }

    /// The leader answered the fetch with batches (possibly none) and its high watermark.
    /// Call after appending them.
    pub fn on_records(&mut self, leader_high_watermark: i64, log: &impl ReplicaLog) {
        let hw = leader_high_watermark.min(log.log_end_offset());
        self.high_watermark = self.high_watermark.max(hw);
    }

    /// The leader found our log diverging from its own at the end of `epoch`.
    pub fn on_diverging(
        &mut self,
        epoch: i32,
        end_offset: i64,
        log: &impl ReplicaLog,
    ) -> FollowerAction {
        let offset = match log.end_offset_for_epoch(epoch) {
            Some((_, own_end)) => end_offset.min(own_end),
            // Everything we hold is from later epochs than the leader's: none of it is
            // the leader's.
            None => log.log_start_offset().min(end_offset),
        };
        self.after_truncation(offset);
        FollowerAction::Truncate { offset }
    }

    /// The leader refused our fetch offset as outside its log.
    pub fn on_out_of_range(
        &mut self,
        leader_log_start: i64,
        leader_log_end: i64,
        log: &impl ReplicaLog,
    ) -> FollowerAction {
        if log.log_end_offset() > leader_log_end {
            self.after_truncation(leader_log_end);
            FollowerAction::Truncate {
                offset: leader_log_end,
            }
        } else {
            self.high_watermark = self.high_watermark.max(leader_log_start);
            FollowerAction::Reset {
                offset: leader_log_start,
            }
        }
    }

    fn after_truncation(&mut self, offset: i64) {
        self.high_watermark = self.high_watermark.min(offset);
    }
}

#[cfg(test)]
mod tests;
