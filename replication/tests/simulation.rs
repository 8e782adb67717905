//! Proves, over thousands of seeds, that the replication logic keeps Kafka's promise:
//! with replication factor 3 and `min.insync.replicas` 2, no acknowledged write is ever
//! lost or moved, replicas agree below the high watermark, the metadata log never
//! applies two different entries at one index, and no two brokers lead one partition in
//! one leader epoch. After the faults heal, every partition has a leader again and takes
//! writes.
//!
//! One seeded, single-threaded world drives 3 to 5 nodes, each running the very state
//! machines the broker runs (`Quorum` over raft-rs, `Controller`, `LeaderReplica`,
//! `FollowerReplica`), through random message delays (so reorders), drops, network
//! partitions, crashes that lose every unsynced write of the partition logs, and
//! restarts. A failing seed is printed; `SIMULATION_SEED=<seed>` replays it alone, and
//! `SIMULATION_SEEDS=<n>` runs more (or fewer) seeds, from `SIMULATION_FIRST_SEED` (0).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use weir_replication::quorum::{self, QuorumConfig};
use weir_replication::{
    Controller, ControllerAnswer, ControllerConfig, ControllerError, ControllerRequest, Endpoint,
    FetchAnswer, FetchPosition, FetchRefusal, FollowerAction, FollowerReplica, InternalTopic,
    LeaderReplica, MetadataImage, NO_LEADER, NodeId, PartitionState, Proposal, Quorum,
    QuorumStorage, ReplicaLog, ReplicationConfig, metadata,
};

/// Prints a line of the run with `SIMULATION_TRACE` set (a macro: it borrows only the
/// world's `trace` and `now` fields).
macro_rules! trace {
    ($world:expr, $($arg:tt)*) => {
        if $world.trace {
            eprintln!("{:>6} {}", $world.now, format!($($arg)*));
        }
    };
}

const TOPIC: &str = "t";
const TICK_MS: u64 = 10;
const HEARTBEAT_MS: u64 = 50;
const FETCH_IDLE_MS: u64 = 10;
const FETCH_TIMEOUT_MS: u64 = 100;
const RECORDS_PER_FETCH: usize = 32;
const SNAPSHOT_EVERY: u64 = 40;
const MIN_INSYNC_REPLICAS: usize = 2;

// ---- a seeded generator ------------------------------------------------------------

/// The simulator's choices, from the seed.
#[derive(Debug, Clone)]
struct Rng(quorum::SplitMix);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

// ---- a partition log in memory ------------------------------------------------------

/// A replica's log: the epoch and value of each record; a crash keeps `durable` of them.
#[derive(Debug, Clone, Default)]
struct SimLog {
    records: Vec<(i32, u64)>,
    durable: usize,
}

impl SimLog {
    fn truncate(&mut self, offset: i64) {
        let keep = offset.max(0) as usize;
        self.records.truncate(keep);
        self.durable = self.durable.min(keep);
    }
}

impl ReplicaLog for SimLog {
    fn log_start_offset(&self) -> i64 {
        0
    }
    fn log_end_offset(&self) -> i64 {
        self.records.len() as i64
    }
    fn committable_end_offset(&self) -> i64 {
        self.durable as i64
    }
    fn latest_epoch(&self) -> Option<i32> {
        self.records.last().map(|(e, _)| *e)
    }
    fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        // The epoch cache: epochs only grow along the log.
        let found = self
            .records
            .iter()
            .map(|(e, _)| *e)
            .take_while(|e| *e <= epoch)
            .last()?;
        let end = self
            .records
            .iter()
            .position(|(e, _)| *e > found)
            .map_or(self.records.len(), |p| p) as i64;
        Some((found, end))
    }
}

// ---- messages and events -------------------------------------------------------------

#[derive(Debug, Clone)]
enum FetchResult {
    Records {
        from: i64,
        records: Vec<(i32, u64)>,
        high_watermark: i64,
    },
    Diverging {
        epoch: i32,
        end_offset: i64,
    },
    Refused(FetchRefusal),
}

#[derive(Debug, Clone)]
enum Wire {
    Raft(Vec<u8>),
    Controller {
        id: u64,
        request: ControllerRequest,
    },
    ControllerReply {
        id: u64,
        result: Result<ControllerAnswer, ControllerError>,
    },
    Fetch {
        partition: i32,
        position: FetchPosition,
    },
    FetchReply {
        partition: i32,
        asked: FetchPosition,
        result: FetchResult,
    },
}

#[derive(Debug)]
enum Event {
    Tick(NodeId),
    Deliver {
        from: NodeId,
        to: NodeId,
        incarnation: u64,
        wire: Wire,
    },
    /// A partition log's disk write ended: records below `to` are durable.
    Synced {
        node: NodeId,
        incarnation: u64,
        partition: i32,
        to: usize,
    },
    /// A follower fetches again after an empty answer or a refusal (the broker long-polls).
    Retry {
        node: NodeId,
        incarnation: u64,
        partition: i32,
    },
    Produce,
    Crash(NodeId),
    Restart(NodeId),
    Cut(Vec<(NodeId, NodeId)>),
    Heal,
}

// ---- a node -----------------------------------------------------------------------

