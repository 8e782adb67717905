//! Exactly once over the native protocol, with weir's own client: an idempotent producer
//! loses and duplicates nothing while the broker is killed with SIGKILL under it, and a
//! transactional consume-transform-produce loop copies a topic exactly once through
//! crashed transformers, aborted transactions, broker kills and a fenced zombie.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use weir_client::{
    Client, ClientError, Consumer, ConsumerConfig, ErrorCode, Producer, ProducerConfig,
    ProducerRecord, StartFrom,
};
use weir_tests::broker::BrokerProcess;

const PARTITIONS: i32 = 4;

fn run<T>(future: impl std::future::Future<Output = T>) -> T {
    LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .expect("executor")
        .run(future)
}

/// A producer config that keeps retrying through a broker's restart.
fn patient(config: ProducerConfig) -> ProducerConfig {
    ProducerConfig {
        retries: 100_000,
        retry_backoff: Duration::from_millis(50),
        request_timeout_ms: 5_000,
        linger: Duration::from_millis(2),
        ..config
    }
}

fn record(topic: &str, partition: i32, value: String) -> ProducerRecord {
    ProducerRecord {
        topic: topic.to_string(),
        partition: Some(partition),
        value: Some(Bytes::from(value)),
        ..ProducerRecord::default()
    }
}

/// Every record of `topic` from the start, per partition, as a reader with
/// `read_committed` (or not) sees them.
async fn read_all(address: &str, topic: &str, read_committed: bool) -> BTreeMap<i32, Vec<String>> {
    let client = Client::connect(address).await.expect("connect for reading");
    let config = ConsumerConfig {
        start: StartFrom::Earliest,
        max_wait_ms: 200,
        read_committed,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::subscribe(client, topic, config)
        .await
        .expect("subscribe");
    let mut values: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let mut idle = 0;
    while idle < 5 {
        let records = consumer.poll().await.expect("poll");
        idle = if records.is_empty() { idle + 1 } else { 0 };
        for r in records {
            let value = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default());
            values
                .entry(r.partition)
                .or_default()
                .push(value.into_owned());
        }
    }
    values
}

fn start_broker(dir: &std::path::Path, topics: &[&str]) -> BrokerProcess {
    let broker = BrokerProcess::start(env!("CARGO_BIN_EXE_weir"), dir, 2, &[]).expect("broker");
    for topic in topics {
        broker
            .cli_ok(
                &[
                    "topic",
                    "create",
                    topic,
                    "--partitions",
                    &PARTITIONS.to_string(),
                ],
                None,
            )
            .expect("create topic");
    }
    broker
}

/// Sends `P-N` to each partition P, N counting from 0, with an idempotent producer that
/// retries through anything, until `stop`; waits for every delivery (each must succeed)
/// and returns how many each partition was sent.
async fn produce_numbered(
    address: String,
    topic: &str,
    pace: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<u64> {
    let client = Client::connect(&address).await.expect("connect");
    let config = patient(ProducerConfig {
        idempotent: true,
        ..ProducerConfig::default()
    });
    let producer = Producer::new(client, config).await.expect("producer");
    let mut deliveries = Vec::new();
    let mut next = vec![0u64; PARTITIONS as usize];
    while !stop.load(Ordering::Acquire) {
        for partition in 0..PARTITIONS {
            let n = &mut next[partition as usize];
            let value = format!("{partition}-{n}");
            *n += 1;
            let delivery = producer
                .send(record(topic, partition, value))
                .await
                .expect("send");
            deliveries.push(delivery);
        }
        // Paced so that the kills land while batches are in flight.
        glommio::timer::sleep(pace).await;
    }
    producer.flush().await;
    for delivery in deliveries {
        delivery.wait().await.expect("every record is delivered");
    }
    next
}

/// Checks that each partition holds exactly what `produce_numbered` sent it, in order;
/// returns the total.
fn check_numbered(produced: &[u64], stored: &BTreeMap<i32, Vec<String>>) -> usize {
    let mut total = 0;
    for partition in 0..PARTITIONS {
        let expected: Vec<String> = (0..produced[partition as usize])
            .map(|n| format!("{partition}-{n}"))
            .collect();
        let got = stored.get(&partition).cloned().unwrap_or_default();
        assert_eq!(
            got.len(),
            expected.len(),
            "partition {partition}: {} stored, {} sent",
            got.len(),
            expected.len()
        );
        assert_eq!(
            got, expected,
            "partition {partition}: lost, duplicated or reordered"
        );
        total += got.len();
    }
    total
}

#[test]
fn idempotent_producer_neither_loses_nor_duplicates_through_broker_kills() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = start_broker(dir.path(), &["idem"]);
    let address = broker.native.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let producing = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            run(produce_numbered(
                address,
                "idem",
                Duration::from_micros(200),
                stop,
            ))
        })
    };
    let kills = 10;
    for round in 0..kills {
        std::thread::sleep(Duration::from_millis(300 + (round * 71) % 300));
        broker.kill9();
        broker.restart().expect("restart after kill -9");
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Release);
    let produced = producing.join().expect("producer thread");
    let address = broker.native.clone();
    let stored = run(async move { read_all(&address, "idem", false).await });
    let total = check_numbered(&produced, &stored);
    println!("{total} records through {kills} kills: each stored once, in order");
}

