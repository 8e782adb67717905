use super::*;
use crate::metadata::Replica;

/// A log as replication sees it: (epoch, offset) of each record, the durable prefix.
#[derive(Debug, Clone, Default)]
struct ModelLog {
    start: i64,
    records: Vec<i32>,
    durable: usize,
}

impl ModelLog {
    fn with(epochs: &[i32]) -> ModelLog {
        ModelLog {
            start: 0,
            records: epochs.to_vec(),
            durable: epochs.len(),
        }
    }
}

impl ReplicaLog for ModelLog {
    fn log_start_offset(&self) -> i64 {
        self.start
    }
    fn log_end_offset(&self) -> i64 {
        self.start + self.records.len() as i64
    }
    fn committable_end_offset(&self) -> i64 {
        self.start + self.durable as i64
    }
    fn latest_epoch(&self) -> Option<i32> {
        self.records.last().copied()
    }
    fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        let found = self.records.iter().copied().filter(|e| *e <= epoch).max()?;
        let end = self
            .records
            .iter()
            .position(|e| *e > found)
            .map_or(self.log_end_offset(), |p| self.start + p as i64);
        Some((found, end))
    }
}

fn state(leader: NodeId, epoch: i32, isr: &[NodeId]) -> PartitionState {
    PartitionState {
        replicas: [1, 2, 3]
            .iter()
            .map(|n| Replica { node: *n, shard: 0 })
            .collect(),
        leader,
        leader_epoch: epoch,
        isr: isr.to_vec(),
        partition_epoch: 0,
        target: None,
    }
}

fn at(fetch_offset: i64, last_fetched_epoch: i32, leader_epoch: i32) -> FetchPosition {
    FetchPosition {
        fetch_offset,
        last_fetched_epoch,
        leader_epoch,
    }
}

const CONFIG: ReplicationConfig = ReplicationConfig {
    replica_lag_time_max_ms: 1000,
    isr_change_retry_ms: 500,
};

#[test]
fn the_high_watermark_is_the_lowest_offset_of_the_isr() {
    let log = ModelLog::with(&[0; 10]);
    let mut leader = LeaderReplica::new(1, &state(1, 0, &[1, 2, 3]), &log, 0, 0);
    assert_eq!(
        leader.on_fetch(2, at(10, 0, 0), &log, 1),
        Ok(FetchAnswer::Read)
    );
    // Follower 3 has not fetched in this epoch: nothing is known to be replicated.
    assert_eq!(leader.advance_high_watermark(&log), None);
    assert_eq!(
        leader.on_fetch(3, at(6, 0, 0), &log, 1),
        Ok(FetchAnswer::Read)
    );
    assert_eq!(leader.advance_high_watermark(&log), Some(6));
    assert_eq!(
        leader.on_fetch(3, at(10, 0, 0), &log, 2),
        Ok(FetchAnswer::Read)
    );
    assert_eq!(leader.advance_high_watermark(&log), Some(10));
}

#[test]
fn the_leader_counts_only_what_it_made_durable() {
    let mut log = ModelLog::with(&[0; 10]);
    log.durable = 4;
    let mut leader = LeaderReplica::new(1, &state(1, 0, &[1, 2]), &log, 0, 0);
    leader.on_fetch(2, at(10, 0, 0), &log, 1).unwrap();
    assert_eq!(leader.advance_high_watermark(&log), Some(4));
}

#[test]
fn fetches_from_other_epochs_are_refused() {
    let log = ModelLog::with(&[0, 0, 3]);
    let mut leader = LeaderReplica::new(1, &state(1, 3, &[1, 2]), &log, 0, 0);
    assert_eq!(
        leader.on_fetch(2, at(3, 3, 2), &log, 1),
        Err(FetchRefusal::FencedLeaderEpoch)
    );
    assert_eq!(
        leader.on_fetch(2, at(3, 3, 4), &log, 1),
        Err(FetchRefusal::UnknownLeaderEpoch)
    );
    assert_eq!(
        leader.on_fetch(9, at(3, 3, 3), &log, 1),
        Err(FetchRefusal::NotReplica)
    );
}

