//! The cluster, as shard 0 of each broker runs it: this broker's node of the controller
//! quorum (Raft over the metadata log, `weir_replication::Quorum`), the active controller
//! when this node leads the quorum, and this broker's registration and heartbeats.
//!
//! Four tasks, all on shard 0:
//! - `run_quorum` ticks raft, steps the messages peers sent, and does raft's work: sends
//!   messages, makes entries and votes durable (`store`), applies committed entries to
//!   the image;
//! - `run_publisher` hands each new image to every shard (which open, close and re-role
//!   their partitions), one at a time, the newest first;
//! - `run_controller` decides, when this node leads and has caught up: a broker's request
//!   or, without one, what time decides (fencing, elections, the offsets topic), then
//!   proposes the records and waits until they are applied before the next decision;
//! - `run_membership` registers this broker and sends its heartbeats to the controller.
//!
//! A single `weir serve` runs the same four tasks as a quorum of one.

pub mod peers;
pub mod store;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_listener::Event;
use glommio::channels::local_channel::{self, LocalSender};
use weir_replication::metadata::{self as records, MetadataImage};
use weir_replication::{
    Controller, ControllerAnswer, ControllerConfig, ControllerError, ControllerRequest, Endpoint,
    InternalTopic, NodeId, Proposal, Quorum, QuorumConfig, eraftpb, quorum,
};
use weir_storage::ShardStorage;

use crate::config::BrokerConfig;
use crate::error::{BrokerError, BrokerResult};
use crate::metadata::OFFSETS_TOPIC;
use crate::shard::Shard;
pub use peers::ControllerReply;
use peers::Peers;
use store::QuorumStore;

/// How long this broker's own controller requests (admin operations, ISR changes) are
/// retried while the quorum elects a controller or the controller is unreachable.
pub const CONTROLLER_RETRY: Duration = Duration::from_secs(10);
/// How often the controller looks at what time decides, when no request comes.
const CONTROLLER_TICK: Duration = Duration::from_millis(100);
/// Requests waiting for the controller at most; more are refused as if it were busy
/// elsewhere (brokers retry).
const CONTROLLER_QUEUE_MAX: usize = 10_000;
/// Raft messages from peers waiting to be stepped at most.
const INBOX_MAX: usize = 16_384;

#[derive(Debug)]
pub struct Cluster {
    pub node: NodeId,
    /// Random per start: tells the controller this process from the one before it.
    pub incarnation: u64,
    config: Arc<BrokerConfig>,
    quorum: RefCell<Quorum>,
    /// Taken out while raft's work is made durable (only `run_quorum` uses it).
    store: RefCell<Option<QuorumStore>>,
    inbox: RefCell<Vec<eraftpb::Message>>,
    /// Something for `run_quorum` to do: messages arrived, a proposal was made.
    wake: Event,
    /// The image after the last applied entry (shards may not have it yet).
    image: RefCell<MetadataImage>,
    applied: Event,
    /// The newest image every shard has applied.
    published_index: Cell<u64>,
    published: Event,
    publish_wanted: Event,
    controller: RefCell<Option<Controller>>,
    requests: RefCell<VecDeque<(ControllerRequest, LocalSender<ControllerReply>)>>,
    request_arrived: Event,
    /// The decision waiting to be applied, and once applied, whether as proposed.
    proposal: Cell<Option<Proposal>>,
    proposal_applied: Cell<Option<bool>>,
    pub peers: Rc<Peers>,
    registered: Cell<bool>,
    /// Which broker `ask_around` asks first next.
    ask_turn: Cell<usize>,
    fenced: Cell<bool>,
    last_snapshot_index: Cell<u64>,
}

