//! A batching producer: records are gathered per partition into batches, which are sent
//! when full (`batch_bytes`) or old enough (`linger`), several partitions per request,
//! with retries of retriable errors.
//!
//! Idempotent (`idempotent`), every batch carries the producer's id, epoch and a
//! sequence number per partition, so a retried batch the broker already has is answered
//! with its offsets instead of being appended again, and retries never reorder: a
//! partition has one request in flight at a time, and a retried batch goes back in line
//! before the later batches of its partition. Transactional
//! (`transactional_id`), batches between `begin_transaction` and `commit_transaction`
//! (or `abort_transaction`) become visible to read_committed consumers together, or not
//! at all, with the consumed offsets `send_offsets_to_transaction` adds.
//!
//! An idempotent or transactional producer that loses a batch for good (retries spent,
//! or fenced by a newer producer of its transactional id) cannot continue its sequences:
//! it fails every later call with that error, and a new producer takes over.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use event_listener::Event;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::sync::Semaphore;
use weir_wire::{BatchBuilder, Header};

use crate::Acks;
use crate::client::Client;
use crate::error::{ClientError, ClientResult};
use crate::partitioner::partition_for_key;
use crate::txn::ProducerId;

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub acks: Acks,
    /// A partition's batch is sent once it reaches this size (Kafka's `batch.size`).
    pub batch_bytes: usize,
    /// ... or once its first record waited this long (Kafka's `linger.ms`).
    pub linger: Duration,
    /// Requests in flight at once.
    pub in_flight_max: usize,
    /// Bytes of batches one request carries at most.
    pub request_bytes_max: usize,
    /// Retries of a batch (an idempotent producer's retry for as long as
    /// `delivery_timeout` allows, as Kafka's do with `retries` unset).
    pub retries: u32,
    pub retry_backoff: Duration,
    /// A batch not acknowledged this long after it was sealed fails (Kafka's
    /// `delivery.timeout.ms`).
    pub delivery_timeout: Duration,
    pub request_timeout_ms: i32,
    /// Kafka's `enable.idempotence` (needs acks all).
    pub idempotent: bool,
    /// Kafka's `transactional.id`: a transactional producer (idempotent too).
    pub transactional_id: Option<String>,
    /// How long a transaction may stay open before the coordinator aborts it.
    pub transaction_timeout_ms: i32,
}

