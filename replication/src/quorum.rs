//! The controller quorum: the metadata log replicated with Raft, on `raft` (tikv/raft-rs).
//!
//! raft-rs is a state machine without a runtime: it is ticked, stepped with messages and
//! asked for its `Ready` work. `Quorum` wraps it for weir: entries carry metadata records
//! (`crate::metadata`), the Raft log lives in memory from the last snapshot on, and the
//! driver (the broker's shard 0, or the simulator in `tests/`) makes each `QuorumWork`
//! durable before calling `advance`, which releases the messages that promise that
//! durability to others (votes, append acknowledgements).
//!
//! Raft ids are node ids plus one: raft-rs reserves id 0 for "none".

/// The protobuf message trait of raft-rs's types (entries, snapshots, hard states), for
/// drivers that store them.
pub use protobuf::Message as ProtoMessage;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, HardState,
    Message, Snapshot, SnapshotMetadata,
};
use raft::{GetEntriesContext, RaftState, RawNode, StateRole, Storage};

use crate::ReplicationError;
use crate::metadata::NodeId;

pub fn raft_id(node: NodeId) -> u64 {
    node as u64 + 1
}

pub fn node_of(raft_id: u64) -> NodeId {
    raft_id as NodeId - 1
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumConfig {
    pub node: NodeId,
    /// Ticks without hearing from a leader before a follower campaigns (raft-rs
    /// randomizes it within `[election_ticks, 2 * election_ticks)`).
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Bytes of entries per append message.
    pub max_message_bytes: u64,
    pub max_inflight_messages: usize,
}

/// The Raft log and state as raft-rs reads them, all in memory: the latest snapshot and
/// the entries after it. The driver keeps a durable copy.
#[derive(Debug, Clone, Default)]
pub struct QuorumStorage {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    entries: Vec<Entry>,
}

impl QuorumStorage {
    /// A new member of the cluster formed by `voters`: no log yet, and the configuration
    /// every initial member starts from.
    pub fn bootstrap(voters: &[NodeId]) -> QuorumStorage {
        let mut storage = QuorumStorage::default();
        storage.conf_state.voters = voters.iter().map(|n| raft_id(*n)).collect();
        storage
            .snapshot
            .mut_metadata()
            .set_conf_state(storage.conf_state.clone());
        storage
    }

    /// What the driver stored: the last snapshot (data and metadata), the entries after
    /// it, the hard state and the configuration.
    pub fn restore(
        snapshot: Snapshot,
        entries: Vec<Entry>,
        hard_state: HardState,
        conf_state: ConfState,
    ) -> Result<QuorumStorage, ReplicationError> {
        let first = snapshot.get_metadata().index + 1;
        for (expected, entry) in (first..).zip(&entries) {
            if entry.index != expected {
                return Err(ReplicationError::Corrupt {
                    what: "metadata log",
                    reason: format!("entry {} where {expected} was expected", entry.index),
                });
            }
        }
        Ok(QuorumStorage {
            hard_state,
            conf_state,
            snapshot,
            entries,
        })
    }

    fn first(&self) -> u64 {
        self.snapshot.get_metadata().index + 1
    }

    fn last(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot.get_metadata().index, |e| e.index)
    }

    fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        assert!(
            first.index >= self.first() && first.index <= self.last() + 1,
            "raft appends {} to a log of {}..={}",
            first.index,
            self.first(),
            self.last()
        );
        self.entries.truncate((first.index - self.first()) as usize);
        self.entries.extend_from_slice(entries);
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) {
        let meta = snapshot.get_metadata();
        if meta.index < self.first() {
            return;
        }
        let keep = self
            .entries
            .iter()
            .position(|e| e.index == meta.index && e.term == meta.term);
        match keep {
            // The snapshot covers a prefix of what we hold: keep the rest.
            Some(position) => {
                self.entries.drain(..=position);
            }
            None => self.entries.clear(),
        }
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.conf_state = meta.get_conf_state().clone();
        self.snapshot = snapshot;
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        self.snapshot.get_metadata()
    }

    pub fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