impl Cluster {
    /// Opens this node's quorum state under the data directory (a new cluster's node
    /// starts with the configured voters).
    pub async fn open(
        config: Arc<BrokerConfig>,
        storage: Rc<ShardStorage>,
        tls: Option<Arc<weir_client::TlsClient>>,
    ) -> BrokerResult<Rc<Cluster>> {
        let voters = config
            .voters()
            .map_err(|e| BrokerError::Internal(format!("{e:#}")))?;
        let voter_ids: Vec<NodeId> = voters.iter().map(|(node, _)| *node).collect();
        let (store, recovered) = QuorumStore::open(&config.data_dir, storage, &voter_ids).await?;
        let quorum_config = QuorumConfig {
            node: config.node_id,
            election_ticks: config.raft_election_ticks,
            heartbeat_ticks: config.raft_heartbeat_ticks,
            max_message_bytes: 1 << 20,
            max_inflight_messages: 256,
        };
        let snapshot_index = recovered.snapshot_index;
        let mut quorum = Quorum::new(
            &quorum_config,
            recovered.storage,
            snapshot_index,
            &quorum::logger(),
            None,
        )
        .map_err(replication_error)?;
        let (members, _) = quorum.members();
        if members == [config.node_id] {
            // Alone: no one to wait for.
            quorum.campaign().map_err(replication_error)?;
        }
        let addresses: BTreeMap<NodeId, String> = voters.into_iter().collect();
        let incarnation = u64::from_be_bytes(
            crate::metadata::random_id()[..8]
                .try_into()
                .unwrap_or([1; 8]),
        );
        Ok(Rc::new(Cluster {
            node: config.node_id,
            incarnation,
            peers: Peers::new(config.node_id, addresses, tls),
            config,
            quorum: RefCell::new(quorum),
            store: RefCell::new(Some(store)),
            inbox: RefCell::new(Vec::new()),
            wake: Event::new(),
            image: RefCell::new(recovered.image),
            applied: Event::new(),
            published_index: Cell::new(0),
            published: Event::new(),
            publish_wanted: Event::new(),
            controller: RefCell::new(None),
            requests: RefCell::new(VecDeque::new()),
            request_arrived: Event::new(),
            proposal: Cell::new(None),
            proposal_applied: Cell::new(None),
            registered: Cell::new(false),
            ask_turn: Cell::new(0),
            fenced: Cell::new(true),
            last_snapshot_index: Cell::new(snapshot_index),
        }))
    }

    /// The quorum leader (the active controller) as this node knows it.
    pub fn controller_node(&self) -> Option<NodeId> {
        self.quorum.borrow().leader()
    }

    /// Raft messages from a peer, to be stepped by `run_quorum`.
    pub fn receive(&self, messages: Vec<eraftpb::Message>) {
        let mut inbox = self.inbox.borrow_mut();
        let room = INBOX_MAX.saturating_sub(inbox.len());
        inbox.extend(messages.into_iter().take(room));
        drop(inbox);
        self.wake.notify(1);
    }

    pub fn published_index(&self) -> u64 {
        self.published_index.get()
    }

