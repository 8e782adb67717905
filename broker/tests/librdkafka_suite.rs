//! librdkafka's own test suite against a real broker: the tests listed in
//! `tests/librdkafka/allow-list.txt` (built by `scripts/build-librdkafka-tests`, which
//! `scripts/install-test-deps` runs) must each run and pass; a test that is skipped does
//! not count. Which tests are left out, and why, is in `docs/COMPATIBILITY.md`.

use std::path::{Path, PathBuf};
use std::process::Command;

use weir_tests::broker::BrokerProcess;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn allow_list() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("tests/librdkafka/allow-list.txt"))
        .expect("tests/librdkafka/allow-list.txt");
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect()
}

/// How the runner picks subtests.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `-Q`: the quick subtests only, as most of the allow-list is run.
    Quick,
    /// Every subtest, for tests made only of slow ones.
    Full,
}

/// Runs librdkafka's test-runner on `tests` against `bootstrap` and fails the test
/// unless each of them ran and passed (the log is kept in `dir` then).
fn run_suite(dir: tempfile::TempDir, bootstrap: &str, tests: &[String]) {
    run_suite_with(
        dir,
        &format!("bootstrap.servers={bootstrap}\n"),
        tests,
        Mode::Quick,
    );
}

/// `run_suite` with the client configuration `conf` (test.conf lines) and `mode`.
fn run_suite_with(dir: tempfile::TempDir, conf: &str, tests: &[String], mode: Mode) {
    let tests_dir = repo().join("target/librdkafka/src/tests");
    let runner = tests_dir.join("test-runner");
    assert!(
        runner.exists(),
        "{} is missing: run ./scripts/install-test-deps (./scripts/test does)",
        runner.display()
    );
    let conf_path = dir.path().join("test.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let conf = conf_path;
    let numbers: Vec<&str> = tests.iter().map(|t| &t[..4]).collect();
    let mut args = vec!["-p1", "-E"];
    if mode == Mode::Quick {
        args.push("-Q");
    }
    let output = Command::new(&runner)
        .current_dir(&tests_dir)
        .args(args)
        .env("LD_LIBRARY_PATH", "../src:../src-cpp")
        .env("RDKAFKA_TEST_CONF", &conf)
        .env("TEST_KAFKA_VERSION", "3.9.0")
        // CI sets `CI`, which makes the runner skip some tests: set it everywhere so a
        // local run behaves like CI's.
        .env("CI", "1")
        .env("TESTS", numbers.join(","))
        .output()
        .expect("running librdkafka's test-runner");
    let log = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let log_path = dir.path().join("test-runner.log");
    std::fs::write(&log_path, &log).unwrap();
    // A test counts when it passed having run: in quick mode (`-Q`) one made only of
    // slow subtests "passes" in 0.000 s without doing anything.
    let not_passed: Vec<&String> = tests.iter().filter(|t| !ran_and_passed(&log, t)).collect();
    if !output.status.success() || !not_passed.is_empty() {
        let tail: String = log
            .lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        let kept = dir.keep();
        panic!(
            "librdkafka tests not passed: {not_passed:?} (exit {:?}); log in {}\n{tail}",
            output.status,
            kept.join("test-runner.log").display()
        );
    }
}

#[test]
fn librdkafka_test_suite_allow_list_passes() {
    let tests = allow_list();
    assert!(
        tests.len() >= 40,
        "the allow-list has {} tests",
        tests.len()
    );
    let dir = tempfile::tempdir().unwrap();
    // Kafka's defaults, as the suite expects: some tests rely on the initial rebalance
    // delay (3 s) putting consumers that start together in one generation.
    let broker =
        BrokerProcess::start(env!("CARGO_BIN_EXE_weir"), &dir.path().join("data"), 2, &[]).unwrap();
    let bootstrap = broker.kafka.clone();
    run_suite(dir, &bootstrap, &tests);
    drop(broker);
}

/// librdkafka's transactions test (0103) creates its topics with replication factor 3:
/// it runs against a 3-broker cluster, transaction coordinators and partition leaders
/// spread over the brokers.
#[test]
fn librdkafka_transactions_test_passes_against_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = weir_tests::cluster::Cluster::start(
        env!("CARGO_BIN_EXE_weir"),
        &dir.path().join("cluster"),
        3,
        false,
        &[],
    )
    .unwrap();
    let bootstrap = cluster.kafka_bootstrap();
    run_suite(dir, &bootstrap, &["0103_transactions".to_string()]);
    cluster.stop_all().unwrap();
}