impl Default for ProducerConfig {
    fn default() -> ProducerConfig {
        ProducerConfig {
            acks: Acks::All,
            batch_bytes: 16 << 10,
            linger: Duration::from_millis(5),
            in_flight_max: 5,
            request_bytes_max: 1 << 20,
            retries: 5,
            retry_backoff: Duration::from_millis(100),
            delivery_timeout: Duration::from_secs(120),
            request_timeout_ms: 30_000,
            idempotent: false,
            transactional_id: None,
            transaction_timeout_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ProducerRecord {
    pub topic: String,
    pub partition: Option<i32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    pub timestamp: Option<i64>,
}

/// Where an acknowledged record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: i32,
    pub offset: i64,
}

/// Resolves when the record's batch is acknowledged (or failed).
#[derive(Debug)]
pub struct DeliveryFuture(LocalReceiver<ClientResult<Delivery>>);

impl DeliveryFuture {
    pub async fn wait(self) -> ClientResult<Delivery> {
        self.0
            .recv()
            .await
            .unwrap_or_else(|| Err(ClientError::ConnectionLost("producer closed".into())))
    }
}

#[derive(Debug)]
struct OpenBatch {
    builder: BatchBuilder,
    waiters: Vec<LocalSender<ClientResult<Delivery>>>,
    opened: Instant,
}

#[derive(Debug)]
struct SealedBatch {
    topic: String,
    partition: i32,
    bytes: Bytes,
    waiters: Vec<LocalSender<ClientResult<Delivery>>>,
    attempts: u32,
    /// A retried batch waits in line until then (the retry backoff): the batches behind
    /// it wait too, so that none of its partition overtakes it.
    retry_at: Option<Instant>,
    sealed_at: Instant,
    /// Where an idempotent producer's batch starts in its partition, counted without
    /// wrapping (the batch header carries it modulo 2^31, as Kafka's sequences wrap).
    sequence: Option<i64>,
}

/// An idempotent producer's id, and where each partition's sequences are.
#[derive(Debug)]
struct Sequences {
    producer: ProducerId,
    /// Its batches are transactional.
    transactional: bool,
    next: HashMap<(String, i32), i64>,
}

impl Sequences {
    /// Sequences start at 0 in every partition, for a new producer id or epoch.
    fn new(producer: ProducerId, transactional: bool) -> Sequences {
        Sequences {
            producer,
            transactional,
            next: HashMap::new(),
        }
    }
}

/// Where a transactional producer is.
#[derive(Debug, Default)]
struct Transaction {
    open: bool,
    partitions: HashSet<(String, i32)>,
    /// Groups whose offsets joined (AddOffsetsToTxn), each once.
    groups: HashSet<String>,
    /// Set when commit or abort starts: nothing more may join, only the ending retried.
    ending: bool,
    /// A batch of the open transaction failed: it can only be aborted.
    failed: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    partition_counts: HashMap<String, i32>,
    sticky: HashMap<String, i32>,
    open: BTreeMap<(String, i32), OpenBatch>,
    sealed: VecDeque<SealedBatch>,
    /// Batches sealed or in flight, not yet answered.
    unanswered: usize,
    closed: bool,
    sequences: Option<Sequences>,
    transaction: Transaction,
    /// Why an idempotent producer cannot go on: it lost a batch, so its sequences have a
    /// gap. A transactional one goes on once the transaction is aborted (with a new
    /// epoch, whose sequences start again).
    fatal: Option<String>,
    /// A newer producer of the transactional id took over: nothing more is possible.
    fenced: Option<String>,
    /// An idempotent producer's partitions with a request in flight (one at a time).
    in_flight: HashSet<(String, i32)>,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    config: ProducerConfig,
    state: RefCell<State>,
    /// Fired when batches are sealed and when requests are answered.
    changed: Event,
    in_flight: Rc<Semaphore>,
}

#[derive(Debug, Clone)]
pub struct Producer {
    inner: Rc<Inner>,
}

impl Producer {
    /// A producer; an idempotent or transactional one gets its producer id first (a
    /// transactional one fences older producers of its id, aborting what they left
    /// open).
    pub async fn new(client: Client, mut config: ProducerConfig) -> ClientResult<Producer> {
        config.idempotent |= config.transactional_id.is_some();
        let mut state = State::default();
        if config.idempotent {
            if config.acks != Acks::All {
                return Err(ClientError::Invalid(
                    "an idempotent producer needs acks all".into(),
                ));
            }
            let producer = client
                .init_producer(
                    config.transactional_id.as_deref(),
                    config.transaction_timeout_ms,
                    None,
                )
                .await?;
            let transactional = config.transactional_id.is_some();
            state.sequences = Some(Sequences::new(producer, transactional));
        }
        let inner = Rc::new(Inner {
            client,
            in_flight: Rc::new(Semaphore::new(config.in_flight_max as u64)),
            config,
            state: RefCell::new(state),
            changed: Event::new(),
        });
        glommio::spawn_local(run_sender(inner.clone())).detach();
        Ok(Producer { inner })
    }

    /// The producer id and epoch of an idempotent producer.
    pub fn producer_id(&self) -> Option<ProducerId> {
        self.inner
            .state
            .borrow()
            .sequences
            .as_ref()
            .map(|s| s.producer)
    }

    /// Fails if the producer cannot go on, or its transaction is ending.
    fn check_usable(&self) -> ClientResult<()> {
        self.check_not_fenced()?;
        let state = self.inner.state.borrow();
        if let Some(fatal) = &state.fatal {
            return Err(ClientError::Invalid(fatal.clone()));
        }
        if state.transaction.ending {
            return Err(ClientError::Invalid(
                "the transaction is ending: commit or abort it".into(),
            ));
        }
        Ok(())
    }

    fn check_not_fenced(&self) -> ClientResult<()> {
        let state = self.inner.state.borrow();
        if let Some(fenced) = &state.fenced {
            return Err(ClientError::Invalid(fenced.clone()));
        }
        if state.closed {
            return Err(ClientError::Invalid("producer closed".into()));
        }
        Ok(())
    }

    /// Whether something may join the transaction now.
    fn check_joinable(&self) -> ClientResult<()> {
        let state = self.inner.state.borrow();
        if !state.transaction.open {
            return Err(ClientError::Invalid(
                "a transactional producer sends within a transaction".into(),
            ));
        }
        if state.transaction.ending {
            return Err(ClientError::Invalid(
                "the transaction is ending: commit or abort it".into(),
            ));
        }
        Ok(())
    }

    /// A coordinator call failed: fenced, the producer stops; otherwise what the open
    /// transaction holds may be incomplete, so it can only be aborted (retriable errors
    /// were retried already).
    fn note_failure<T>(&self, result: &ClientResult<T>) {
        self.fail_if_fenced(result);
        if let Err(error) = result {
            let mut state = self.inner.state.borrow_mut();
            if state.transaction.open && !state.transaction.ending {
                let failure = error.to_string();
                state.transaction.failed.get_or_insert(failure);
            }
        }
    }

    /// The transactional id, or an error for a producer without one.
    fn transactional_id(&self) -> ClientResult<&str> {
        self.inner
            .config
            .transactional_id
            .as_deref()
            .ok_or_else(|| ClientError::Invalid("not a transactional producer".into()))
    }

    fn producer(&self) -> ProducerId {
        self.producer_id().unwrap_or((-1, -1))
    }

    /// Starts a transaction: what is sent until it is committed becomes visible to
    /// read_committed consumers together.
    pub fn begin_transaction(&self) -> ClientResult<()> {
        self.transactional_id()?;
        self.check_usable()?;
        let mut state = self.inner.state.borrow_mut();
        if state.transaction.open {
            return Err(ClientError::Invalid("a transaction is already open".into()));
        }
        state.transaction = Transaction {
            open: true,
            ..Transaction::default()
        };
        Ok(())
    }

    /// Makes the partition part of the open transaction (AddPartitionsToTxn) before
    /// anything is written to it.
    async fn join_transaction(&self, topic: &str, partition: i32) -> ClientResult<()> {
        let Some(transactional_id) = self.inner.config.transactional_id.as_deref() else {
            return Ok(());
        };
        let key = (topic.to_string(), partition);
        self.check_joinable()?;
        if self
            .inner
            .state
            .borrow()
            .transaction
            .partitions
            .contains(&key)
        {
            return Ok(());
        }
        let result = self
            .inner
            .client
            .add_partitions_to_txn(
                transactional_id,
                self.producer(),
                std::slice::from_ref(&key),
            )
            .await;
        self.note_failure(&result);
        result?;
        // The transaction may have started ending meanwhile (another task's commit).
        self.check_joinable()?;
        self.inner
            .state
            .borrow_mut()
            .transaction
            .partitions
            .insert(key);
        Ok(())
    }

    /// A fenced producer (a newer one has its transactional id) can do nothing more.
    fn fail_if_fenced<T>(&self, result: &ClientResult<T>) {
        if let Err(error @ ClientError::Broker { code, .. }) = result
            && matches!(
                *code,
                crate::ErrorCode::ProducerFenced
                    | crate::ErrorCode::InvalidProducerEpoch
                    | crate::ErrorCode::InvalidProducerIdMapping
            )
        {
            let mut state = self.inner.state.borrow_mut();
            state.fenced.get_or_insert_with(|| error.to_string());
        }
    }

    /// Commits `offsets` (topic, partition, next offset to consume) of `group` within
    /// the open transaction: they take effect when it commits.
    pub async fn send_offsets_to_transaction(
        &self,
        group: &str,
        offsets: &[(String, i32, i64)],
    ) -> ClientResult<()> {
        let transactional_id = self.transactional_id()?;
        self.check_usable()?;
        self.check_joinable()?;
        let client = &self.inner.client;
        if !self.inner.state.borrow().transaction.groups.contains(group) {
            let result = client
                .add_offsets_to_txn(transactional_id, self.producer(), group)
                .await;
            self.note_failure(&result);
            result?;
            self.check_joinable()?;
            let mut state = self.inner.state.borrow_mut();
            state.transaction.groups.insert(group.to_string());
        }
        let result = client
            .txn_commit_offsets(transactional_id, group, self.producer(), offsets)
            .await;
        self.note_failure(&result);
        result
    }

    /// Sends what the transaction holds, waits for it, and commits it. If a batch of it
    /// failed, nothing is committed: the transaction is aborted and the error returned.
    pub async fn commit_transaction(&self) -> ClientResult<()> {
        self.end_transaction(true).await
    }

    /// Waits for the batches sent, then aborts the transaction: none of it becomes
    /// visible to read_committed consumers.
    pub async fn abort_transaction(&self) -> ClientResult<()> {
        self.end_transaction(false).await
    }

    async fn end_transaction(&self, commit: bool) -> ClientResult<()> {
        let transactional_id = self.transactional_id()?;
        self.check_not_fenced()?;
        if !self.inner.state.borrow().transaction.open {
            return Err(ClientError::Invalid("no transaction is open".into()));
        }
        // From here on nothing joins the transaction; if ending fails, only ending again
        // is possible.
        self.inner.state.borrow_mut().transaction.ending = true;
        self.flush().await;
        self.check_not_fenced()?;
        let (joined, failed) = {
            let state = self.inner.state.borrow();
            let t = &state.transaction;
            let failed = t.failed.clone().or_else(|| state.fatal.clone());
            (!t.partitions.is_empty() || !t.groups.is_empty(), failed)
        };
        let commit = commit && failed.is_none();
        // A transaction that wrote nothing has nothing for the coordinator to end.
        let result = if joined {
            self.inner
                .client
                .end_txn(transactional_id, self.producer(), commit)
                .await
        } else {
            Ok(())
        };
        self.fail_if_fenced(&result);
        if self.inner.state.borrow().fenced.is_some() {
            self.inner.state.borrow_mut().transaction = Transaction::default();
        }
        result?;
        self.inner.state.borrow_mut().transaction = Transaction::default();
        if self.inner.state.borrow().fatal.is_some() {
            // A batch was lost: its partition's sequences have a gap. A new epoch starts
            // them again (KIP-360), and the producer goes on.
            let current = self.producer();
            let timeout = self.inner.config.transaction_timeout_ms;
            let result = self
                .inner
                .client
                .init_producer(Some(transactional_id), timeout, Some(current))
                .await;
            self.fail_if_fenced(&result);
            let producer = result?;
            let mut state = self.inner.state.borrow_mut();
            if let Some(sequences) = state.sequences.as_mut() {
                *sequences = Sequences::new(producer, sequences.transactional);
            }
            state.fatal = None;
        }
        match failed {
            Some(failure) => Err(ClientError::Invalid(format!(
                "the transaction was aborted: {failure}"
            ))),
            None => Ok(()),
        }
    }

    /// Adds a record to its partition's batch. Await the returned future for its offset.
    pub async fn send(&self, record: ProducerRecord) -> ClientResult<DeliveryFuture> {
        self.check_usable()?;
        let partitions = self.partition_count(&record.topic).await?;
        let partition = match (record.partition, &record.key) {
            (Some(partition), _) if (0..partitions).contains(&partition) => Some(partition),
            (Some(partition), _) => {
                return Err(ClientError::Invalid(format!(
                    "{}-{partition} does not exist",
                    record.topic
                )));
            }
            (None, Some(key)) => Some(partition_for_key(key, partitions)),
            (None, None) => None,
        };
        // Unkeyed records stick to a partition until its batch fills.
        let partition = partition.unwrap_or_else(|| {
            let state = self.inner.state.borrow();
            state.sticky.get(&record.topic).copied().unwrap_or(0) % partitions
        });
        // (A transactional producer awaits the coordinator here the first time it writes
        // to a partition; the partition chosen stays joined whatever others do meanwhile.)
        self.join_transaction(&record.topic, partition).await?;
        let inner = &self.inner;
        let mut state = inner.state.borrow_mut();
        if state.closed {
            return Err(ClientError::Invalid("producer closed".into()));
        }
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        let key = (record.topic.clone(), partition);
        let estimate = record.key.as_ref().map_or(0, Bytes::len)
            + record.value.as_ref().map_or(0, Bytes::len)
            + 32;
        let full = state
            .open
            .get(&key)
            .is_some_and(|b| b.builder.size_bytes() + estimate > inner.config.batch_bytes);
        if full {
            seal(&mut state, &key);
            if record.key.is_none() && record.partition.is_none() {
                // Sticky partitioning: unkeyed records move on once a batch fills.
                *state.sticky.entry(record.topic.clone()).or_insert(0) += 1;
            }
            inner.changed.notify(usize::MAX);
        }
        // A batch's buffer is sized for a full batch (or the one record larger than that),
        // as Kafka's producer takes batch.size from its pool.
        let capacity = inner.config.batch_bytes.max(estimate);
        let batch = state.open.entry(key).or_insert_with(|| OpenBatch {
            builder: BatchBuilder::with_capacity(timestamp, capacity),
            waiters: Vec::new(),
            opened: Instant::now(),
        });
        let headers: Vec<Header<'_>> = record
            .headers
            .iter()
            .map(|(k, v)| Header {
                key: k.as_bytes(),
                value: v.as_deref(),
            })
            .collect();
        batch.builder.append(
            timestamp,
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
        );
        let (sender, receiver) = local_channel::new_bounded(1);
        batch.waiters.push(sender);
        Ok(DeliveryFuture(receiver))
    }

    async fn partition_count(&self, topic: &str) -> ClientResult<i32> {
        if let Some(count) = self.inner.state.borrow().partition_counts.get(topic) {
            return Ok(*count);
        }
        let count = self.inner.client.partition_count(topic).await?;
        self.inner
            .state
            .borrow_mut()
            .partition_counts
            .insert(topic.to_string(), count);
        Ok(count)
    }

    /// Sends every open batch and waits until all are answered.
    pub async fn flush(&self) {
        {
            let mut state = self.inner.state.borrow_mut();
            let keys: Vec<_> = state.open.keys().cloned().collect();
            for key in keys {
                seal(&mut state, &key);
            }
        }
        self.inner.changed.notify(usize::MAX);
        loop {
            let changed = self.inner.changed.listen();
            if self.inner.state.borrow().unanswered == 0 {
                return;
            }
            changed.await;
        }
    }

    /// Flushes, then stops the sender.
    pub async fn close(&self) {
        self.flush().await;
        self.inner.state.borrow_mut().closed = true;
        self.inner.changed.notify(usize::MAX);
    }
}

/// Closes a partition's open batch and queues it; an idempotent producer's batch takes
/// the partition's next sequence numbers.
fn seal(state: &mut State, key: &(String, i32)) {
    if let Some(mut batch) = state.open.remove(key) {
        let sequence = state.sequences.as_mut().map(|s| {
            let next = s.next.entry(key.clone()).or_insert(0);
            let first = *next;
            *next += i64::from(batch.builder.records_count());
            // Sequences wrap from i32::MAX to 0, as Kafka's do.
            let wrapped = (first % (i64::from(i32::MAX) + 1)) as i32;
            batch.builder.producer(s.producer.0, s.producer.1, wrapped);
            if s.transactional {
                batch.builder.transactional();
            }
            first
        });
        state.unanswered += 1;
        state.sealed.push_back(SealedBatch {
            topic: key.0.clone(),
            partition: key.1,
            bytes: batch.builder.build().freeze(),
            waiters: batch.waiters,
            attempts: 0,
            retry_at: None,
            sealed_at: Instant::now(),
            sequence,
        });
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Seals lingering batches and sends sealed ones, several per request, until closed.
async fn run_sender(inner: Rc<Inner>) {
    loop {
        let changed = inner.changed.listen();
        let (request, next_linger) = take_request(&inner);
        if let Some(batches) = request {
            let Ok(permit) = inner.in_flight.clone().acquire_static_permit(1).await else {
                return;
            };
            let inner = inner.clone();
            glommio::spawn_local(async move {
                send_request(&inner, batches).await;
                drop(permit);
                inner.changed.notify(usize::MAX);
            })
            .detach();
            continue;
        }
        if inner.state.borrow().closed {
            return;
        }
        futures_lite::future::or(changed, glommio::timer::sleep(next_linger)).await;
    }
}

/// Seals batches older than the linger, then takes sealed batches for one request.
/// Returns them and how long until the next batch's linger is up.
fn take_request(inner: &Inner) -> (Option<Vec<SealedBatch>>, Duration) {
    let mut state = inner.state.borrow_mut();
    let linger = inner.config.linger;
    let due: Vec<_> = state
        .open
        .iter()
        .filter(|(_, b)| b.opened.elapsed() >= linger)
        .map(|(k, _)| k.clone())
        .collect();
    for key in due {
        seal(&mut state, &key);
    }
    let next = state
        .open
        .values()
        .map(|b| linger.saturating_sub(b.opened.elapsed()))
        .min()
        .unwrap_or(linger);
    let mut taken = Vec::new();
    let one_in_flight = state.sequences.is_some();
    let wait = take_batches(
        &mut state,
        &mut taken,
        inner.config.request_bytes_max,
        one_in_flight,
    );
    let next = wait.map_or(next, |wait| next.min(wait));
    (
        (!taken.is_empty()).then_some(taken),
        next.max(Duration::from_micros(100)),
    )
}

/// Takes sealed batches for one request, in line order: at most one per partition, up to
/// `bytes_max`, none of a partition whose first batch in line waits for its retry (its
/// later ones stay behind it) and, for an idempotent producer (`one_in_flight`), none of
/// a partition with a request in flight. One request per partition at a time keeps each
/// partition's batches in sequence at the broker whatever happens to a request (no
/// leader known yet, a connection refused, a leader change): a later batch can never
/// land before an earlier one that failed, which a broker without state of the producer
/// would accept and so make the earlier one a fatal gap. Returns how long until the next
/// retry is due, if one waits.
fn take_batches(
    state: &mut State,
    taken: &mut Vec<SealedBatch>,
    bytes_max: usize,
    one_in_flight: bool,
) -> Option<Duration> {
    let now = Instant::now();
    let mut blocked = if one_in_flight {
        state.in_flight.clone()
    } else {
        HashSet::new()
    };
    let mut wait: Option<Duration> = None;
    let mut bytes = 0;
    let mut index = 0;
    // Once every partition is blocked nothing more can be taken: the scan stops there,
    // so that a long queue (a broker down for a while) is not walked at every event.
    let partitions: usize = state.partition_counts.values().map(|c| *c as usize).sum();
    while index < state.sealed.len() && blocked.len() < partitions {
        let batch = &state.sealed[index];
        let key = (batch.topic.clone(), batch.partition);
        let retry_wait = batch.retry_at.and_then(|at| at.checked_duration_since(now));
        if let Some(retry_wait) = retry_wait.filter(|w| !w.is_zero()) {
            wait = Some(wait.map_or(retry_wait, |w| w.min(retry_wait)));
            blocked.insert(key);
            index += 1;
            continue;
        }
        if blocked.contains(&key) || (!taken.is_empty() && bytes + batch.bytes.len() > bytes_max) {
            blocked.insert(key);
            index += 1;
            continue;
        }
        bytes += batch.bytes.len();
        blocked.insert(key.clone());
        if one_in_flight {
            state.in_flight.insert(key);
        }
        taken.extend(state.sealed.remove(index));
    }
    wait
}

async fn send_request(inner: &Inner, batches: Vec<SealedBatch>) {
    let _in_flight = InFlight {
        inner,
        partitions: batches
            .iter()
            .map(|b| (b.topic.clone(), b.partition))
            .collect(),
    };
    let records = batches
        .iter()
        .map(|b| (b.topic.clone(), b.partition, b.bytes.clone()))
        .collect();
    let result = inner
        .client
        .produce_as(
            inner.config.acks,
            inner.config.request_timeout_ms,
            records,
            inner.config.transactional_id.as_deref(),
        )
        .await;
    let mut retry = Vec::new();
    for batch in batches {
        let outcome = match &result {
            Err(error) => Err(ClientError::ConnectionLost(error.to_string()))
                .map_err(|e| (e, error.is_retriable())),
            // Nothing comes back with acks none: the offset is unknown.
            Ok(_) if inner.config.acks == Acks::None => Ok(-1),
            Ok(results) => match results
                .iter()
                .find(|r| r.topic == batch.topic && r.partition == batch.partition)
            {
                Some(r) if r.error == crate::ErrorCode::None => Ok(r.base_offset),
                Some(r) => {
                    let error = ClientError::broker(r.error, Some(&r.error_message));
                    let retriable = error.is_retriable();
                    Err((error, retriable))
                }
                None => Err((
                    ClientError::Invalid("no result for a partition".into()),
                    false,
                )),
            },
        };
        match outcome {
            Ok(base_offset) => answer(inner, batch, |i| {
                Ok(Delivery {
                    partition: 0,
                    offset: if base_offset < 0 { -1 } else { base_offset + i },
                })
            }),
            Err((_, true)) if may_retry(inner, &batch) => retry.push(batch),
            Err((error, _)) => {
                let message = error.to_string();
                lost(inner, &batch, &message);
                answer(inner, batch, |_| Err(ClientError::Invalid(message.clone())));
            }
        }
    }
    let retry_at = Instant::now() + inner.config.retry_backoff;
    let mut state = inner.state.borrow_mut();
    for mut batch in retry.into_iter().rev() {
        batch.attempts += 1;
        batch.retry_at = Some(retry_at);
        // First in line: with one request per partition in flight, every other batch of
        // an idempotent producer's partition still in line is a later one.
        state.sealed.push_front(batch);
    }
}

fn may_retry(inner: &Inner, batch: &SealedBatch) -> bool {
    let config = &inner.config;
    batch.sealed_at.elapsed() < config.delivery_timeout
        && (batch.sequence.is_some() || batch.attempts < config.retries)
}

/// An idempotent producer's partitions with a request in flight, released when the
/// request's batches are answered or back in line.
struct InFlight<'a> {
    inner: &'a Inner,
    partitions: Vec<(String, i32)>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut state = self.inner.state.borrow_mut();
        for partition in &self.partitions {
            state.in_flight.remove(partition);
        }
    }
}

/// A batch failed for good. An idempotent producer's later batches of the partition
/// would all be out of sequence: the producer stops; in a transaction, the transaction
/// can only be aborted.
fn lost(inner: &Inner, batch: &SealedBatch, message: &str) {
    let mut state = inner.state.borrow_mut();
    if state.transaction.open {
        state
            .transaction
            .failed
            .get_or_insert_with(|| message.to_string());
    }
    if batch.sequence.is_some() {
        let fatal = format!(
            "the idempotent producer lost its batch of {}-{} at sequence {} (attempt {}): {message}",
            batch.topic,
            batch.partition,
            batch.sequence.unwrap_or(-1),
            batch.attempts + 1
        );
        state.fatal.get_or_insert(fatal);
    }
}

fn answer(inner: &Inner, batch: SealedBatch, result: impl Fn(i64) -> ClientResult<Delivery>) {
    for (index, waiter) in batch.waiters.into_iter().enumerate() {
        let delivery = result(index as i64).map(|d| Delivery {
            partition: batch.partition,
            ..d
        });
        let _ = waiter.try_send(delivery);
    }
    inner.state.borrow_mut().unanswered -= 1;
}