    /// Waits until every shard has applied the image at `index` (or later).
    pub async fn wait_published(&self, index: u64, timeout: Duration) -> BrokerResult<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let listener = self.published.listen();
            if self.published_index.get() >= index {
                return Ok(());
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Err(BrokerError::TimedOut(format!(
                    "waiting for metadata {index} to be applied"
                )));
            };
            futures_lite::future::or(listener, glommio::timer::sleep(left)).await;
        }
    }

    // ---- the quorum ----

    pub async fn run_quorum(self: Rc<Self>, shard: Rc<Shard>) {
        let tick = Duration::from_millis(self.config.raft_tick_ms);
        let mut next_tick = Instant::now() + tick;
        while !shard.shutting_down() {
            let listener = self.wake.listen();
            if Instant::now() >= next_tick {
                self.quorum.borrow_mut().tick();
                next_tick = Instant::now() + tick;
            }
            let messages = std::mem::take(&mut *self.inbox.borrow_mut());
            for message in messages {
                if let Err(error) = self.quorum.borrow_mut().step(message) {
                    tracing::debug!(%error, "raft message refused");
                }
            }
            for node in self.peers.take_unreachable() {
                self.quorum.borrow_mut().report_unreachable(node);
            }
            shard.set_controller_node(self.controller_node());
            if let Err(error) = self.drain().await {
                // The metadata log could not be written: this broker cannot take part
                // safely any more (a vote or an entry it acknowledged may be lost).
                tracing::error!(%error, "the controller quorum's log failed; stopping the broker");
                shard.stop_broker();
                break;
            }
            if !self.inbox.borrow().is_empty() {
                continue;
            }
            let left = next_tick.saturating_duration_since(Instant::now());
            futures_lite::future::or(listener, glommio::timer::sleep(left)).await;
        }
        let store = self.store.borrow_mut().take();
        if let Some(store) = store
            && let Err(error) = store.close().await
        {
            tracing::error!(%error, "closing the metadata log");
        }
    }

    /// Does raft's work until it has none.
    async fn drain(&self) -> BrokerResult<()> {
        loop {
            let work = self
                .quorum
                .borrow_mut()
                .ready()
                .map_err(replication_error)?;
            let Some(mut work) = work else { break };
            self.peers.send_raft(std::mem::take(&mut work.messages));
            let mut changed = false;
            if let Some(snapshot) = &work.snapshot {
                let image = records::decode_snapshot(&snapshot.data).map_err(replication_error)?;
                *self.image.borrow_mut() = MetadataImage::from_snapshot(image);
                self.last_snapshot_index.set(snapshot.get_metadata().index);
                changed = true;
            }
            changed |= self.apply(std::mem::take(&mut work.committed))?;
            let conf_state = self.quorum.borrow().storage().conf_state().clone();
            let mut store = self
                .store
                .borrow_mut()
                .take()
                .ok_or(BrokerError::ShuttingDown)?;
            let persisted = store
                .persist(
                    work.snapshot.as_ref(),
                    &work.entries,
                    work.hard_state.as_ref(),
                    &conf_state,
                )
                .await;
            *self.store.borrow_mut() = Some(store);
            persisted?;
            let after = self
                .quorum
                .borrow_mut()
                .advance(work)
                .map_err(replication_error)?;
            self.peers.send_raft(after.messages);
            changed |= self.apply(after.committed)?;
            if changed {
                self.peers.learn_addresses(&self.image.borrow());
                self.applied.notify(usize::MAX);
                self.publish_wanted.notify(1);
            }
        }
        self.maybe_snapshot().await
    }

    /// Applies committed entries to the image; returns whether it changed.
    fn apply(&self, committed: Vec<weir_replication::Committed>) -> BrokerResult<bool> {
        let mut changed = false;
        for entry in committed {
            let records = if entry.data.is_empty() {
                Vec::new()
            } else {
                records::decode_records(&entry.data).map_err(replication_error)?
            };
            let mut image = self.image.borrow_mut();
            if entry.index <= image.applied_index {
                continue;
            }
            image.apply(entry.index, &records);
            changed = true;
            if let Some(proposal) = self.proposal.get()
                && self.proposal_applied.get().is_none()
                && entry.index >= proposal.index
            {
                self.proposal_applied.set(Some(
                    entry.index == proposal.index && entry.term == proposal.term,
                ));
            }
        }
        Ok(changed)
    }

    /// Every `metadata_snapshot_entries` applied entries, the image replaces the entries
    /// before it.
    async fn maybe_snapshot(&self) -> BrokerResult<()> {
        let applied = self.quorum.borrow().applied();
        let image_index = self.image.borrow().applied_index;
        if applied < self.last_snapshot_index.get() + self.config.metadata_snapshot_entries
            || image_index != applied
        {
            return Ok(());
        }
        let data = records::encode_snapshot(&self.image.borrow().snapshot());
        let snapshot = self
            .quorum
            .borrow_mut()
            .compact(data)
            .map_err(replication_error)?;
        let mut store = self
            .store
            .borrow_mut()
            .take()
            .ok_or(BrokerError::ShuttingDown)?;
        let compacted = store.compact(&snapshot).await;
        *self.store.borrow_mut() = Some(store);
        compacted?;
        self.last_snapshot_index.set(applied);
        Ok(())
    }

    pub async fn run_publisher(self: Rc<Self>, shard: Rc<Shard>) {
        while !shard.shutting_down() {
            let listener = self.publish_wanted.listen();
            let image = self.image.borrow().clone();
            if image.applied_index > self.published_index.get() {
                let index = image.applied_index;
                if let Err(error) = shard.broadcast(Arc::new(image)).await {
                    tracing::error!(%error, index, "applying metadata failed");
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                self.published_index.set(index);
                self.published.notify(usize::MAX);
                continue;
            }
            futures_lite::future::or(listener, glommio::timer::sleep(Duration::from_millis(100)))
                .await;
        }
    }

    // ---- the controller ----

    fn controller_config(&self) -> ControllerConfig {
        let config = &self.config;
        ControllerConfig {
            session_timeout_ms: config.broker_session_timeout_ms,
            leader_rebalance_interval_ms: config.leader_imbalance_check_interval_ms,
            default_replication_factor: config.default_replication_factor,
            initial_brokers: config.voters().map_or(1, |v| v.len()),
            internal_topics: vec![
                InternalTopic {
                    name: OFFSETS_TOPIC.into(),
                    partitions: config.offsets_topic_partitions,
                    replication_factor: config.offsets_topic_replication_factor,
                    configs: crate::offsets::topic_configs(),
                },
                InternalTopic {
                    name: crate::txn::coordinator::TXN_TOPIC.into(),
                    partitions: config.transaction_state_partitions,
                    replication_factor: config.transaction_state_replication_factor,
                    configs: crate::txn::coordinator::topic_configs(),
                },
            ],
            new_cluster_id: uuid::Uuid::from_bytes(crate::metadata::random_id())
                .simple()
                .to_string(),
        }
    }

    pub async fn run_controller(self: Rc<Self>, shard: Rc<Shard>) {
        while !shard.shutting_down() {
            let listener = self.request_arrived.listen();
            if !self.quorum.borrow().can_decide() {
                if self.controller.borrow_mut().take().is_some() {
                    tracing::info!(node = self.node, "no longer the active controller");
                }
                self.refuse_waiting();
                futures_lite::future::or(listener, glommio::timer::sleep(CONTROLLER_TICK)).await;
                continue;
            }
            if self.controller.borrow().is_none() {
                tracing::info!(
                    node = self.node,
                    term = self.quorum.borrow().term(),
                    "active controller"
                );
                let controller =
                    Controller::new(self.controller_config(), now_ms()).running_on(self.node);
                *self.controller.borrow_mut() = Some(controller);
            }
            self.admit_learners();
            let request = self.requests.borrow_mut().pop_front();
            let decided = self.decide(request.as_ref().map(|(r, _)| r));
            let reply = request.map(|(_, reply)| reply);
            let decision = match decided {
                Ok(decision) => decision,
                Err(error) => {
                    send(reply, Err(error));
                    continue;
                }
            };
            if decision.records.is_empty() {
                let index = self.image.borrow().applied_index;
                let idle = reply.is_none();
                send(reply, Ok((decision.answer, index)));
                if idle {
                    futures_lite::future::or(listener, glommio::timer::sleep(CONTROLLER_TICK))
                        .await;
                }
                continue;
            }
            tracing::debug!(records = ?decision.records, "controller decision");
            let outcome = self.propose(&decision.records).await;
            send(reply, outcome.map(|index| (decision.answer, index)));
        }
        self.refuse_waiting();
    }

    /// Brokers added to a running cluster (registered, but neither voter nor learner of
    /// the quorum) become learners, one configuration change at a time, so that the
    /// metadata log reaches them. Their addresses are in their registrations, which
    /// `learn_addresses` has taken by then.
    fn admit_learners(&self) {
        let mut quorum = self.quorum.borrow_mut();
        if quorum.conf_change_pending() {
            return;
        }
        let (voters, learners) = quorum.members();
        let newcomer = self
            .image
            .borrow()
            .brokers
            .keys()
            .copied()
            .find(|node| !voters.contains(node) && !learners.contains(node));
        if let Some(node) = newcomer {
            match quorum.add_learner(node) {
                Ok(_) => tracing::info!(node, "adding a broker to the quorum as a learner"),
                Err(error) => tracing::warn!(node, %error, "could not add a learner"),
            }
        }
    }

    fn decide(
        &self,
        request: Option<&ControllerRequest>,
    ) -> Result<weir_replication::Decision, ControllerError> {
        let image = self.image.borrow();
        let mut controller = self.controller.borrow_mut();
        let controller = controller
            .as_mut()
            .ok_or(ControllerError::NotController { leader: None })?;
        let now = now_ms();
        match request {
            Some(request) => controller.decide(&image, request, now),
            None => Ok(weir_replication::Decision {
                records: controller.tick(&image, now),
                answer: ControllerAnswer::Done,
            }),
        }
    }

    /// Proposes one decision's records and waits until they are applied; returns the
    /// index that holds them.
    async fn propose(&self, decided: &[records::MetadataRecord]) -> Result<u64, ControllerError> {
        let proposal = self
            .quorum
            .borrow_mut()
            .propose(records::encode_records(decided))
            .map_err(|_| ControllerError::NotController {
                leader: self.controller_node(),
            })?;
        self.proposal.set(Some(proposal));
        self.proposal_applied.set(None);
        self.wake.notify(1);
        let outcome = loop {
            let listener = self.applied.listen();
            if let Some(outcome) = self.proposal_applied.get() {
                break outcome;
            }
            if !self.quorum.borrow().is_leader() {
                break false;
            }
            futures_lite::future::or(listener, glommio::timer::sleep(CONTROLLER_TICK)).await;
        };
        self.proposal.set(None);
        self.proposal_applied.set(None);
        if outcome {
            Ok(proposal.index)
        } else {
            Err(ControllerError::NotController {
                leader: self.controller_node(),
            })
        }
    }

    fn refuse_waiting(&self) {
        let leader = self.controller_node().filter(|n| *n != self.node);
        for (_, reply) in self.requests.borrow_mut().drain(..) {
            let _ = reply.try_send(Err(ControllerError::NotController { leader }));
        }
    }

    /// A request for the controller on this node: decided in turn if this node is the
    /// active controller, refused (naming the controller this node knows) otherwise.
    pub async fn submit(&self, request: ControllerRequest) -> ControllerReply {
        if !self.quorum.borrow().can_decide()
            || self.requests.borrow().len() >= CONTROLLER_QUEUE_MAX
        {
            return Err(ControllerError::NotController {
                leader: self.controller_node().filter(|n| *n != self.node),
            });
        }
        let (sender, receiver) = local_channel::new_bounded(1);
        self.requests.borrow_mut().push_back((request, sender));
        self.request_arrived.notify(1);
        receiver
            .recv()
            .await
            .unwrap_or(Err(ControllerError::NotController { leader: None }))
    }

    /// Asks the active controller, wherever it is, once, waiting up to `timeout` for a
    /// remote one.
    pub async fn ask_once(
        &self,
        request: &ControllerRequest,
        timeout: Duration,
    ) -> ControllerReply {
        match self.controller_node() {
            Some(node) if node == self.node => self.submit(request.clone()).await,
            Some(node) => self.peers.call_controller(node, request, timeout).await,
            None => self.ask_around(request, timeout).await,
        }
    }

    /// Without a leader in its own view (a broker added to a running cluster hears from
    /// the quorum only once it is a learner, which needs its registration first), asks
    /// the other brokers in turn, following the controller each one names.
    async fn ask_around(&self, request: &ControllerRequest, timeout: Duration) -> ControllerReply {
        let others = self.peers.others();
        if others.is_empty() {
            return Err(ControllerError::NotController { leader: None });
        }
        let turn = self.ask_turn.get();
        self.ask_turn.set(turn.wrapping_add(1));
        let first = others[turn % others.len()];
        match self.peers.call_controller(first, request, timeout).await {
            Err(ControllerError::NotController {
                leader: Some(leader),
            }) if leader != self.node && leader != first => {
                self.peers.call_controller(leader, request, timeout).await
            }
            other => other,
        }
    }

    /// Asks the active controller, retrying while there is none (an election) or it
    /// cannot be reached, for up to `CONTROLLER_RETRY`; then waits until every shard of
    /// this broker has applied the decision.
    pub async fn ask(&self, request: ControllerRequest) -> BrokerResult<ControllerAnswer> {
        let deadline = Instant::now() + CONTROLLER_RETRY;
        loop {
            match self.ask_once(&request, peers::CALL_TIMEOUT).await {
                Ok((answer, index)) => {
                    self.wait_published(index, CONTROLLER_RETRY).await?;
                    return Ok(answer);
                }
                Err(ControllerError::NotController { .. }) if Instant::now() < deadline => {
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    // ---- membership ----

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            host: self.config.advertised_host(),
            native_port: self.config.native_listen.port(),
            kafka_port: self.config.kafka_listen.port(),
            kafka_listeners: self
                .config
                .listeners()
                .unwrap_or_default()
                .into_iter()
                .filter(|l| l.kind == crate::security::ListenerKind::Kafka)
                .map(|l| weir_replication::ListenerPort {
                    name: l.name().to_string(),
                    port: l.address.port(),
                })
                .collect(),
        }
    }

    /// Registers this broker, then sends heartbeats: quickly until it is unfenced, then
    /// every `broker_heartbeat_interval_ms`.
    pub async fn run_membership(self: Rc<Self>, shard: Rc<Shard>) {
        let every = Duration::from_millis(self.config.broker_heartbeat_interval_ms);
        while !shard.shutting_down() {
            let request = if self.registered.get() {
                ControllerRequest::Heartbeat {
                    node: self.node,
                    incarnation: self.incarnation,
                    applied_index: self.published_index.get(),
                }
            } else {
                ControllerRequest::RegisterBroker {
                    node: self.node,
                    incarnation: self.incarnation,
                    endpoint: self.endpoint(),
                    shards: shard.count as u32,
                }
            };
            // A heartbeat that waits longer than an interval is late anyway: ask again
            // (the controller may have moved) rather than wait on one that stopped.
            match self.ask_once(&request, every).await {
                Ok((ControllerAnswer::Heartbeat { fenced }, _)) => self.fenced.set(fenced),
                Ok(_) => self.registered.set(true),
                Err(ControllerError::StaleBrokerEpoch { .. }) => {
                    tracing::warn!(
                        node = self.node,
                        "the controller does not know this broker's registration; registering again"
                    );
                    self.registered.set(false);
                    self.fenced.set(true);
                }
                Err(error) => tracing::debug!(%error, "heartbeat not answered"),
            }
            let wait = if self.registered.get() && !self.fenced.get() {
                every
            } else {
                Duration::from_millis(20)
            };
            glommio::timer::sleep(wait).await;
        }
    }

    /// Whether this broker (this process) is registered and unfenced in `image`: only
    /// then does it lead partitions.
    pub fn is_active_in(&self, image: &MetadataImage) -> bool {
        image
            .broker(self.node)
            .is_some_and(|b| b.incarnation == self.incarnation && !b.fenced)
    }
}

fn send(reply: Option<LocalSender<ControllerReply>>, result: ControllerReply) {
    if let Some(reply) = reply {
        let _ = reply.try_send(result);
    }
}

fn replication_error(error: weir_replication::ReplicationError) -> BrokerError {
    BrokerError::Internal(format!("controller quorum: {error}"))
}

fn now_ms() -> u64 {
    crate::metadata::now_ms().max(0) as u64
}