/// What befalls one life of the transformer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Life {
    /// Its transaction number n is aborted (and redone).
    abort_at: Option<usize>,
    /// At its transaction number n it sends the records, then vanishes without ending
    /// the transaction (a crash).
    crash_at: Option<usize>,
}

const GROUP: &str = "copier";
const TXN_ID: &str = "copier-1";
const INPUT: u64 = 4_000;

/// One life of the transformer: reads `in` from the group's committed offsets
/// (read_committed), copies each poll's records to `out` in a transaction with the
/// consumed offsets. Returns whether the whole input is copied and committed.
async fn transform(address: &str, life: Life) -> bool {
    let client = Client::connect(address).await.expect("connect");
    let producer = Producer::new(
        client.clone(),
        patient(ProducerConfig {
            transactional_id: Some(TXN_ID.into()),
            ..ProducerConfig::default()
        }),
    )
    .await
    .expect("transactional producer");
    let consumer_config = || ConsumerConfig {
        group: Some(GROUP.into()),
        start: StartFrom::Earliest,
        max_wait_ms: 100,
        read_committed: true,
        // One input batch per partition and poll: many small transactions.
        partition_max_bytes: 1,
        ..ConsumerConfig::default()
    };
    let partitions: Vec<(String, i32)> = (0..PARTITIONS).map(|p| ("in".to_string(), p)).collect();
    let mut consumer = Consumer::assign(client.clone(), &partitions, consumer_config())
        .await
        .expect("consumer");
    let mut transactions = 0;
    let mut idle = 0;
    loop {
        let records = consumer.poll().await.expect("poll");
        if records.is_empty() {
            let done = consumer.positions().values().sum::<i64>() as u64 >= INPUT;
            idle += 1;
            if done || idle > 50 {
                return done;
            }
            continue;
        }
        idle = 0;
        producer.begin_transaction().expect("begin");
        for r in &records {
            let value = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default());
            producer
                .send(record("out", r.partition, value.into_owned()))
                .await
                .expect("send");
        }
        let offsets: Vec<(String, i32, i64)> = consumer
            .positions()
            .iter()
            .map(|((t, p), o)| (t.clone(), *p, *o))
            .collect();
        producer
            .send_offsets_to_transaction(GROUP, &offsets)
            .await
            .expect("offsets in the transaction");
        if life.crash_at == Some(transactions) {
            // The records reach the log, then the transformer is gone.
            producer.flush().await;
            return false;
        }
        match life.abort_at {
            Some(n) if n == transactions => {
                producer.abort_transaction().await.expect("abort");
                // Back to what the group committed: the aborted records are redone.
                consumer = Consumer::assign(client.clone(), &partitions, consumer_config())
                    .await
                    .expect("consumer after abort");
            }
            _ => producer.commit_transaction().await.expect("commit"),
        }
        transactions += 1;
    }
}