#[test]
fn a_follower_with_a_divergent_tail_truncates_to_where_the_logs_agree() {
    // Leader: epochs 0,0,0 then 2 (it led epoch 2). The follower kept records of epoch 1
    // that the leader never had.
    let leader_log = ModelLog::with(&[0, 0, 0, 2, 2]);
    let mut follower_log = ModelLog::with(&[0, 0, 0, 1, 1, 1]);
    let mut leader = LeaderReplica::new(1, &state(1, 2, &[1, 2]), &leader_log, 3, 0);
    let mut follower = FollowerReplica::new(&state(1, 2, &[1, 2]), 3);
    let position = follower.position(&follower_log).unwrap();
    assert_eq!(position, at(6, 1, 2));
    let answer = leader.on_fetch(2, position, &leader_log, 1).unwrap();
    assert_eq!(
        answer,
        FetchAnswer::Diverging {
            epoch: 0,
            end_offset: 3
        }
    );
    let FetchAnswer::Diverging { epoch, end_offset } = answer else {
        unreachable!()
    };
    let action = follower.on_diverging(epoch, end_offset, &follower_log);
    assert_eq!(action, FollowerAction::Truncate { offset: 3 });
    follower_log.records.truncate(3);
    assert_eq!(
        leader.on_fetch(2, follower.position(&follower_log).unwrap(), &leader_log, 2),
        Ok(FetchAnswer::Read)
    );
}

#[test]
fn a_follower_ahead_within_the_same_epoch_is_cut_to_the_leaders_end() {
    let leader_log = ModelLog::with(&[0, 0, 0]);
    let follower_log = ModelLog::with(&[0, 0, 0, 0, 0]);
    let mut leader = LeaderReplica::new(1, &state(1, 1, &[1, 2]), &leader_log, 0, 0);
    let answer = leader.on_fetch(2, at(5, 0, 1), &leader_log, 1).unwrap();
    assert_eq!(
        answer,
        FetchAnswer::Diverging {
            epoch: 0,
            end_offset: 3
        }
    );
    let mut follower = FollowerReplica::new(&state(1, 1, &[1, 2]), 0);
    assert_eq!(
        follower.on_diverging(0, 3, &follower_log),
        FollowerAction::Truncate { offset: 3 }
    );
}

#[test]
fn a_follower_behind_the_leaders_log_start_starts_over_there() {
    let mut leader_log = ModelLog::with(&[4, 4]);
    leader_log.start = 100;
    let mut leader = LeaderReplica::new(1, &state(1, 4, &[1, 2]), &leader_log, 100, 0);
    let refusal = leader.on_fetch(2, at(7, 1, 4), &leader_log, 1).unwrap_err();
    assert_eq!(
        refusal,
        FetchRefusal::OutOfRange {
            log_start_offset: 100,
            log_end_offset: 102
        }
    );
    let mut follower = FollowerReplica::new(&state(1, 4, &[1, 2]), 0);
    assert_eq!(
        follower.on_out_of_range(100, 102, &ModelLog::with(&[1; 7])),
        FollowerAction::Reset { offset: 100 }
    );
}

#[test]
fn a_lagging_follower_leaves_the_isr_and_rejoins_once_caught_up() {
    let log = ModelLog::with(&[0; 10]);
    let mut leader = LeaderReplica::new(1, &state(1, 0, &[1, 2, 3]), &log, 10, 0);
    leader.on_fetch(2, at(10, 0, 0), &log, 100).unwrap();
    leader.on_fetch(3, at(2, 0, 0), &log, 100).unwrap();
    assert_eq!(leader.isr_change(&CONFIG, 500), None);
    leader.on_fetch(2, at(10, 0, 0), &log, 1500).unwrap();
    assert_eq!(leader.isr_change(&CONFIG, 1500), Some(vec![1, 2]));
    // Pending: the high watermark still waits for 3 (maximal ISR), and no second change.
    assert_eq!(leader.in_sync_count(), 2);
    assert_eq!(leader.isr_change(&CONFIG, 1600), None);
    let mut shrunk = state(1, 0, &[1, 2]);
    shrunk.partition_epoch = 1;
    leader.update(&shrunk, 1700);
    assert_eq!(leader.isr(), &[1, 2]);
    leader.on_fetch(3, at(10, 0, 0), &log, 1800).unwrap();
    assert_eq!(leader.isr_change(&CONFIG, 1800), Some(vec![1, 2, 3]));
}