impl Storage for QuorumStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let offset = self.first();
        let mut entries = self.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let meta = self.snapshot.get_metadata();
        if index == meta.index {
            return Ok(meta.term);
        }
        if index < self.first() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if index > self.last() {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        Ok(self.entries[(index - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot.get_metadata().index < request_index {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

/// One round of work raft asks for. The driver sends `messages` at once, installs
/// `snapshot` and applies `committed` (both were durable before), makes `entries`,
/// `hard_state` and (if present) the snapshot durable, and then calls
/// [`Quorum::advance`].
#[derive(Debug)]
pub struct QuorumWork {
    pub messages: Vec<Message>,
    /// A snapshot received from the leader: the image it holds replaces ours.
    pub snapshot: Option<Snapshot>,
    pub committed: Vec<Committed>,
    /// Entries to make durable: they replace whatever the durable log holds from the
    /// first one's index on.
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    /// The configuration changed (a committed conf change): make it durable too.
    pub conf_state: Option<ConfState>,
    ready: raft::Ready,
}

/// What `advance` releases.
#[derive(Debug, Default)]
pub struct QuorumAdvance {
    pub messages: Vec<Message>,
    pub committed: Vec<Committed>,
    pub conf_state: Option<ConfState>,
    pub commit_index: Option<u64>,
}

/// A committed entry, for the driver to apply in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub index: u64,
    pub term: u64,
    /// The encoded metadata records; empty for the entries raft itself writes (a new
    /// leader's first entry, configuration changes).
    pub data: Vec<u8>,
}

/// A proposal's place in the log: it is committed if the entry applied at `index` has
/// `term`, and lost if it has another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposal {
    pub index: u64,
    pub term: u64,
}

pub struct Quorum {
    raw: RawNode<QuorumStorage>,
    node: NodeId,
    /// For the simulator: election timeouts drawn from a seeded generator, so that a
    /// seed replays exactly (raft-rs draws them from the thread's generator).
    seeded: Option<SplitMix>,
    /// The election timeout last drawn from `seeded`.
    drawn_timeout: usize,
}

impl std::fmt::Debug for Quorum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quorum")
            .field("node", &self.node)
            .field("term", &self.raw.raft.term)
            .field("role", &self.raw.raft.state)
            .field("leader", &self.leader())
            .field("applied", &self.raw.raft.raft_log.applied)
            .field("drawn_timeout", &self.drawn_timeout)
            .field(
                "election_timeout",
                &self.raw.raft.randomized_election_timeout(),
            )
            .field("election_elapsed", &self.raw.raft.election_elapsed)
            .finish()
    }
}

impl Quorum {
    /// Opens the node on `storage`, having applied everything up to `applied` (the
    /// snapshot's index, or more if the driver replayed entries into its image).
    pub fn new(
        config: &QuorumConfig,
        storage: QuorumStorage,
        applied: u64,
        logger: &slog::Logger,
        seed: Option<u64>,
    ) -> Result<Quorum, ReplicationError> {
        let raft_config = raft::Config {
            id: raft_id(config.node),
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied,
            max_size_per_msg: config.max_message_bytes,
            max_inflight_msgs: config.max_inflight_messages,
            // A leader that cannot reach a majority steps down, and a partitioned node
            // rejoining does not disrupt the leader with a higher term.
            check_quorum: true,
            pre_vote: true,
            ..raft::Config::default()
        };
        raft_config.validate().map_err(raft_error)?;
        let raw = RawNode::new(&raft_config, storage, logger).map_err(raft_error)?;
        let mut quorum = Quorum {
            drawn_timeout: 0,
            raw,
            node: config.node,
            seeded: seed.map(SplitMix),
        };
        quorum.reseed_election_timeout();
        Ok(quorum)
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        match self.raw.raft.leader_id {
            0 => None,
            id => Some(node_of(id)),
        }
    }

    /// Whether this node leads and has applied everything committed before its term (the
    /// entry raft appends when a leader takes over is applied): only then does its image
    /// show every decision of earlier controllers, so only then may it decide.
    pub fn can_decide(&self) -> bool {
        self.is_leader()
            && self
                .raw
                .raft
                .raft_log
                .term(self.applied())
                .is_ok_and(|term| term == self.term())
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn applied(&self) -> u64 {
        self.raw.raft.raft_log.applied
    }

    pub fn committed(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    pub fn storage(&self) -> &QuorumStorage {
        self.raw.store()
    }

    /// The voters and learners now in force.
    pub fn members(&self) -> (Vec<NodeId>, Vec<NodeId>) {
        let conf = &self.raw.store().conf_state;
        (
            conf.voters.iter().map(|id| node_of(*id)).collect(),
            conf.learners.iter().map(|id| node_of(*id)).collect(),
        )
    }

    pub fn tick(&mut self) {
        self.raw.tick();
        self.reseed_election_timeout();
    }

    /// A message from another node. Messages that do not fit (from an older term, for
    /// another node) are dropped by raft-rs itself.
    pub fn step(&mut self, message: Message) -> Result<(), ReplicationError> {
        let result = self.raw.step(message);
        self.reseed_election_timeout();
        match result {
            Ok(()) | Err(raft::Error::StepPeerNotFound) | Err(raft::Error::StepLocalMsg) => Ok(()),
            Err(error) => Err(raft_error(error)),
        }
    }

    /// Proposes the encoded records of one entry; only the leader may.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<Proposal, ReplicationError> {
        if !self.is_leader() {
            return Err(ReplicationError::NotLeader {
                leader: self.leader(),
            });
        }
        self.raw.propose(Vec::new(), data).map_err(raft_error)?;
        Ok(Proposal {
            index: self.raw.raft.raft_log.last_index(),
            term: self.raw.raft.term,
        })
    }

    /// Proposes adding `node` as a learner: it receives the log and votes in nothing.
    pub fn add_learner(&mut self, node: NodeId) -> Result<Proposal, ReplicationError> {
        if !self.is_leader() {
            return Err(ReplicationError::NotLeader {
                leader: self.leader(),
            });
        }
        let mut change = ConfChangeSingle::default();
        change.set_change_type(ConfChangeType::AddLearnerNode);
        change.node_id = raft_id(node);
        let mut changes = ConfChangeV2::default();
        changes.set_changes(vec![change].into());
        self.raw
            .propose_conf_change(Vec::new(), changes)
            .map_err(raft_error)?;
        Ok(Proposal {
            index: self.raw.raft.raft_log.last_index(),
            term: self.raw.raft.term,
        })
    }

    /// Whether a configuration change is proposed and not yet applied (raft-rs takes one
    /// at a time).
    pub fn conf_change_pending(&self) -> bool {
        self.raw.raft.has_pending_conf()
    }

    /// Starts an election now (a lone voter need not wait for its election timeout).
    pub fn campaign(&mut self) -> Result<(), ReplicationError> {
        self.raw.campaign().map_err(raft_error)
    }

    /// The peer could not be reached: raft-rs stops pipelining to it until it answers.
    pub fn report_unreachable(&mut self, node: NodeId) {
        self.raw.report_unreachable(raft_id(node));
    }

    /// The next round of work, if raft has any.
    pub fn ready(&mut self) -> Result<Option<QuorumWork>, ReplicationError> {
        if !self.raw.has_ready() {
            return Ok(None);
        }
        let mut ready = self.raw.ready();
        let messages = ready.take_messages();
        let snapshot = if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            self.raw.mut_store().apply_snapshot(snapshot.clone());
            Some(snapshot)
        } else {
            None
        };
        let (committed, conf_state) = self.take_committed(ready.take_committed_entries())?;
        let entries = ready.take_entries();
        self.raw.mut_store().append(&entries);
        let hard_state = ready.hs().cloned();
        if let Some(hs) = &hard_state {
            self.raw.mut_store().hard_state = hs.clone();
        }
        self.reseed_election_timeout();
        Ok(Some(QuorumWork {
            messages,
            snapshot,
            committed,
            entries,
            hard_state,
            conf_state,
            ready,
        }))
    }

    /// The driver made `work` durable: the messages that depended on it may go, and more
    /// entries may be committed.
    pub fn advance(&mut self, mut work: QuorumWork) -> Result<QuorumAdvance, ReplicationError> {
        let mut messages = work.ready.take_persisted_messages();
        let mut light = self.raw.advance(work.ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().hard_state.commit = commit;
        }
        messages.extend(light.take_messages());
        let (committed, conf_state) = self.take_committed(light.take_committed_entries())?;
        self.raw.advance_apply();
        Ok(QuorumAdvance {
            messages,
            committed,
            conf_state,
            commit_index: light.commit_index(),
        })
    }

    /// Replaces the log up to `applied` (everything applied so far) with a snapshot
    /// holding `data` (the image). Returns it for the driver to make durable before it
    /// drops those entries from its durable log.
    pub fn compact(&mut self, data: Vec<u8>) -> Result<Snapshot, ReplicationError> {
        let applied = self.applied();
        let term = self.raw.store().term(applied).map_err(raft_error)?;
        let store = self.raw.mut_store();
        let mut snapshot = Snapshot {
            data: data.into(),
            ..Snapshot::default()
        };
        let meta = snapshot.mut_metadata();
        meta.index = applied;
        meta.term = term;
        meta.set_conf_state(store.conf_state.clone());
        let first = store.first();
        store.entries.drain(..(applied + 1 - first) as usize);
        store.snapshot = snapshot.clone();
        Ok(snapshot)
    }

    fn apply_conf_change(
        &mut self,
        change: &impl raft_proto::ConfChangeI,
    ) -> Result<ConfState, ReplicationError> {
        let state = self.raw.apply_conf_change(change).map_err(raft_error)?;
        self.raw.mut_store().conf_state = state.clone();
        Ok(state)
    }

    fn take_committed(
        &mut self,
        entries: Vec<Entry>,
    ) -> Result<(Vec<Committed>, Option<ConfState>), ReplicationError> {
        let mut committed = Vec::with_capacity(entries.len());
        let mut conf_state = None;
        for entry in entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal => committed.push(Committed {
                    index: entry.index,
                    term: entry.term,
                    data: entry.data.to_vec(),
                }),
                EntryType::EntryConfChangeV2 => {
                    let change: ConfChangeV2 = decode("configuration change", &entry.data)?;
                    conf_state = Some(self.apply_conf_change(&change)?);
                    committed.push(Committed {
                        index: entry.index,
                        term: entry.term,
                        data: Vec::new(),
                    });
                }
                EntryType::EntryConfChange => {
                    let change: raft::eraftpb::ConfChange =
                        decode("configuration change", &entry.data)?;
                    conf_state = Some(self.apply_conf_change(&change)?);
                    committed.push(Committed {
                        index: entry.index,
                        term: entry.term,
                        data: Vec::new(),
                    });
                }
            }
        }
        Ok((committed, conf_state))
    }

    /// With a seed, replaces the election timeout raft-rs drew from the thread's generator
    /// with one drawn from the seeded one, within raft-rs's range. raft-rs draws one
    /// whenever it resets its election timer, which leaves `election_elapsed` at 0; so
    /// whenever it is 0 after a call, a new one is drawn (also when a follower merely
    /// heard from its leader: a harmless extra draw, and the rule depends on nothing but
    /// the inputs, so a seed replays exactly).
    fn reseed_election_timeout(&mut self) {
        let Some(rng) = &mut self.seeded else { return };
        if self.raw.raft.election_elapsed != 0 {
            return;
        }
        let base = self.raw.raft.election_timeout();
        let timeout = base + (rng.next() % base as u64) as usize;
        self.raw.raft.set_randomized_election_timeout(timeout);
        self.drawn_timeout = timeout;
    }
}