#[derive(Debug)]
enum Role {
    Leader {
        replica: LeaderReplica,
        /// Produces waiting for the high watermark: (end offset, value).
        waiting: Vec<(i64, u64)>,
    },
    Follower {
        replica: FollowerReplica,
        /// When the fetch in flight was sent: one lost on the way is given up after
        /// `FETCH_TIMEOUT_MS` (the broker's request timeout).
        fetching: Option<u64>,
        /// Appended, waiting for the sync before fetching again.
        syncing: bool,
    },
    Offline,
}

#[derive(Debug)]
struct PartitionReplica {
    log: SimLog,
    role: Role,
    /// The high watermark this replica knew last (taken into leadership).
    high_watermark: i64,
}

/// A proposal on its way: who to answer (none for the controller's own ticks), and with
/// what.
type InFlight = (Proposal, Option<(NodeId, u64)>, ControllerAnswer);

struct ActiveController {
    controller: Controller,
    queue: VecDeque<(NodeId, u64, ControllerRequest)>,
    in_flight: Option<InFlight>,
}

struct Node {
    id: NodeId,
    up: bool,
    incarnation: u64,
    quorum: Quorum,
    /// What survives a crash of the quorum's state (synced at every `advance`).
    durable_quorum: QuorumStorage,
    image: MetadataImage,
    controller: Option<ActiveController>,
    partitions: BTreeMap<i32, PartitionReplica>,
    next_request: u64,
    /// Controller requests this node is waiting on: id → request.
    asked: BTreeMap<u64, ControllerRequest>,
    registered: bool,
    last_heartbeat_ms: u64,
    last_snapshot_index: u64,
}

// ---- the world ----------------------------------------------------------------------

struct World {
    seed: u64,
    rng: Rng,
    now: u64,
    sequence: u64,
    events: BinaryHeap<Reverse<(u64, u64)>>,
    pending: BTreeMap<u64, Event>,
    nodes: Vec<Node>,
    cut: BTreeSet<(NodeId, NodeId)>,
    drop_per_mille: u64,
    controller_config: ControllerConfig,
    replication: ReplicationConfig,
    next_value: u64,
    /// value → (partition, offset), for every acknowledged write.
    acknowledged: BTreeMap<u64, (i32, i64)>,
    /// (partition, offset) → value acknowledged there.
    acknowledged_at: BTreeMap<(i32, i64), u64>,
    /// Raft index → (term, data) of what any node applied there.
    applied: BTreeMap<u64, (u64, Vec<u8>)>,
    /// (partition, leader epoch) → the leader some image named.
    epoch_leaders: BTreeMap<(i32, i32), NodeId>,
    violations: Vec<String>,
    trace: bool,
}

fn quorum_config(node: NodeId) -> QuorumConfig {
    QuorumConfig {
        node,
        election_ticks: 10,
        heartbeat_ticks: 2,
        max_message_bytes: 64 << 10,
        max_inflight_messages: 32,
    }
}