#[test]
fn a_follower_taken_out_of_the_isr_must_fetch_again_to_rejoin() {
    let log = ModelLog::with(&[0; 4]);
    let mut leader = LeaderReplica::new(1, &state(1, 0, &[1, 2, 3]), &log, 4, 0);
    leader.on_fetch(2, at(4, 0, 0), &log, 10).unwrap();
    leader.on_fetch(3, at(4, 0, 0), &log, 10).unwrap();
    // The controller fenced broker 3 and took it out of the ISR.
    let mut fenced = state(1, 0, &[1, 2]);
    fenced.partition_epoch = 1;
    leader.update(&fenced, 20);
    assert_eq!(leader.isr_change(&CONFIG, 30), None);
    leader.on_fetch(3, at(4, 0, 0), &log, 40).unwrap();
    assert_eq!(leader.isr_change(&CONFIG, 40), Some(vec![1, 2, 3]));
}

#[test]
fn a_pending_change_is_proposed_again_unchanged_until_settled() {
    let log = ModelLog::with(&[0; 3]);
    let mut leader = LeaderReplica::new(1, &state(1, 0, &[1, 2, 3]), &log, 3, 0);
    leader.on_fetch(3, at(3, 0, 0), &log, 1001).unwrap();
    assert_eq!(leader.isr_change(&CONFIG, 1001), Some(vec![1, 3]));
    assert_eq!(leader.isr_change(&CONFIG, 1200), None);
    // Follower 3 falls behind too, but the pending change may already be applied: it is
    // sent again as it was, and the high watermark still waits for 3.
    assert_eq!(leader.isr_change(&CONFIG, 2600), Some(vec![1, 3]));
    assert_eq!(leader.advance_high_watermark(&log), None);
    // Refused for good: now a new change may be computed.
    leader.isr_change_refused(&[1, 3]);
    assert_eq!(leader.isr_change(&CONFIG, 2600), Some(vec![1]));
}

#[test]
fn a_follower_joins_only_from_the_start_of_the_leaders_epoch() {
    // The leader took over at offset 8 with a high watermark of 5.
    let log = ModelLog::with(&[0; 8]);
    let mut leader = LeaderReplica::new(1, &state(1, 1, &[1]), &log, 5, 0);
    leader.on_fetch(2, at(6, 0, 1), &log, 10).unwrap();
    assert_eq!(leader.isr_change(&CONFIG, 10), None);
    leader.on_fetch(2, at(8, 0, 1), &log, 20).unwrap();
    assert_eq!(leader.isr_change(&CONFIG, 20), Some(vec![1, 2]));
}

#[test]
fn a_follower_fetches_only_once_its_tail_is_durable() {
    let follower = FollowerReplica::new(&state(1, 0, &[1, 2]), 0);
    let mut log = ModelLog::with(&[0; 5]);
    log.durable = 3;
    assert_eq!(follower.position(&log), None);
    log.durable = 5;
    assert_eq!(follower.position(&log), Some(at(5, 0, 0)));
}

#[test]
fn a_follower_learns_the_high_watermark_up_to_its_own_end() {
    let mut follower = FollowerReplica::new(&state(1, 0, &[1, 2]), 0);
    follower.on_records(50, &ModelLog::with(&[0; 30]));
    assert_eq!(follower.high_watermark(), 30);
    follower.on_records(20, &ModelLog::with(&[0; 30]));
    assert_eq!(follower.high_watermark(), 30);
}
