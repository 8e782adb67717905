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