fn endpoint(node: NodeId) -> Endpoint {
    Endpoint {
        host: format!("10.0.0.{node}"),
        native_port: 9192,
        kafka_port: 9092,
        kafka_listeners: Vec::new(),
    }
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng(quorum::SplitMix(seed));
        let count = if rng.chance(300) { 5 } else { 3 };
        let partitions = 1 + rng.below(2) as i32;
        let voters: Vec<NodeId> = (0..count).collect();
        let controller_config = ControllerConfig {
            session_timeout_ms: 300,
            leader_rebalance_interval_ms: 1000,
            default_replication_factor: 3,
            initial_brokers: count as usize,
            internal_topics: vec![InternalTopic {
                name: TOPIC.into(),
                partitions,
                replication_factor: 3,
                configs: vec![],
            }],
            new_cluster_id: "simulated".into(),
        };
        let nodes = voters
            .iter()
            .map(|id| {
                let storage = QuorumStorage::bootstrap(&voters);
                Node {
                    id: *id,
                    up: true,
                    incarnation: 1,
                    quorum: Quorum::new(
                        &quorum_config(*id),
                        storage.clone(),
                        0,
                        &quorum::logger(),
                        Some(seed ^ ((*id as u64 + 1) * 0x1234_5678)),
                    )
                    .unwrap(),
                    durable_quorum: storage,
                    image: MetadataImage::default(),
                    controller: None,
                    partitions: BTreeMap::new(),
                    next_request: 0,
                    asked: BTreeMap::new(),
                    registered: false,
                    last_heartbeat_ms: 0,
                    last_snapshot_index: 0,
                }
            })
            .collect();
        let mut world = World {
            seed,
            drop_per_mille: rng.below(50),
            rng,
            now: 0,
            sequence: 0,
            events: BinaryHeap::new(),
            pending: BTreeMap::new(),
            nodes,
            cut: BTreeSet::new(),
            controller_config,
            replication: ReplicationConfig {
                replica_lag_time_max_ms: 300,
                isr_change_retry_ms: 200,
            },
            next_value: 0,
            acknowledged: BTreeMap::new(),
            acknowledged_at: BTreeMap::new(),
            applied: BTreeMap::new(),
            epoch_leaders: BTreeMap::new(),
            violations: Vec::new(),
            trace: std::env::var("SIMULATION_TRACE").is_ok(),
        };
        for id in 0..count {
            // Nodes tick out of step with each other.
            let at = world.rng.below(TICK_MS);
            world.schedule(at, Event::Tick(id));
        }
        world
    }

    fn schedule(&mut self, delay: u64, event: Event) {
        self.sequence += 1;
        self.events.push(Reverse((self.now + delay, self.sequence)));
        self.pending.insert(self.sequence, event);
    }

    fn violation(&mut self, what: String) {
        trace!(self, "VIOLATION {what}");
        self.violations.push(what);
    }

    /// How long a write takes to become durable: usually a few milliseconds, now and then
    /// a stall of tens (as real disks do).
    fn disk_delay(&mut self) -> u64 {
        if self.rng.chance(100) {
            self.rng.between(10, 80)
        } else {
            self.rng.between(1, 5)
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, wire: Wire) {
        if self.cut.contains(&(from, to)) || self.rng.chance(self.drop_per_mille) {
            return;
        }
        let delay = self.rng.between(1, 8);
        let incarnation = self.nodes[to as usize].incarnation;
        self.schedule(
            delay,
            Event::Deliver {
                from,
                to,
                incarnation,
                wire,
            },
        );
    }

    fn run_until(&mut self, end: u64) {
        while let Some(Reverse((at, sequence))) = self.events.peek().copied() {
            if at > end {
                break;
            }
            self.events.pop();
            self.now = at;
            let event = self.pending.remove(&sequence).expect("scheduled event");
            self.handle(event);
        }
        self.now = end;
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick(node) => {
                self.schedule(TICK_MS, Event::Tick(node));
                if self.nodes[node as usize].up {
                    self.tick(node);
                }
            }
            Event::Deliver {
                from,
                to,
                incarnation,
                wire,
            } => {
                let node = &self.nodes[to as usize];
                // Messages to a node that crashed since they were sent are lost.
                if node.up && node.incarnation == incarnation && !self.cut.contains(&(from, to)) {
                    self.deliver(from, to, wire);
                }
            }
            Event::Synced {
                node,
                incarnation,
                partition,
                to,
            } => self.synced(node, incarnation, partition, to),
            Event::Retry {
                node,
                incarnation,
                partition,
            } => self.retry(node, incarnation, partition),
            Event::Produce => self.produce(),
            Event::Crash(node) => self.crash(node),
            Event::Restart(node) => self.restart(node),
            Event::Cut(links) => {
                trace!(self, "cut {links:?}");
                self.cut.extend(links);
            }
            Event::Heal => {
                trace!(self, "heal");
                self.cut.clear();
            }
        }
    }

    // ---- quorum ----

    fn tick(&mut self, id: NodeId) {
        self.nodes[id as usize].quorum.tick();
        self.drain_quorum(id);
        self.controller_step(id);
        self.broker_duties(id);
        self.partition_duties(id);
    }

    fn drain_quorum(&mut self, id: NodeId) {
        loop {
            let node = &mut self.nodes[id as usize];
            let Some(mut work) = node.quorum.ready().unwrap() else {
                break;
            };
            let messages = std::mem::take(&mut work.messages);
            let snapshot = work.snapshot.take();
            let committed = std::mem::take(&mut work.committed);
            for message in messages {
                let to = quorum::recipient(&message);
                self.send(id, to, Wire::Raft(quorum::encode_message(&message)));
            }
            if let Some(snapshot) = snapshot {
                let image = metadata::decode_snapshot(&snapshot.data).unwrap();
                self.nodes[id as usize].image = MetadataImage::from_snapshot(image);
                trace!(
                    self,
                    "n{id} installs snapshot @{}",
                    snapshot.get_metadata().index
                );
                self.image_changed(id);
            }
            self.apply(id, committed);
            let node = &mut self.nodes[id as usize];
            // Synchronous durability: the state raft-rs holds now is what a crash keeps.
            node.durable_quorum = node.quorum.storage().clone();
            let after = node.quorum.advance(work).unwrap();
            node.durable_quorum = node.quorum.storage().clone();
            for message in after.messages {
                let to = quorum::recipient(&message);
                self.send(id, to, Wire::Raft(quorum::encode_message(&message)));
            }
            self.apply(id, after.committed);
        }
        self.maybe_snapshot(id);
        let node = &mut self.nodes[id as usize];
        if node.quorum.is_leader() && node.controller.is_none() {
            node.controller = Some(ActiveController {
                controller: Controller::new(self.controller_config.clone(), self.now)
                    .running_on(id),
                queue: VecDeque::new(),
                in_flight: None,
            });
            trace!(
                self,
                "n{id} becomes controller in term {}",
                self.nodes[id as usize].quorum.term()
            );
        } else if !node.quorum.is_leader() && node.controller.is_some() {
            let active = node.controller.take().unwrap();
            let leader = node.quorum.leader();
            let refused = active
                .queue
                .into_iter()
                .map(|(from, request_id, _)| (from, request_id))
                .chain(active.in_flight.and_then(|(_, to, _)| to));
            let refused: Vec<_> = refused.collect();
            for (from, request_id) in refused {
                self.reply(
                    id,
                    from,
                    request_id,
                    Err(ControllerError::NotController { leader }),
                );
            }
        }
    }

    fn apply(&mut self, id: NodeId, committed: Vec<weir_replication::Committed>) {
        let mut changed = false;
        for entry in committed {
            match self.applied.get(&entry.index) {
                Some((term, data)) if *term != entry.term || *data != entry.data => {
                    let what = format!(
                        "n{id} applied entry {} of term {} where another node applied term {term}",
                        entry.index, entry.term
                    );
                    self.violation(what);
                }
                Some(_) => {}
                None => {
                    self.applied
                        .insert(entry.index, (entry.term, entry.data.clone()));
                }
            }
            let node = &mut self.nodes[id as usize];
            if entry.index <= node.image.applied_index {
                continue;
            }
            let records = if entry.data.is_empty() {
                Vec::new()
            } else {
                metadata::decode_records(&entry.data).unwrap()
            };
            node.image.apply(entry.index, &records);
            changed = true;
            // Answer the request whose proposal this entry is (or was meant to be).
            if let Some(active) = &mut node.controller
                && let Some((proposal, _, _)) = &active.in_flight
                && proposal.index <= entry.index
            {
                let (proposal, to, answer) = active.in_flight.take().unwrap();
                let result = if proposal.index == entry.index && proposal.term == entry.term {
                    Ok(answer)
                } else {
                    Err(ControllerError::NotController { leader: None })
                };
                if let Some((from, request_id)) = to {
                    self.reply(id, from, request_id, result);
                }
            }
        }
        if changed {
            self.image_changed(id);
        }
    }

    fn maybe_snapshot(&mut self, id: NodeId) {
        let node = &mut self.nodes[id as usize];
        let applied = node.quorum.applied();
        if applied < node.last_snapshot_index + SNAPSHOT_EVERY
            || node.image.applied_index != applied
        {
            return;
        }
        let data = metadata::encode_snapshot(&node.image.snapshot());
        node.quorum.compact(data).unwrap();
        node.durable_quorum = node.quorum.storage().clone();
        node.last_snapshot_index = applied;
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, wire: Wire) {
        match wire {
            Wire::Raft(bytes) => {
                let message = quorum::decode_message(&bytes).unwrap();
                self.nodes[to as usize].quorum.step(message).unwrap();
                self.drain_quorum(to);
            }
            Wire::Controller { id, request } => {
                match &mut self.nodes[to as usize].controller {
                    Some(active) => active.queue.push_back((from, id, request)),
                    None => {
                        let leader = self.nodes[to as usize].quorum.leader();
                        self.reply(to, from, id, Err(ControllerError::NotController { leader }));
                    }
                }
                self.controller_step(to);
            }
            Wire::ControllerReply { id, result } => self.controller_reply(to, id, result),
            Wire::Fetch {
                partition,
                position,
            } => self.leader_fetch(to, from, partition, position),
            Wire::FetchReply {
                partition,
                asked,
                result,
            } => self.follower_reply(to, partition, asked, result),
        }
    }

    fn reply(
        &mut self,
        from: NodeId,
        to: NodeId,
        id: u64,
        result: Result<ControllerAnswer, ControllerError>,
    ) {
        if from == to {
            self.controller_reply(to, id, result);
        } else {
            self.send(from, to, Wire::ControllerReply { id, result });
        }
    }

    // ---- controller ----

    fn controller_step(&mut self, id: NodeId) {
        let now = self.now;
        let node = &mut self.nodes[id as usize];
        let Some(active) = &mut node.controller else {
            return;
        };
        if active.in_flight.is_some() || !node.quorum.can_decide() {
            return;
        }
        let (records, to, answer) = match active.queue.pop_front() {
            Some((from, request_id, request)) => {
                match active.controller.decide(&node.image, &request, now) {
                    Ok(decision) => (decision.records, Some((from, request_id)), decision.answer),
                    Err(error) => {
                        trace!(self, "n{id} refuses {request:?}: {error}");
                        self.reply(id, from, request_id, Err(error));
                        return self.controller_step(id);
                    }
                }
            }
            None => (
                active.controller.tick(&node.image, now),
                None,
                ControllerAnswer::Done,
            ),
        };
        if records.is_empty() {
            if let Some((from, request_id)) = to {
                self.reply(id, from, request_id, Ok(answer));
                return self.controller_step(id);
            }
            return;
        }
        let description = format!("{records:?}");
        match node.quorum.propose(metadata::encode_records(&records)) {
            Ok(proposal) => {
                node.controller.as_mut().unwrap().in_flight = Some((proposal, to, answer));
                trace!(self, "n{id} proposes @{}: {description}", proposal.index);
                self.drain_quorum(id);
            }
            Err(_) => {
                if let Some((from, request_id)) = to {
                    self.reply(
                        id,
                        from,
                        request_id,
                        Err(ControllerError::NotController { leader: None }),
                    );
                }
            }
        }
    }

    fn ask_controller(&mut self, id: NodeId, request: ControllerRequest) {
        let node = &mut self.nodes[id as usize];
        let Some(controller) = node.quorum.leader() else {
            return;
        };
        node.next_request += 1;
        let request_id = node.next_request;
        node.asked.insert(request_id, request.clone());
        if controller == id {
            if let Some(active) = &mut node.controller {
                active.queue.push_back((id, request_id, request));
                self.controller_step(id);
            }
        } else {
            self.send(
                id,
                controller,
                Wire::Controller {
                    id: request_id,
                    request,
                },
            );
        }
    }

    fn controller_reply(
        &mut self,
        id: NodeId,
        request_id: u64,
        result: Result<ControllerAnswer, ControllerError>,
    ) {
        let node = &mut self.nodes[id as usize];
        let Some(request) = node.asked.remove(&request_id) else {
            return;
        };
        match (request, result) {
            (ControllerRequest::RegisterBroker { incarnation, .. }, Ok(_))
                if incarnation == node.incarnation =>
            {
                node.registered = true;
            }
            (
                ControllerRequest::Heartbeat { .. },
                Err(ControllerError::StaleBrokerEpoch { .. }),
            ) => {
                node.registered = false;
            }
            (
                ControllerRequest::AlterPartition {
                    partition,
                    leader_epoch,
                    isr,
                    ..
                },
                Err(ControllerError::IneligibleReplica(_)),
            ) => {
                if let Some(PartitionReplica {
                    role: Role::Leader { replica, .. },
                    ..
                }) = node.partitions.get_mut(&partition)
                    && replica.leader_epoch() == leader_epoch
                {
                    replica.isr_change_refused(&isr);
                }
            }
            _ => {}
        }
    }

    /// Registration and heartbeats.
    fn broker_duties(&mut self, id: NodeId) {
        let now = self.now;
        let node = &mut self.nodes[id as usize];
        if now.saturating_sub(node.last_heartbeat_ms) < HEARTBEAT_MS {
            return;
        }
        node.last_heartbeat_ms = now;
        // Requests never answered (lost on the way) are forgotten.
        node.asked.clear();
        let request = if node.registered {
            ControllerRequest::Heartbeat {
                node: id,
                incarnation: node.incarnation,
                applied_index: node.image.applied_index,
            }
        } else {
            ControllerRequest::RegisterBroker {
                node: id,
                incarnation: node.incarnation,
                endpoint: endpoint(id),
                shards: 1,
            }
        };
        self.ask_controller(id, request);
    }

    // ---- partitions ----

    fn image_changed(&mut self, id: NodeId) {
        let now = self.now;
        let Some(topic) = self.nodes[id as usize].image.topic(TOPIC).cloned() else {
            return;
        };
        for (index, state) in topic.partitions.iter().enumerate() {
            let index = index as i32;
            if state.leader != NO_LEADER {
                match self.epoch_leaders.get(&(index, state.leader_epoch)) {
                    Some(leader) if *leader != state.leader => {
                        let what = format!(
                            "partition {index} epoch {} led by {leader} and {}",
                            state.leader_epoch, state.leader
                        );
                        self.violation(what);
                    }
                    _ => {
                        self.epoch_leaders
                            .insert((index, state.leader_epoch), state.leader);
                    }
                }
            }
            self.become_replica(id, index, state, now);
        }
    }

    fn become_replica(&mut self, id: NodeId, index: i32, state: &PartitionState, now: u64) {
        let node = &mut self.nodes[id as usize];
        if state.replica(id).is_none() {
            return;
        }
        // A broker leads only once registered and unfenced in this incarnation: after a
        // restart its image is stale until it has caught up.
        let current = node
            .image
            .broker(id)
            .is_some_and(|b| b.incarnation == node.incarnation && !b.fenced);
        let leads = state.leader == id && current;
        let replica = node
            .partitions
            .entry(index)
            .or_insert_with(|| PartitionReplica {
                log: SimLog::default(),
                role: Role::Offline,
                high_watermark: 0,
            });
        match &mut replica.role {
            Role::Leader {
                replica: leader, ..
            } if leads && leader.leader_epoch() == state.leader_epoch => {
                leader.update(state, now);
                return;
            }
            Role::Follower {
                replica: follower, ..
            } if !leads
                && follower.leader == state.leader
                && follower.leader_epoch == state.leader_epoch =>
            {
                return;
            }
            Role::Leader {
                replica: leader, ..
            } => {
                replica.high_watermark = leader.high_watermark();
            }
            Role::Follower {
                replica: follower, ..
            } => {
                replica.high_watermark = follower.high_watermark();
            }
            Role::Offline => {}
        }
        replica.role = if leads {
            trace!(self, "n{id} leads p{index} in epoch {}", state.leader_epoch);
            Role::Leader {
                replica: LeaderReplica::new(id, state, &replica.log, replica.high_watermark, now),
                waiting: Vec::new(),
            }
        } else if state.leader == NO_LEADER {
            Role::Offline
        } else {
            Role::Follower {
                replica: FollowerReplica::new(state, replica.high_watermark),
                fetching: None,
                syncing: false,
            }
        };
    }

    fn partition_duties(&mut self, id: NodeId) {
        let now = self.now;
        let indexes: Vec<i32> = self.nodes[id as usize].partitions.keys().copied().collect();
        for index in indexes {
            let node = &mut self.nodes[id as usize];
            let replica = node.partitions.get_mut(&index).unwrap();
            match &mut replica.role {
                Role::Leader {
                    replica: leader, ..
                } => {
                    if let Some(isr) = leader.isr_change(&self.replication, now) {
                        let request = ControllerRequest::AlterPartition {
                            topic: TOPIC.into(),
                            partition: index,
                            leader: id,
                            leader_epoch: leader.leader_epoch(),
                            partition_epoch: leader.partition_epoch(),
                            isr,
                        };
                        self.ask_controller(id, request);
                    }
                }
                Role::Follower {
                    replica: follower,
                    fetching,
                    syncing,
                } => {
                    if fetching.is_some_and(|sent| now - sent > FETCH_TIMEOUT_MS) {
                        *fetching = None;
                    }
                    if fetching.is_none()
                        && !*syncing
                        && let Some(position) = follower.position(&replica.log)
                    {
                        *fetching = Some(now);
                        let leader = follower.leader;
                        self.send(
                            id,
                            leader,
                            Wire::Fetch {
                                partition: index,
                                position,
                            },
                        );
                    }
                }
                Role::Offline => {}
            }
        }
    }

    fn leader_fetch(&mut self, id: NodeId, follower: NodeId, index: i32, position: FetchPosition) {
        let now = self.now;
        let node = &mut self.nodes[id as usize];
        let result = match node.partitions.get_mut(&index) {
            Some(PartitionReplica {
                log,
                role: Role::Leader { replica, .. },
                ..
            }) => match replica.on_fetch(follower, position, log, now) {
                Ok(FetchAnswer::Read) => {
                    let from = position.fetch_offset;
                    let records: Vec<_> = log.records[from as usize..]
                        .iter()
                        .take(RECORDS_PER_FETCH)
                        .copied()
                        .collect();
                    FetchResult::Records {
                        from,
                        records,
                        high_watermark: replica.high_watermark(),
                    }
                }
                Ok(FetchAnswer::Diverging { epoch, end_offset }) => {
                    FetchResult::Diverging { epoch, end_offset }
                }
                Err(refusal) => FetchResult::Refused(refusal),
            },
            _ => FetchResult::Refused(FetchRefusal::NotLeader),
        };
        self.advance_high_watermark(id, index);
        self.send(
            id,
            follower,
            Wire::FetchReply {
                partition: index,
                asked: position,
                result,
            },
        );
    }

    fn advance_high_watermark(&mut self, id: NodeId, index: i32) {
        let node = &mut self.nodes[id as usize];
        let Some(PartitionReplica {
            log,
            role: Role::Leader { replica, waiting },
            ..
        }) = node.partitions.get_mut(&index)
        else {
            return;
        };
        let Some(hw) = replica.advance_high_watermark(log) else {
            return;
        };
        trace!(
            self,
            "n{id} p{index} high watermark {hw} (isr {:?}, {replica:?})",
            replica.isr()
        );
        let acked: Vec<(i64, u64)> = waiting
            .iter()
            .copied()
            .filter(|(end, _)| *end <= hw)
            .collect();
        waiting.retain(|(end, _)| *end > hw);
        let held: Vec<Option<u64>> = acked
            .iter()
            .map(|(end, _)| log.records.get(*end as usize - 1).map(|(_, v)| *v))
            .collect();
        for ((end, value), holds) in acked.into_iter().zip(held) {
            let offset = end - 1;
            if holds != Some(value) {
                let what = format!(
                    "n{id} acknowledges value {value} at p{index}@{offset}, which holds {holds:?}"
                );
                self.violation(what);
            }
            if let Some(other) = self.acknowledged_at.insert((index, offset), value)
                && other != value
            {
                let what =
                    format!("p{index}@{offset} acknowledged for {other} and then for {value}");
                self.violation(what);
            }
            self.acknowledged.insert(value, (index, offset));
        }
    }

    fn follower_reply(
        &mut self,
        id: NodeId,
        index: i32,
        asked: FetchPosition,
        result: FetchResult,
    ) {
        let incarnation = self.nodes[id as usize].incarnation;
        let delay = self.disk_delay();
        let node = &mut self.nodes[id as usize];
        let Some(replica) = node.partitions.get_mut(&index) else {
            return;
        };
        let Role::Follower {
            replica: follower,
            fetching,
            syncing,
        } = &mut replica.role
        else {
            return;
        };
        if asked.leader_epoch != follower.leader_epoch || fetching.is_none() {
            return;
        }
        *fetching = None;
        let log = &mut replica.log;
        match result {
            FetchResult::Records {
                from,
                records,
                high_watermark,
            } => {
                if from != log.log_end_offset() || asked.fetch_offset != from {
                    return;
                }
                let appended = !records.is_empty();
                log.records.extend(records);
                follower.on_records(high_watermark, log);
                if appended {
                    // every-batch: the next fetch waits for this sync.
                    *syncing = true;
                    let to = log.records.len();
                    self.schedule(
                        delay,
                        Event::Synced {
                            node: id,
                            incarnation,
                            partition: index,
                            to,
                        },
                    );
                } else {
                    // Nothing new: fetch again later (the broker long-polls instead).
                    *syncing = true;
                    self.schedule(
                        FETCH_IDLE_MS,
                        Event::Retry {
                            node: id,
                            incarnation,
                            partition: index,
                        },
                    );
                }
            }
            FetchResult::Diverging { epoch, end_offset } => {
                match follower.on_diverging(epoch, end_offset, log) {
                    FollowerAction::Truncate { offset } => {
                        trace!(self, "n{id} truncates p{index} to {offset}");
                        log.truncate(offset);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            FetchResult::Refused(FetchRefusal::OutOfRange {
                log_start_offset,
                log_end_offset,
            }) => match follower.on_out_of_range(log_start_offset, log_end_offset, log) {
                FollowerAction::Truncate { offset } | FollowerAction::Reset { offset } => {
                    log.truncate(offset);
                }
                FollowerAction::Append => {}
            },
            FetchResult::Refused(_) => {
                // The metadata will change; try again a little later.
                *syncing = true;
                self.schedule(
                    FETCH_IDLE_MS,
                    Event::Retry {
                        node: id,
                        incarnation,
                        partition: index,
                    },
                );
            }
        }
    }

    fn retry(&mut self, id: NodeId, incarnation: u64, index: i32) {
        let node = &mut self.nodes[id as usize];
        if !node.up || node.incarnation != incarnation {
            return;
        }
        if let Some(PartitionReplica {
            role: Role::Follower { syncing, .. },
            ..
        }) = node.partitions.get_mut(&index)
        {
            *syncing = false;
        }
        self.partition_duties(id);
    }

    fn synced(&mut self, id: NodeId, incarnation: u64, index: i32, to: usize) {
        let node = &mut self.nodes[id as usize];
        if !node.up || node.incarnation != incarnation {
            return;
        }
        let Some(replica) = node.partitions.get_mut(&index) else {
            return;
        };
        let to = to.min(replica.log.records.len());
        replica.log.durable = replica.log.durable.max(to);
        if let Role::Follower { syncing, .. } = &mut replica.role {
            *syncing = false;
        }
        self.advance_high_watermark(id, index);
        self.partition_duties(id);
    }

    // ---- clients and faults ----

    fn produce(&mut self) {
        let delay = self.rng.between(2, 8);
        self.schedule(delay, Event::Produce);
        let Some(partitions) = self
            .nodes
            .iter()
            .filter_map(|n| n.image.topic(TOPIC).map(|t| t.partition_count()))
            .max()
        else {
            return;
        };
        let index = self.rng.below(partitions as u64) as i32;
        // The client sends to a broker that believes it leads (clients follow metadata).
        let candidates: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| {
                n.up && matches!(
                    n.partitions.get(&index),
                    Some(PartitionReplica {
                        role: Role::Leader { .. },
                        ..
                    })
                )
            })
            .map(|n| n.id)
            .collect();
        if candidates.is_empty() {
            return;
        }
        let id = candidates[self.rng.below(candidates.len() as u64) as usize];
        self.next_value += 1;
        let value = self.next_value;
        let incarnation = self.nodes[id as usize].incarnation;
        let delay = self.disk_delay();
        let node = &mut self.nodes[id as usize];
        let replica = node.partitions.get_mut(&index).unwrap();
        let Role::Leader {
            replica: leader,
            waiting,
        } = &mut replica.role
        else {
            unreachable!()
        };
        if leader.in_sync_count() < MIN_INSYNC_REPLICAS {
            return;
        }
        replica.log.records.push((leader.leader_epoch(), value));
        let end = replica.log.records.len();
        waiting.push((end as i64, value));
        self.schedule(
            delay,
            Event::Synced {
                node: id,
                incarnation,
                partition: index,
                to: end,
            },
        );
    }

    fn crash(&mut self, id: NodeId) {
        let node = &mut self.nodes[id as usize];
        if !node.up {
            return;
        }
        trace!(self, "crash n{id}");
        node.up = false;
        node.controller = None;
        node.asked.clear();
        for replica in node.partitions.values_mut() {
            // Unsynced writes are lost.
            let durable = replica.log.durable as i64;
            replica.log.truncate(durable);
            replica.role = Role::Offline;
            replica.high_watermark = 0;
        }
    }

    fn restart(&mut self, id: NodeId) {
        let seed = self.seed;
        let node = &mut self.nodes[id as usize];
        if node.up {
            return;
        }
        trace!(self, "restart n{id}");
        let storage = node.durable_quorum.clone();
        let snapshot_index = storage.snapshot_metadata().index;
        let image = if snapshot_index > 0 {
            let data = &storage.latest_snapshot().data;
            MetadataImage::from_snapshot(metadata::decode_snapshot(data).unwrap())
        } else {
            MetadataImage::default()
        };
        node.incarnation += 1;
        node.quorum = Quorum::new(
            &quorum_config(id),
            storage,
            snapshot_index,
            &quorum::logger(),
            Some(seed ^ (node.incarnation * 0x9876_5431)),
        )
        .unwrap();
        node.image = image;
        node.up = true;
        node.registered = false;
        node.last_snapshot_index = snapshot_index;
        self.image_changed(id);
    }

    /// Random faults until `end`, then everything heals and restarts.
    fn nemesis(&mut self, end: u64) {
        let mut at = 300;
        let count = self.nodes.len() as u64;
        while at < end {
            let kind = self.rng.below(4);
            let victim = self.rng.below(count) as NodeId;
            let lasts = self.rng.between(100, 900);
            let start = at.saturating_sub(self.now);
            match kind {
                0 | 1 => {
                    self.schedule(start, Event::Crash(victim));
                    self.schedule(start + lasts, Event::Restart(victim));
                }
                2 => {
                    // One node cut off from every other.
                    let links: Vec<(NodeId, NodeId)> = (0..count as NodeId)
                        .filter(|n| *n != victim)
                        .flat_map(|n| [(n, victim), (victim, n)])
                        .collect();
                    self.schedule(start, Event::Cut(links));
                    self.schedule(start + lasts, Event::Heal);
                }
                _ => {
                    // One link, one way.
                    let other =
                        (victim + 1 + self.rng.below(count - 1) as NodeId) % count as NodeId;
                    self.schedule(start, Event::Cut(vec![(victim, other)]));
                    self.schedule(start + lasts, Event::Heal);
                }
            }
            at += self.rng.between(200, 700);
        }
    }

    fn heal_everything(&mut self) {
        self.cut.clear();
        self.drop_per_mille = 0;
        for id in 0..self.nodes.len() as NodeId {
            self.restart(id);
        }
    }

    // ---- checks ----

    fn check_replicas(&mut self) {
        let newest = self.nodes.iter().max_by_key(|n| n.image.applied_index);
        let Some(topic) = newest.and_then(|n| n.image.topic(TOPIC)).cloned() else {
            self.violation("no topic after healing".into());
            return;
        };
        for (index, state) in topic.partitions.iter().enumerate() {
            let index = index as i32;
            if state.leader == NO_LEADER {
                self.violation(format!("p{index} has no leader after healing: {state:?}"));
                continue;
            }
            let leader = &self.nodes[state.leader as usize];
            let Some(PartitionReplica {
                log: leader_log,
                role: Role::Leader { replica, .. },
                ..
            }) = leader.partitions.get(&index)
            else {
                self.violation(format!(
                    "n{} does not lead p{index} as its image says",
                    state.leader
                ));
                continue;
            };
            let hw = replica.high_watermark() as usize;
            let leader_log = leader_log.clone();
            for (value, (partition, offset)) in &self.acknowledged.clone() {
                if *partition != index {
                    continue;
                }
                if leader_log.records.get(*offset as usize).map(|(_, v)| *v) != Some(*value) {
                    let what = format!(
                        "acknowledged value {value} at p{index}@{offset} is lost: the leader n{} holds {:?}",
                        state.leader,
                        leader_log.records.get(*offset as usize)
                    );
                    self.violation(what);
                }
                if *offset as usize >= hw {
                    self.violation(format!(
                        "acknowledged p{index}@{offset} is above the high watermark {hw}"
                    ));
                }
            }
            for member in &state.isr {
                let log = &self.nodes[*member as usize]
                    .partitions
                    .get(&index)
                    .map(|r| r.log.clone())
                    .unwrap_or_default();
                let upto = hw.min(log.records.len());
                if upto < hw || log.records[..upto] != leader_log.records[..upto] {
                    let what = format!(
                        "in-sync replica n{member} of p{index} differs from the leader below the high watermark {hw}"
                    );
                    self.violation(what);
                }
            }
        }
    }
}

fn run(seed: u64) -> Result<(usize, usize), String> {
    let mut world = World::new(seed);
    let chaos_until = 2500;
    world.schedule(200, Event::Produce);
    world.nemesis(chaos_until);
    world.run_until(chaos_until);
    world.heal_everything();
    world.run_until(chaos_until + 2500);
    let acknowledged_during_chaos = world.acknowledged.len();
    world.check_replicas();
    // Liveness: after healing, writes are acknowledged again.
    let before = world.acknowledged.len();
    world.run_until(chaos_until + 3500);
    if world.acknowledged.len() <= before {
        world.violation("no write acknowledged in the second after healing".into());
    }
    world.check_replicas();
    if world.violations.is_empty() {
        Ok((acknowledged_during_chaos, world.acknowledged.len()))
    } else {
        Err(format!(
            "seed {seed} (rerun with SIMULATION_SEED={seed} SIMULATION_TRACE=1): {}",
            world.violations.join("; ")
        ))
    }
}

#[test]
fn replication_survives_crashes_partitions_and_lost_writes_over_many_seeds() {
    if let Ok(seed) = std::env::var("SIMULATION_SEED") {
        let seed = seed.parse().expect("SIMULATION_SEED is a number");
        match run(seed) {
            Ok((during, total)) => {
                eprintln!("seed {seed}: {during} acknowledged under faults, {total} in all")
            }
            Err(failure) => panic!("{failure}"),
        }
        return;
    }
    let seeds: u64 = std::env::var("SIMULATION_SEEDS")
        .ok()
        .map(|s| s.parse().expect("SIMULATION_SEEDS is a number"))
        .unwrap_or(10_000);
    let first: u64 = std::env::var("SIMULATION_FIRST_SEED")
        .ok()
        .map(|s| s.parse().expect("SIMULATION_FIRST_SEED is a number"))
        .unwrap_or(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let results: Vec<(Vec<String>, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut failures = Vec::new();
                    let mut acknowledged = 0;
                    for seed in (first + t..first + seeds).step_by(threads as usize) {
                        match run(seed) {
                            Ok((_, total)) => acknowledged += total as u64,
                            Err(failure) => failures.push(failure),
                        }
                    }
                    (failures, acknowledged)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let acknowledged: u64 = results.iter().map(|(_, a)| a).sum();
    let failures: Vec<String> = results.into_iter().flat_map(|(f, _)| f).collect();
    eprintln!("{seeds} seeds, {acknowledged} acknowledged writes checked");
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed; the first: {}",
        failures.len(),
        failures.first().unwrap()
    );
    // The workload must really write: a simulation that acknowledges nothing proves nothing.
    assert!(
        acknowledged > seeds * 100,
        "only {acknowledged} writes acknowledged"
    );
}
