//! A batching producer: records are gathered per partition into batches, which are sent
//! when full (`batch_bytes`) or old enough (`linger`), several partitions per request,
//! with retries of retriable errors.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
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
    pub retries: u32,
    pub retry_backoff: Duration,
    pub request_timeout_ms: i32,
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
            request_timeout_ms: 30_000,
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
    pub fn new(client: Client, config: ProducerConfig) -> Producer {
        let inner = Rc::new(Inner {
            client,
            in_flight: Rc::new(Semaphore::new(config.in_flight_max as u64)),
            config,
            state: RefCell::new(State::default()),
            changed: Event::new(),
        });
        glommio::spawn_local(run_sender(inner.clone())).detach();
        Producer { inner }
    }

    /// Adds a record to its partition's batch. Await the returned future for its offset.
    pub async fn send(&self, record: ProducerRecord) -> ClientResult<DeliveryFuture> {
        let partitions = self.partition_count(&record.topic).await?;
        let inner = &self.inner;
        let mut state = inner.state.borrow_mut();
        if state.closed {
            return Err(ClientError::Invalid("producer closed".into()));
        }
        let partition = match (record.partition, &record.key) {
            (Some(partition), _) if (0..partitions).contains(&partition) => partition,
            (Some(partition), _) => {
                return Err(ClientError::Invalid(format!(
                    "{}-{partition} does not exist",
                    record.topic
                )));
            }
            (None, Some(key)) => partition_for_key(key, partitions),
            (None, None) => *state.sticky.entry(record.topic.clone()).or_insert(0) % partitions,
        };
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
        let batch = state.open.entry(key).or_insert_with(|| OpenBatch {
            builder: BatchBuilder::new(timestamp),
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

fn seal(state: &mut State, key: &(String, i32)) {
    if let Some(batch) = state.open.remove(key) {
        state.unanswered += 1;
        state.sealed.push_back(SealedBatch {
            topic: key.0.clone(),
            partition: key.1,
            bytes: batch.builder.build().freeze(),
            waiters: batch.waiters,
            attempts: 0,
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
    let mut bytes = 0;
    while let Some(batch) = state.sealed.front() {
        let duplicate = taken
            .iter()
            .any(|t: &SealedBatch| t.topic == batch.topic && t.partition == batch.partition);
        if !taken.is_empty()
            && (duplicate || bytes + batch.bytes.len() > inner.config.request_bytes_max)
        {
            break;
        }
        bytes += batch.bytes.len();
        taken.extend(state.sealed.pop_front());
    }
    (
        (!taken.is_empty()).then_some(taken),
        next.max(Duration::from_micros(100)),
    )
}

async fn send_request(inner: &Inner, batches: Vec<SealedBatch>) {
    let records = batches
        .iter()
        .map(|b| (b.topic.clone(), b.partition, b.bytes.clone()))
        .collect();
    let result = inner
        .client
        .produce(inner.config.acks, inner.config.request_timeout_ms, records)
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
            Err((_, true)) if batch.attempts < inner.config.retries => retry.push(batch),
            Err((error, _)) => {
                let message = error.to_string();
                answer(inner, batch, |_| Err(ClientError::Invalid(message.clone())));
            }
        }
    }
    if !retry.is_empty() {
        glommio::timer::sleep(inner.config.retry_backoff).await;
        let mut state = inner.state.borrow_mut();
        for mut batch in retry.into_iter().rev() {
            batch.attempts += 1;
            state.sealed.push_front(batch);
        }
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
