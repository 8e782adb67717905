//! Proves that one connection is served correctly when a topic's partitions live on two
//! shards: one produce request and one fetch request span both, metadata names both
//! owners, and a long-polling fetch on one shard wakes when another connection produces.

use std::time::Duration;

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use weir_client::{Acks, Client, ErrorCode, FetchSpec};
use weir_tests::broker::BrokerProcess;
use weir_wire::{BatchBuilder, RecordIter};

fn batch(value: &str) -> Bytes {
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    builder.append(1_700_000_000_000, None, Some(value.as_bytes()), &[]);
    builder.build().freeze()
}

fn values(records: &Bytes) -> Vec<String> {
    RecordIter::new(records)
        .expect("records")
        .map(|r| String::from_utf8_lossy(r.expect("record").value.expect("value")).into_owned())
        .collect()
}

#[test]
fn one_connection_spans_partitions_on_both_shards() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker =
        BrokerProcess::start(env!("CARGO_BIN_EXE_weir"), dir.path(), 2, &[]).expect("broker");
    let address = broker.native.clone();
    LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .expect("executor")
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            client.create_topic("spread", 4, &[]).await.expect("create");
            let metadata = client
                .metadata(Some(&["spread".to_string()]))
                .await
                .expect("metadata");
            let shards: std::collections::BTreeSet<i32> = metadata.topics[0]
                .partitions
                .iter()
                .map(|p| p.shard)
                .collect();
            assert_eq!(shards, [0, 1].into(), "partitions on both shards");

            let records: Vec<(String, i32, Bytes)> = (0..4)
                .map(|p| ("spread".to_string(), p, batch(&format!("to-{p}"))))
                .collect();
            let results = client
                .produce(Acks::All, 10_000, records)
                .await
                .expect("produce");
            assert_eq!(results.len(), 4);
            assert!(
                results
                    .iter()
                    .all(|r| r.error == ErrorCode::None && r.base_offset == 0),
                "{results:?}"
            );

            let spec = FetchSpec {
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes: 1 << 20,
                partitions: (0..4)
                    .map(|p| ("spread".to_string(), p, 0, 1 << 20))
                    .collect(),
                read_committed: false,
            };
            let fetched = client.fetch(&spec).await.expect("fetch");
            for p in 0..4 {
                let partition = fetched
                    .iter()
                    .find(|f| f.partition == p)
                    .expect("every partition answered");
                assert_eq!(values(&partition.records), vec![format!("to-{p}")]);
                assert_eq!(partition.high_watermark, 1);
            }

            // A fetch waiting on every partition wakes when another connection produces to
            // one of them, and returns that record.
            let spec = FetchSpec {
                max_wait_ms: 10_000,
                min_bytes: 1,
                max_bytes: 1 << 20,
                partitions: (0..4)
                    .map(|p| ("spread".to_string(), p, 1, 1 << 20))
                    .collect(),
                read_committed: false,
            };
            let waiting = glommio::spawn_local({
                let client = client.clone();
                async move { client.fetch(&spec).await }
            });
            glommio::timer::sleep(Duration::from_millis(200)).await;
            let other = Client::connect(&address).await.expect("second connection");
            other
                .produce(
                    Acks::All,
                    10_000,
                    vec![("spread".to_string(), 3, batch("late"))],
                )
                .await
                .expect("produce late");
            let fetched = waiting.await.expect("long poll");
            let woken = fetched
                .iter()
                .find(|f| f.partition == 3)
                .expect("partition 3");
            assert_eq!(values(&woken.records), vec!["late".to_string()]);
        });
}

/// A fetch that asks for far more than the broker's `fetch_bytes_max`, over partitions
/// on both shards and read from disk (the cache is too small to hold them), gets a
/// response within that limit (plus at most one batch); consuming everything that way
/// reads every batch once, in order; and once the responses are written, no shard holds
/// any of its memory budget.
#[test]
fn fetches_stay_within_the_response_limit_and_return_their_memory() {
    const PARTITIONS: i32 = 8;
    const BATCHES: usize = 16;
    const VALUE_BYTES: usize = 32 << 10;
    const FETCH_BYTES_MAX: usize = 256 << 10;
    let dir = tempfile::tempdir().expect("temp dir");
    let limit = FETCH_BYTES_MAX.to_string();
    let env = [
        ("WEIR_FETCH_BYTES_MAX", limit.as_str()),
        ("WEIR_CACHE_BYTES", "65536"),
    ];
    let broker =
        BrokerProcess::start_with_env(env!("CARGO_BIN_EXE_weir"), dir.path(), 2, &[], &env)
            .expect("broker");
    let address = broker.native.clone();
    let value = |p: i32, i: usize| format!("{p}-{i}-{}", "v".repeat(VALUE_BYTES));
    LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .expect("executor")
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            client
                .create_topic("wide", PARTITIONS, &[])
                .await
                .expect("create");
            for i in 0..BATCHES {
                let records = (0..PARTITIONS)
                    .map(|p| ("wide".to_string(), p, batch(&value(p, i))))
                    .collect();
                let results = client
                    .produce(Acks::All, 10_000, records)
                    .await
                    .expect("produce");
                assert!(
                    results.iter().all(|r| r.error == ErrorCode::None),
                    "{results:?}"
                );
            }
            let mut offsets = vec![0i64; PARTITIONS as usize];
            let mut read: Vec<Vec<String>> = vec![Vec::new(); PARTITIONS as usize];
            let mut responses = 0;
            while offsets.iter().any(|&o| o < BATCHES as i64) {
                responses += 1;
                assert!(responses <= 100, "no progress: offsets {offsets:?}");
                let spec = FetchSpec {
                    max_wait_ms: 0,
                    min_bytes: 0,
                    max_bytes: 64 << 20,
                    partitions: (0..PARTITIONS)
                        .map(|p| ("wide".to_string(), p, offsets[p as usize], 8 << 20))
                        .collect(),
                    read_committed: false,
                };
                let fetched = client.fetch(&spec).await.expect("fetch");
                assert_eq!(
                    fetched.len(),
                    PARTITIONS as usize,
                    "every partition answered"
                );
                let bytes: usize = fetched.iter().map(|f| f.records.len()).sum();
                assert!(
                    bytes <= FETCH_BYTES_MAX + VALUE_BYTES + 1024,
                    "a response of {bytes} bytes"
                );
                for f in fetched {
                    assert_eq!(f.error, ErrorCode::None, "{f:?}");
                    assert_eq!(f.high_watermark, BATCHES as i64);
                    let got = if f.records.is_empty() {
                        Vec::new()
                    } else {
                        values(&f.records)
                    };
                    offsets[f.partition as usize] += got.len() as i64;
                    read[f.partition as usize].extend(got);
                }
            }
            for p in 0..PARTITIONS {
                let expected: Vec<String> = (0..BATCHES).map(|i| value(p, i)).collect();
                assert!(
                    read[p as usize] == expected,
                    "partition {p} read out of order"
                );
            }
            // 4 MiB in responses of at most ~288 KiB.
            assert!(responses >= 14, "{responses} responses");
        });
    let (_, metrics) = broker.http_get("/metrics").expect("metrics");
    let held: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("weir_shard_memory_bytes{"))
        .collect();
    assert_eq!(held.len(), 2, "{metrics}");
    assert!(held.iter().all(|l| l.ends_with(" 0")), "{held:?}");
}