/// librdkafka's SASL tests, against a 3-broker cluster (0142 creates its topic with
/// replication factor 3) with a SASL_PLAINTEXT Kafka listener beside the plaintext one
/// the brokers use among themselves. 0135 logs in with PLAIN and with SCRAM-SHA-256 and
/// changes its credentials at run time. 0142 re-authenticates (KIP-368) under a 3 s
/// session lifetime (`connections_max_reauth_ms`, which it reads from DescribeConfigs)
/// while it consumes, produces and runs transactions, and must see a re-authentication
/// with wrong credentials fail; its subtests are all slow ones, so it runs without `-Q`.
#[test]
fn librdkafka_sasl_tests_pass_against_a_cluster() {
    const USER: &str = "librdkafka";
    const PASSWORD: &str = "sasl-suite-password";
    let dir = tempfile::tempdir().unwrap();
    let cluster = weir_tests::cluster::Cluster::start(
        env!("CARGO_BIN_EXE_weir"),
        &dir.path().join("cluster"),
        3,
        false,
        &[
            ("WEIR_KAFKA_LISTENERS", "[\"SASL_PLAINTEXT://127.0.0.1:0\"]"),
            ("WEIR_CONNECTIONS_MAX_REAUTH_MS", "3000"),
        ],
    )
    .unwrap();
    cluster
        .cli(&["user", "create", "--password", PASSWORD, USER])
        .unwrap();
    // Every broker must know the user before a client logs in to it.
    for node in &cluster.nodes {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let listed = cluster.cli_at(&node.native, &["user", "list"]);
            if listed.as_deref().is_ok_and(|out| out.contains(USER)) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "broker {} never listed {USER}: {listed:?}",
                node.id
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let bootstrap = cluster.listener_bootstrap("kafka+SASL_PLAINTEXT").unwrap();
    let conf = |mechanism: &str| {
        format!(
            "bootstrap.servers={bootstrap}\nsecurity.protocol=SASL_PLAINTEXT\n\
             sasl.mechanism={mechanism}\nsasl.username={USER}\nsasl.password={PASSWORD}\n"
        )
    };
    for mechanism in ["PLAIN", "SCRAM-SHA-256"] {
        run_suite_with(
            tempfile::tempdir().unwrap(),
            &conf(mechanism),
            &["0135_sasl_credentials".to_string()],
            Mode::Quick,
        );
    }
    run_suite_with(
        dir,
        &conf("SCRAM-SHA-512"),
        &["0142_reauthentication".to_string()],
        Mode::Full,
    );
    drop(cluster);
}

/// Whether `test`'s PASSED line is in the runner's log with a non-zero run time: the
/// runner prefixes it with `[<test> / <seconds>s]`.
fn ran_and_passed(log: &str, test: &str) -> bool {
    let passed = format!("Test {test} PASSED");
    log.lines()
        .filter(|line| line.contains(&passed))
        .any(|line| {
            let prefix = format!("[{test}");
            let seconds = line
                .find(&prefix)
                .map(|at| &line[at + prefix.len()..])
                .and_then(|rest| rest.split_once('/'))
                .and_then(|(_, rest)| rest.split_once("s]"))
                .and_then(|(seconds, _)| seconds.trim().parse::<f64>().ok());
            seconds.is_some_and(|s| s > 0.0)
        })
}

#[test]
fn a_test_that_did_nothing_does_not_count() {
    let log = "\u{1b}[36m[0045_subscribe_update       /  0.000s] Test 0045_subscribe_update PASSED\n\
               [0130_store_offsets          /  0.712s] Test 0130_store_offsets PASSED\n\
               [0122_buffer_cleaning_after_rebalance/ 12.500s] Test 0122_buffer_cleaning_after_rebalance PASSED\n";
    assert!(!ran_and_passed(log, "0045_subscribe_update"));
    assert!(ran_and_passed(log, "0130_store_offsets"));
    assert!(ran_and_passed(log, "0122_buffer_cleaning_after_rebalance"));
    assert!(!ran_and_passed(log, "0001_multiobj"));
}
