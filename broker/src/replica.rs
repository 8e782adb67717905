//! A partition's replication on the shard that holds it: its role (leader, follower or
//! neither) with the state machine of `weir_replication::partition`, and the log as that
//! state machine sees it.

use std::cell::RefCell;

use event_listener::Event;
use weir_replication::{
    FollowerReplica, LeaderReplica, NO_LEADER, NodeId, PartitionState, ReplicaLog,
};
use weir_storage::{FlushPolicy, Log};

/// A `Log` as replication reads it.
#[derive(Debug, Clone, Copy)]
pub struct LogView<'a>(pub &'a Log);

impl ReplicaLog for LogView<'_> {
    fn log_start_offset(&self) -> i64 {
        self.0.log_start_offset()
    }

    fn log_end_offset(&self) -> i64 {
        self.0.log_end_offset()
    }

    /// What this replica counts toward the high watermark: what it made durable, unless
    /// its topic does not sync at all.
    fn committable_end_offset(&self) -> i64 {
        match self.0.config().flush {
            FlushPolicy::Never => self.0.log_end_offset(),
            FlushPolicy::EveryBatch | FlushPolicy::Interval { .. } => self.0.durable_offset(),
        }
    }

    fn latest_epoch(&self) -> Option<i32> {
        self.0.latest_epoch()
    }

    fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        self.0.end_offset_for_epoch(epoch)
    }
}

#[derive(Debug)]
pub enum Role {
    Leader(LeaderReplica),
    Follower(FollowerReplica),
    /// No leader at the moment, or this broker leads but is fenced (restarted and not
    /// caught up yet): it serves nothing.
    Offline {
        high_watermark: i64,
    },
}

impl Role {
    pub fn high_watermark(&self) -> i64 {
        match self {
            Role::Leader(leader) => leader.high_watermark(),
            Role::Follower(follower) => follower.high_watermark(),
            Role::Offline { high_watermark } => *high_watermark,
        }
    }

    pub fn leader_epoch(&self) -> Option<i32> {
        match self {
            Role::Leader(leader) => Some(leader.leader_epoch()),
            _ => None,
        }
    }
}

/// One partition's replication state on its shard.
#[derive(Debug)]
pub struct Replication {
    pub role: RefCell<Role>,
    /// The partition's state in the metadata this role comes from.
    pub state: RefCell<PartitionState>,
    /// Fired when the high watermark moves or the role changes: produce requests waiting
    /// for `acks=all` and fetches waiting for data look again.
    pub changed: Event,
}

impl Replication {
    pub fn new(state: PartitionState) -> Replication {
        Replication {
            role: RefCell::new(Role::Offline { high_watermark: 0 }),
            state: RefCell::new(state),
            changed: Event::new(),
        }
    }

    /// Moves the leader's high watermark up to what the ISR has; returns it.
    pub fn high_watermark(&self, log: &Log) -> i64 {
        let mut role = self.role.borrow_mut();
        if let Role::Leader(leader) = &mut *role
            && leader.advance_high_watermark(&LogView(log)).is_some()
        {
            self.changed.notify(usize::MAX);
        }
        role.high_watermark()
    }

    /// Takes the role `state` gives this broker (`node`, active: registered and unfenced
    /// in this process). Returns whether the role changed (not merely its ISR).
    pub fn assume(
        &self,
        node: NodeId,
        active: bool,
        state: &PartitionState,
        log: &Log,
        now_ms: u64,
    ) -> bool {
        let mut role = self.role.borrow_mut();
        *self.state.borrow_mut() = state.clone();
        let same = match &mut *role {
            Role::Leader(leader)
                if active
                    && state.leader == node
                    && leader.leader_epoch() == state.leader_epoch =>
            {
                leader.update(state, now_ms);
                true
            }
            Role::Follower(follower) => {
                state.leader != node
                    && follower.leader == state.leader
                    && follower.leader_epoch == state.leader_epoch
            }
            Role::Offline { .. } => state.leader == NO_LEADER || (state.leader == node && !active),
            Role::Leader(_) => false,
        };
        if same {
            self.changed.notify(usize::MAX);
            return false;
        }
        let high_watermark = role.high_watermark();
        *role = if state.leader == node && active {
            Role::Leader(LeaderReplica::new(
                node,
                state,
                &LogView(log),
                high_watermark,
                now_ms,
            ))
        } else if state.leader == NO_LEADER || state.leader == node {
            Role::Offline { high_watermark }
        } else {
            Role::Follower(FollowerReplica::new(state, high_watermark))
        };
        self.changed.notify(usize::MAX);
        true
    }
}