#[test]
fn transactions_copy_a_topic_exactly_once_through_crashes_aborts_and_kills() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = start_broker(dir.path(), &["in", "out"]);
    let address = broker.native.clone();
    run(async move {
        let client = Client::connect(&address).await.expect("connect");
        // Small batches, so that the transformer's transactions are small.
        let config = ProducerConfig {
            batch_bytes: 1 << 10,
            ..ProducerConfig::default()
        };
        let producer = Producer::new(client, config).await.expect("producer");
        let mut deliveries = Vec::new();
        for n in 0..INPUT {
            let partition = (n % PARTITIONS as u64) as i32;
            let value = format!("{partition}-{}", n / PARTITIONS as u64);
            deliveries.push(
                producer
                    .send(record("in", partition, value))
                    .await
                    .expect("send"),
            );
        }
        producer.flush().await;
        for delivery in deliveries {
            delivery.wait().await.expect("input delivered");
        }
    });

    // Fencing: a second producer of the id aborts the first one's transaction, and the
    // first can write nothing more.
    let address = broker.native.clone();
    run(async move {
        let config = || ProducerConfig {
            transactional_id: Some(TXN_ID.into()),
            ..ProducerConfig::default()
        };
        let client = Client::connect(&address).await.expect("connect");
        let zombie = Producer::new(client.clone(), config())
            .await
            .expect("zombie");
        zombie.begin_transaction().expect("begin");
        let late = zombie
            .send(record("out", 0, "zombie".into()))
            .await
            .expect("send");
        zombie.flush().await;
        late.wait().await.expect("written before the fencing");
        let successor = Producer::new(client, config()).await.expect("successor");
        assert!(successor.producer_id().unwrap().1 > zombie.producer_id().unwrap().1);
        let refused = zombie.commit_transaction().await;
        assert!(
            matches!(
                refused,
                Err(ClientError::Broker {
                    code: ErrorCode::ProducerFenced | ErrorCode::InvalidProducerEpoch,
                    ..
                })
            ),
            "the fenced producer's commit: {refused:?}"
        );
        assert!(
            zombie.begin_transaction().is_err(),
            "a fenced producer stays unusable"
        );
    });

    let life = |abort_at, crash_at| Life { abort_at, crash_at };
    let lives = [
        life(None, Some(2)),
        life(Some(1), Some(3)),
        life(None, Some(0)),
        life(Some(0), Some(4)),
        life(Some(2), Some(3)),
        life(None, Some(1)),
    ];
    let crashes = lives.len();
    let aborts = lives.iter().filter(|l| l.abort_at.is_some()).count();
    let mut kills = 0;
    let mut finished = false;
    let last = life(None, None);
    for (n, life) in lives.iter().chain(std::iter::repeat(&last)).enumerate() {
        let address = broker.native.clone();
        let life = *life;
        finished = run(async move { transform(&address, life).await });
        assert!(
            finished || life.crash_at.is_some(),
            "life {n} stopped before the end of the input"
        );
        if finished {
            break;
        }
        if n % 2 == 1 {
            broker.kill9();
            broker.restart().expect("restart after kill -9");
            kills += 1;
        }
    }
    assert!(finished, "the input was never fully copied");

    let address = broker.native.clone();
    let (committed, uncommitted) = run(async move {
        (
            read_all(&address, "out", true).await,
            read_all(&address, "out", false).await,
        )
    });
    let per_partition = INPUT / PARTITIONS as u64;
    for partition in 0..PARTITIONS {
        let expected: Vec<String> = (0..per_partition)
            .map(|n| format!("{partition}-{n}"))
            .collect();
        let got = committed.get(&partition).cloned().unwrap_or_default();
        assert_eq!(got.len(), expected.len(), "out-{partition} read_committed");
        assert_eq!(
            got, expected,
            "out-{partition}: each input exactly once, in order"
        );
    }
    let committed_count: usize = committed.values().map(Vec::len).sum();
    let uncommitted_count: usize = uncommitted.values().map(Vec::len).sum();
    assert!(
        uncommitted
            .get(&0)
            .is_some_and(|values| values.iter().any(|v| v == "zombie")),
        "read_uncommitted sees the fenced producer's aborted record"
    );
    assert!(
        uncommitted_count > committed_count,
        "read_uncommitted sees aborted records ({uncommitted_count} vs {committed_count})"
    );
    println!(
        "{committed_count} records copied exactly once through {crashes} transformer crashes, {aborts} aborts and {kills} broker kills; read_uncommitted sees {} aborted",
        uncommitted_count - committed_count
    );
}

#[test]
fn cli_produces_in_a_transaction_and_consumes_read_committed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start_broker(dir.path(), &["ledger"]);
    let lines = "a\nb\nc\n";
    broker
        .cli_ok(
            &[
                "produce",
                "ledger",
                "-p",
                "0",
                "--transactional-id",
                "cli-1",
            ],
            Some(lines),
        )
        .expect("transactional produce");
    broker
        .cli_ok(
            &["produce", "ledger", "-p", "0", "--idempotent"],
            Some("d\n"),
        )
        .expect("idempotent produce");
    let consume = |extra: &[&str]| {
        let mut args = vec![
            "consume",
            "ledger",
            "-p",
            "0",
            "--from",
            "beginning",
            "--count",
            "4",
        ];
        args.extend_from_slice(extra);
        broker.cli_ok(&args, None).expect("consume")
    };
    // The commit marker sits between c and d: consumers never print it.
    assert_eq!(consume(&["--read-committed"]), "a\nb\nc\nd\n");
    assert_eq!(consume(&[]), "a\nb\nc\nd\n");
}

