//! Unmodified Kafka clients against a real broker: for each client library,
//! `tests/kafka_clients/scenario.py` produces 20,000 keyed messages with headers in every
//! codec the client supports, consumes them in a group of 3 processes with one killed
//! mid-way, restarts the broker with kill -9 and checks that the group resumes at its
//! committed offsets and that nothing was lost or reordered; `tools.py` runs kcat and the
//! admin clients; `transactions.py` runs transactional producers and read_committed
//! consumers, and a consume-transform-produce pipeline under kills. The clients are
//! installed by `scripts/install-test-deps`.

use std::process::Command;

use weir_tests::{python, repo};

/// Runs a script of `tests/kafka_clients` against the `weir` binary in a fresh directory.
fn run(script: &str, args: &[&str]) {
    let work = tempfile::tempdir().unwrap();
    let status = Command::new(python())
        .arg(repo().join("tests/kafka_clients").join(script))
        .args(args)
        .args(["--weir", env!("CARGO_BIN_EXE_weir")])
        .arg("--work-dir")
        .arg(work.path())
        .status()
        .expect("running a client script");
    assert!(status.success(), "{script} {args:?} failed");
}

fn scenario(client: &str) {
    run("scenario.py", &["run", "--client", client]);
}

#[test]
fn librdkafka_through_confluent_kafka() {
    scenario("confluent");
}

#[test]
fn kafka_python() {
    scenario("kafka-python");
}

#[test]
fn aiokafka() {
    scenario("aiokafka");
}

#[test]
fn kafkajs() {
    assert!(
        repo()
            .join("tests/kafka_clients/node_modules/kafkajs")
            .exists(),
        "kafkajs is missing: run ./scripts/install-test-deps"
    );
    scenario("kafkajs");
}

fn tool(command: &str) {
    run("tools.py", &[command]);
}

/// kcat (Debian's, librdkafka 2.0): produce from a file in every codec, -L, and
/// -C -o beginning -e.
#[test]
fn kcat() {
    tool("kcat");
}

/// Topics, configs, partitions and records through confluent_kafka.admin and
/// kafka-python's admin client.
#[test]
fn admin_clients() {
    tool("admin");
}

/// Kafka's topic configs through confluent_kafka.admin: set at creation, described with
/// their sources (a broker started with one changed default), altered with AlterConfigs
/// and IncrementalAlterConfigs, and invalid values refused with INVALID_CONFIG.
#[test]
fn topic_configs_through_confluent_admin() {
    tool("configs");
}

/// A compacted topic through librdkafka: 100,000 updates over 1,000 keys (lz4 and zstd)
/// and 100 tombstones are compacted in the background to every key's latest value, read
/// back from the beginning (also across a removed range, and after kill -9); a record
/// without a key is refused with INVALID_RECORD.
#[test]
fn compacted_topic_through_librdkafka() {
    run("compaction.py", &[]);
}

/// Transactions through librdkafka: commits and aborts seen by read_committed and
/// read_uncommitted consumers, offsets committed only with their transaction, an open
/// transaction holding the last stable offset across a broker kill -9, fencing of a
/// producer by a newer one of its transactional.id, and the broker's abort of a
/// transaction past its timeout.
#[test]
fn transactions_through_librdkafka() {
    run("transactions.py", &["basics"]);
}

/// Exactly once: 100,000 messages copied from one topic to another in transactions that
/// commit the input offsets, while the copying process is killed (SIGKILL) 20 times and
/// the broker 5 times; the output read with read_committed holds each input once, in
/// order, and read_uncommitted sees the aborted records too.
#[test]
fn consume_transform_produce_exactly_once() {
    run("transactions.py", &["pipeline"]);
}

/// Idempotence under broker kill -9: 100,000 messages from librdkafka's idempotent
/// producer while the broker is killed and restarted 50 times; all delivered, each stored
/// exactly once.
#[test]
fn idempotent_producer_through_50_broker_kills() {
    run("transactions.py", &["idempotence"]);
}
