//! Proves that a broker killed with SIGKILL while acks=all producers run loses nothing it
//! acknowledged: after each restart every acknowledged batch is at its offset with its
//! records; and that SIGTERM stops it cleanly with the same guarantee.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use weir_client::{Acks, Client, FetchSpec};
use weir_tests::broker::BrokerProcess;
use weir_wire::{BatchBuilder, BatchHeader, RecordIter};

const PARTITIONS: i32 = 4;

/// (partition, base offset, values of its records)
type Acked = Vec<(i32, i64, Vec<String>)>;

fn batch(values: &[String]) -> Bytes {
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    for value in values {
        builder.append(1_700_000_000_000, None, Some(value.as_bytes()), &[]);
    }
    builder.build().freeze()
}

/// Produces with acks=all from one task per partition until the broker goes away (or
/// `limit` batches each), recording every acknowledged batch.
async fn produce_until_failure(address: &str, round: usize, limit: usize) -> Acked {
    let acked = Rc::new(RefCell::new(Vec::new()));
    let Ok(client) = Client::connect(address).await else {
        return Vec::new();
    };
    let tasks: Vec<_> = (0..PARTITIONS)
        .map(|partition| {
            let (client, acked) = (client.clone(), acked.clone());
            glommio::spawn_local(async move {
                for n in 0..limit {
                    let values: Vec<String> = (0..1 + n % 5)
                        .map(|i| format!("r{round}-p{partition}-b{n}-{i}"))
                        .collect();
                    let records = vec![("kill".to_string(), partition, batch(&values))];
                    match client.produce(Acks::All, 10_000, records).await {
                        Ok(results) if results[0].error == weir_client::ErrorCode::None => {
                            acked
                                .borrow_mut()
                                .push((partition, results[0].base_offset, values));
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    acked.take()
}

/// Every record of every partition, by (partition, offset).
async fn read_everything(address: &str) -> std::collections::HashMap<(i32, i64), String> {
    let client = Client::connect(address).await.expect("connect for reading");
    let mut records = std::collections::HashMap::new();
    for partition in 0..PARTITIONS {
        let mut offset = 0;
        loop {
            let spec = FetchSpec {
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes: 1 << 20,
                partitions: vec![("kill".into(), partition, offset, 1 << 20)],
                read_committed: false,
            };
            let fetched = client.fetch(&spec).await.expect("fetch");
            let bytes = &fetched[0].records;
            if bytes.is_empty() {
                break;
            }
            let mut at = 0;
            while at < bytes.len() {
                let header = BatchHeader::parse(&bytes[at..]).expect("batch header");
                let batch = &bytes[at..at + header.total_bytes()];
                for record in RecordIter::new(batch).expect("records") {
                    let record = record.expect("record");
                    records.insert(
                        (partition, record.offset),
                        String::from_utf8_lossy(record.value.expect("value")).into_owned(),
                    );
                }
                offset = header.next_offset();
                at += header.total_bytes();
            }
        }
    }
    records
}

fn run<T>(future: impl std::future::Future<Output = T>) -> T {
    LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .expect("executor")
        .run(future)
}

fn check(acked: &Acked, stored: &std::collections::HashMap<(i32, i64), String>) {
    for (partition, base, values) in acked {
        for (i, value) in values.iter().enumerate() {
            let offset = base + i as i64;
            assert_eq!(
                stored.get(&(*partition, offset)),
                Some(value),
                "acknowledged record at {partition}/{offset} lost or changed"
            );
        }
    }
}

#[test]
fn sigkill_during_acks_all_production_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker =
        BrokerProcess::start(env!("CARGO_BIN_EXE_weir"), dir.path(), 2, &[]).expect("broker");
    broker
        .cli_ok(
            &[
                "topic",
                "create",
                "kill",
                "--partitions",
                &PARTITIONS.to_string(),
            ],
            None,
        )
        .expect("create");
    let mut acked = Vec::new();
    for round in 0..6 {
        let pid = broker.pid().expect("running") as i32;
        let delay = Duration::from_millis(100 + (round as u64 * 37) % 200);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        });
        let address = broker.native.clone();
        let acked_now =
            run(async move { produce_until_failure(&address, round, usize::MAX).await });
        killer.join().expect("killer");
        broker.kill9();
        assert!(
            !acked_now.is_empty(),
            "round {round}: nothing was acknowledged before the kill"
        );
        acked.extend(acked_now);
        broker.restart().expect("restart after kill -9");
        let address = broker.native.clone();
        let stored = run(async move { read_everything(&address).await });
        check(&acked, &stored);
    }
    println!("{} acknowledged batches survived 6 kills", acked.len());
}

#[test]
fn sigterm_finishes_in_flight_requests_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker =
        BrokerProcess::start(env!("CARGO_BIN_EXE_weir"), dir.path(), 2, &[]).expect("broker");
    broker
        .cli_ok(
            &[
                "topic",
                "create",
                "kill",
                "--partitions",
                &PARTITIONS.to_string(),
            ],
            None,
        )
        .expect("create");
    let pid = broker.pid().expect("running") as i32;
    let terminator = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
    });
    let address = broker.native.clone();
    let acked = run(async move { produce_until_failure(&address, 0, usize::MAX).await });
    terminator.join().expect("terminator");
    assert!(!acked.is_empty());
    let status = broker.terminate();
    // The process may have exited already (terminate then only reaps it).
    assert!(
        status.map_or(true, |s| s.success()),
        "SIGTERM must end in a clean exit"
    );
    // A clean stop leaves index files for every active segment: no recovery scan needed.
    assert!(
        dir.path()
            .join("kill-0")
            .join(format!("{:020}.index", 0))
            .exists()
    );
    broker.restart().expect("restart");
    let address = broker.native.clone();
    let stored = run(async move { read_everything(&address).await });
    check(&acked, &stored);
}