/// The leader of `topic`'s partition `partition`, as the cluster reports it.
async fn leader_of(address: &str, topic: &str, partition: i32) -> Option<usize> {
    let client = Client::connect(address).await.ok()?;
    let metadata = client.metadata(Some(&[topic.to_string()])).await.ok()?;
    let topic = metadata.topics.iter().find(|t| t.name == topic)?;
    let leader = topic
        .partitions
        .iter()
        .find(|p| p.partition == partition)?
        .leader;
    usize::try_from(leader).ok()
}

#[test]
fn idempotent_producer_neither_loses_nor_duplicates_through_50_leader_kills() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cluster =
        weir_tests::cluster::Cluster::start(env!("CARGO_BIN_EXE_weir"), dir.path(), 3, false, &[])
            .expect("cluster");
    let bootstrap = cluster.native_bootstrap();
    let address = bootstrap.clone();
    run(async move {
        let client = Client::connect(&address).await.expect("connect");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while let Err(error) = client
            .create_replicated_topic("failover", PARTITIONS, 3, &[])
            .await
        {
            assert!(std::time::Instant::now() < deadline, "creating: {error}");
            glommio::timer::sleep(Duration::from_millis(300)).await;
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let producing = {
        let (stop, address) = (stop.clone(), bootstrap.clone());
        std::thread::spawn(move || {
            run(produce_numbered(
                address,
                "failover",
                Duration::from_millis(1),
                stop,
            ))
        })
    };
    let kills = 50;
    for round in 0..kills {
        std::thread::sleep(Duration::from_millis(200 + (round * 53) % 400));
        let address = bootstrap.clone();
        let partition = (round % PARTITIONS as u64) as i32;
        // The leader of a partition being written to: every kill is a failover.
        let victim = run(async move { leader_of(&address, "failover", partition).await })
            .unwrap_or(round as usize % 3);
        cluster.kill9(victim);
        std::thread::sleep(Duration::from_millis(200 + (round * 31) % 500));
        cluster
            .restart_and_wait(victim)
            .expect("restart after kill -9");
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Release);
    let produced = producing.join().expect("producer thread");
    let address = bootstrap.clone();
    let stored = run(async move { read_all(&address, "failover", false).await });
    let total = check_numbered(&produced, &stored);
    println!("{total} records through {kills} leader kills: each stored once, in order");
    cluster.stop_all().expect("stop");
}

/// A batch the broker refuses for good (too large) fails its transaction: commit aborts
/// it and says so, nothing of it is visible to read_committed, and the producer goes on
/// under a new epoch. Offsets of two groups in one transaction both take effect.
#[test]
fn a_transaction_that_lost_a_batch_is_aborted_and_the_producer_goes_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start_broker(dir.path(), &[]);
    broker
        .cli_ok(
            &[
                "topic",
                "create",
                "small",
                "--partitions",
                "1",
                "-c",
                "max.message.bytes=2048",
            ],
            None,
        )
        .expect("create");
    let address = broker.native.clone();
    run(async move {
        let client = Client::connect(&address).await.expect("connect");
        let config = ProducerConfig {
            transactional_id: Some("lossy".into()),
            ..ProducerConfig::default()
        };
        let producer = Producer::new(client.clone(), config)
            .await
            .expect("producer");
        let epoch = producer.producer_id().unwrap().1;

        producer.begin_transaction().expect("begin");
        let small = producer
            .send(record("small", 0, "kept back".into()))
            .await
            .expect("send");
        producer.flush().await;
        let large = producer
            .send(record("small", 0, "x".repeat(4096)))
            .await
            .expect("send");
        let refused = producer.commit_transaction().await;
        assert!(
            matches!(&refused, Err(ClientError::Invalid(m)) if m.contains("aborted")),
            "the commit of a transaction with a lost batch: {refused:?}"
        );
        assert!(small.wait().await.is_ok());
        assert!(large.wait().await.is_err(), "the large record is refused");
        assert!(producer.producer_id().unwrap().1 > epoch, "a new epoch");

        producer.begin_transaction().expect("the producer goes on");
        let delivered = producer
            .send(record("small", 0, "committed".into()))
            .await
            .expect("send");
        let offsets = [("small".to_string(), 0, 7)];
        for group in ["first-group", "second-group"] {
            producer
                .send_offsets_to_transaction(group, &offsets)
                .await
                .expect("offsets");
        }
        producer.commit_transaction().await.expect("commit");
        delivered.wait().await.expect("delivered");
        for group in ["first-group", "second-group"] {
            let committed = client
                .fetch_stable_offsets(group, Some(&["small".to_string()]))
                .await
                .expect("stable offsets");
            assert_eq!(committed[0].offset, 7, "{group}: {committed:?}");
        }
    });
    let address = broker.native.clone();
    let seen = run(async move { read_all(&address, "small", true).await });
    assert_eq!(seen.get(&0).cloned().unwrap_or_default(), vec!["committed"]);
}