/// Encodes a Raft message for the wire.
pub fn encode_message(message: &Message) -> Vec<u8> {
    message
        .write_to_bytes()
        .unwrap_or_else(|error| panic!("encoding a raft message cannot fail: {error}"))
}

/// Decodes a Raft message from a peer.
pub fn decode_message(bytes: &[u8]) -> Result<Message, ReplicationError> {
    Message::parse_from_bytes(bytes).map_err(|e| ReplicationError::Corrupt {
        what: "raft message",
        reason: e.to_string(),
    })
}

/// Encodes a log entry, snapshot, hard state or configuration for the driver's files.
pub fn encode<M: protobuf::Message>(message: &M) -> Vec<u8> {
    message
        .write_to_bytes()
        .unwrap_or_else(|error| panic!("encoding raft state cannot fail: {error}"))
}

pub fn decode<M: protobuf::Message>(
    what: &'static str,
    bytes: &[u8],
) -> Result<M, ReplicationError> {
    M::parse_from_bytes(bytes).map_err(|e| ReplicationError::Corrupt {
        what,
        reason: e.to_string(),
    })
}

/// The addressee of a message, as a node id.
pub fn recipient(message: &Message) -> NodeId {
    node_of(message.to)
}

fn raft_error(error: raft::Error) -> ReplicationError {
    ReplicationError::Raft(error.to_string())
}

/// A small seeded generator (SplitMix64): election timeouts in simulation, and the
/// simulator's own choices.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A slog drain that hands raft-rs's log lines to `tracing` (warnings and errors at their
/// level, the rest at trace).
#[derive(Debug, Clone, Copy)]
pub struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        _values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", record.msg());
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Info => tracing::debug!(target: "raft", "{}", record.msg()),
            _ => tracing::trace!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}

/// The logger to hand `Quorum::new`.
pub fn logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

#[cfg(test)]
mod tests;
