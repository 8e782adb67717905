//! Clusters of real `weir serve` processes, with librdkafka (confluent-kafka) as the
//! workload: idempotent producers with acks=all write unique values while the test kills
//! brokers with SIGKILL, pauses them with SIGSTOP and (in network namespaces) cuts them off
//! from each other; an independent checker (`tests/cluster/checker.py`, Jepsen's queue
//! checker in spirit) then finds no acknowledged write lost or moved, no unknown value,
//! no offset going backwards (duplicates it reports), and the test finds every replica
//! identical to the leader below the high watermark once the faults healed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weir_tests::certs::{DnType, TestCa, local_hosts};
use weir_tests::cluster::{Cluster, Network, read_replica};
use weir_tests::{python, repo};

fn script(name: &str) -> PathBuf {
    repo().join("tests/cluster").join(name)
}

const TOPIC: &str = "jepsen";

/// The workload, running until `stop` is written in its directory.
struct Workload {
    child: Child,
    out: PathBuf,
}

impl Workload {
    fn start(cluster: &Cluster, out: &Path, producers: usize) -> Workload {
        std::fs::create_dir_all(out).unwrap();
        let child = Command::new(python())
            .arg(script("workload.py"))
            .args([
                "produce",
                "--bootstrap",
                &cluster.kafka_bootstrap(),
                "--topic",
                TOPIC,
            ])
            .args(["--producers", &producers.to_string(), "--rate", "400"])
            .arg("--out")
            .arg(out)
            .spawn()
            .expect("starting the workload");
        Workload {
            child,
            out: out.to_path_buf(),
        }
    }

    /// Panics if the workload died (a fatal producer error voids the run).
    fn check_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the workload stopped on its own ({status}); see its errors above");
        }
    }

    fn acknowledged(&self) -> usize {
        std::fs::read_dir(&self.out)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("acked-"))
            .map(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .lines()
                    .count()
            })
            .sum()
    }

    /// Stops producing, waits for every outstanding write to be answered.
    fn finish(mut self) {
        std::fs::write(self.out.join("stop"), b"").unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the workload failed");
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn create_topic(cluster: &Cluster, partitions: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let created = cluster.cli(&[
            "topic",
            "create",
            TOPIC,
            "--partitions",
            &partitions.to_string(),
            "--replication-factor",
            "3",
            "--config",
            "min.insync.replicas=2",
        ]);
        match created {
            Ok(_) => return,
            Err(error) if Instant::now() < deadline => {
                eprintln!("creating the topic: {error}; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(error) => panic!("creating the topic: {error}"),
        }
    }
}

/// Reads everything back, runs the checker, and prints its report.
fn check(cluster: &Cluster, out: &Path) -> serde_json::Value {
    let status = Command::new(python())
        .arg(script("workload.py"))
        .args([
            "read",
            "--bootstrap",
            &cluster.kafka_bootstrap(),
            "--topic",
            TOPIC,
        ])
        .arg("--out")
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success(), "reading everything back failed");
    let tested = Command::new(python())
        .arg(script("checker.py"))
        .arg("--self-test")
        .status()
        .unwrap();
    assert!(tested.success(), "the checker's self-test failed");
    let output = Command::new(python())
        .arg(script("checker.py"))
        .arg(out)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "checker output: {e}: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    println!("checker: {report}");
    report
}

/// The high watermark of each partition at the final read.
fn high_watermarks(out: &Path) -> Vec<(i32, i64)> {
    std::fs::read_to_string(out.join("high-watermarks.txt"))
        .unwrap()
        .lines()
        .map(|line| {
            let (p, hw) = line.split_once(' ').unwrap();
            (p.parse().unwrap(), hw.parse().unwrap())
        })
        .collect()
}

/// Waits (up to `limit`) until every replica of every partition holds the same batches
/// below its high watermark; panics with the differences otherwise.
fn replicas_converge(cluster: &Cluster, out: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let mut differences = Vec::new();
        for (partition, hw) in high_watermarks(out) {
            let dumps: Vec<_> = cluster
                .nodes
                .iter()
                .map(|n| {
                    let dir = n.data_dir.join(format!("{TOPIC}-{partition}"));
                    read_replica(&dir)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|b| b.last_offset < hw)
                        .collect::<Vec<_>>()
                })
                .collect();
            for (node, dump) in dumps.iter().enumerate().skip(1) {
                if *dump != dumps[0] {
                    differences.push(format!(
                        "{TOPIC}-{partition}: broker {node} holds {} batches below {hw}, broker 0 {}",
                        dump.len(),
                        dumps[0].len()
                    ));
                }
            }
        }
        if differences.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas differ below the high watermark {limit:?} after healing: {differences:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The test's directory: removed afterwards, unless `KEEP_TEST_DIR` is set (to look at
/// the brokers' logs and the workload's files after a failure).
fn test_dir() -> tempfile::TempDir {
    let mut dir = tempfile::tempdir().unwrap();
    if std::env::var_os("KEEP_TEST_DIR").is_some() {
        println!("keeping {}", dir.path().display());
        dir.disable_cleanup(true);
    }
    dir
}

fn assert_no_violations(report: &serde_json::Value) {
    assert_eq!(
        report["ok"],
        serde_json::Value::Bool(true),
        "the checker found violations: {}",
        report["violations"]
    );
    assert!(
        report["acknowledged"].as_u64().unwrap_or(0) > 0,
        "nothing was acknowledged: {report}"
    );
}

/// Proves the basics on 127.0.0.1: a 3-broker cluster forms, replicates, and loses no
/// acknowledged write while its partition leaders are killed with SIGKILL one after the
/// other; every replica then holds the same batches below the high watermark.
#[test]
fn acknowledged_writes_survive_leaders_killed_one_after_another() {
    let dir = test_dir();
    let mut cluster =
        Cluster::start(env!("CARGO_BIN_EXE_weir"), dir.path(), 3, false, &[]).unwrap();
    create_topic(&cluster, 3);
    let status = cluster.cli(&["cluster", "status"]).unwrap();
    assert!(status.contains("controller "), "{status}");
    assert_eq!(status.matches("\tlive\t").count(), 3, "{status}");
    let out = dir.path().join("workload");
    let mut workload = Workload::start(&cluster, &out, 2);
    std::thread::sleep(Duration::from_secs(3));
    for round in 0..6 {
        let victim = round % 3;
        let before = workload.acknowledged();
        cluster.kill9(victim);
        std::thread::sleep(Duration::from_millis(1500));
        cluster.restart_and_wait(victim).unwrap();
        std::thread::sleep(Duration::from_secs(2));
        workload.check_alive();
        println!(
            "round {round}: killed broker {victim}; acknowledged {before} -> {}",
            workload.acknowledged()
        );
    }
    workload.finish();
    let report = check(&cluster, &out);
    assert_no_violations(&report);
    replicas_converge(&cluster, &out, Duration::from_secs(30));
    let describe = cluster.cli(&["topic", "describe", TOPIC]).unwrap();
    println!("{describe}");
    // Traffic between brokers has its own lines in /metrics: leaders serve followers'
    // fetches, and the controller quorum exchanges Raft messages.
    for api in ["replica_fetch", "raft_messages"] {
        let served: u64 = cluster
            .nodes
            .iter()
            .map(|node| requests_served(&node.http, api))
            .sum();
        assert!(served > 0, "no {api} requests counted in /metrics");
    }
    cluster.stop_all().unwrap();
}

/// `weir_requests_total` of `api` over a broker's shards.
fn requests_served(http: &str, api: &str) -> u64 {
    let (status, body) = weir_bench::process::http_get(http, "/metrics").unwrap();
    assert!(status.contains("200"), "{status}");
    let label = format!("api=\"{api}\"");
    body.lines()
        .filter(|l| l.starts_with("weir_requests_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A broker added to a running cluster (a node id outside `--cluster`: it joins the
/// controller quorum as a learner) takes a replica moved onto it with `weir partition
/// move` while producers write: the move completes (new replicas in sync, the old one
/// dropped), nothing acknowledged is lost, and the new replica holds the same batches as
/// the others below the high watermark.
#[test]
fn a_broker_added_online_takes_a_moved_replica() {
    let dir = test_dir();
    let mut cluster =
        Cluster::start(env!("CARGO_BIN_EXE_weir"), dir.path(), 3, false, &[]).unwrap();
    create_topic(&cluster, 2);
    let out = dir.path().join("workload");
    let mut workload = Workload::start(&cluster, &out, 2);
    std::thread::sleep(Duration::from_secs(2));
    let added = cluster.add_broker().unwrap();
    let status = cluster.cli(&["cluster", "status"]).unwrap();
    assert_eq!(status.matches("\tlive\t").count(), 4, "{status}");
    let moved = cluster
        .cli(&[
            "partition",
            "move",
            TOPIC,
            "0",
            "--replicas",
            &format!("1,2,{added}"),
        ])
        .unwrap();
    println!("{moved}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let describe = cluster.cli(&["topic", "describe", TOPIC]).unwrap();
        let row = describe
            .lines()
            .find(|l| l.starts_with("0\t"))
            .unwrap()
            .to_string();
        let fields: Vec<&str> = row.split('\t').collect();
        let wanted = format!("1,2,{added}");
        let mut isr: Vec<&str> = fields[4].split(',').collect();
        isr.sort_unstable();
        if fields[3] == wanted && isr == ["1", "2", &added.to_string()] {
            println!("moved: {row}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the move did not complete: {row}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(2));
    workload.check_alive();
    workload.finish();
    let report = check(&cluster, &out);
    assert_no_violations(&report);
    let hw = high_watermarks(&out)
        .into_iter()
        .find(|(p, _)| *p == 0)
        .unwrap()
        .1;
    let below = |node: usize| {
        let batches = read_replica(&cluster.nodes[node].data_dir.join(format!("{TOPIC}-0")))
            .unwrap_or_default();
        batches
            .into_iter()
            .filter(|b| b.last_offset < hw)
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while below(added) != below(1) {
        assert!(
            Instant::now() < deadline,
            "the new replica differs below the high watermark {hw}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(!below(added).is_empty());
    cluster.stop_all().unwrap();
}

/// The nemesis of the cluster issue, in one run: 3 brokers, each in its own network
/// namespace; at least 50 kill -9 and restart cycles (of a random broker, of the
/// controller, of a partition leader) and at least 20 network partitions (one broker cut
/// off, the leader cut off from the majority, one-way cuts), plus SIGSTOP/SIGCONT and a
/// rolling restart, under a continuous acks=all idempotent workload. After healing:
/// nothing acknowledged lost, no reused offset, no offset regression, and replicas
/// identical below the high watermark within 30 s. Duplicates are counted and reported,
/// not failed: librdkafka resends a message whose fate it could not learn under a new
/// epoch's sequence numbers (see `tests/cluster/checker.py`).
#[test]
fn the_nemesis_finds_no_lost_acknowledged_write() {
    assert!(
        Network::available(),
        "this test needs network namespaces and iptables (root, iproute2, iptables: \
         scripts/install-test-deps installs iptables)"
    );
    let dir = test_dir();
    let mut cluster = Cluster::start(env!("CARGO_BIN_EXE_weir"), dir.path(), 3, true, &[]).unwrap();
    create_topic(&cluster, 6);
    let out = dir.path().join("workload");
    let mut workload = Workload::start(&cluster, &out, 2);
    std::thread::sleep(Duration::from_secs(3));
    let mut rng = weir_tests::Rng::from_clock();
    // The soak (by hand): NEMESIS_KILLS=200 NEMESIS_PARTITIONS=80, or more.
    let wanted = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (kills_wanted, partitions_wanted) = (
        wanted("NEMESIS_KILLS", 50),
        wanted("NEMESIS_PARTITIONS", 20),
    );
    let (mut kills, mut partitions, mut pauses) = (0, 0, 0);
    let started = Instant::now();
    let mut step = 0u64;
    while kills < kills_wanted || partitions < partitions_wanted {
        step += 1;
        let victim = rng.below(3) as usize;
        // Mostly kills (they are quicker), a partition every third step, now and then a
        // pause; the rolling restart once, half way.
        match step % 3 {
            0 if partitions < partitions_wanted => {
                let network = cluster.network.as_ref().unwrap();
                match rng.below(3) {
                    0 => network.isolate(victim).unwrap(),
                    1 => network.split(&[victim]).unwrap(),
                    _ => {
                        network.cut(victim, (victim + 1) % 3).unwrap();
                        network.cut((victim + 2) % 3, victim).unwrap();
                    }
                }
                std::thread::sleep(Duration::from_millis(2000 + rng.below(2000)));
                network.heal().unwrap();
                partitions += 1;
                std::thread::sleep(Duration::from_millis(1500));
            }
            1 if step % 7 == 1 => {
                cluster.pause(victim).unwrap();
                std::thread::sleep(Duration::from_millis(500 + rng.below(2500)));
                cluster.resume(victim).unwrap();
                pauses += 1;
                std::thread::sleep(Duration::from_millis(1500));
            }
            _ => {
                cluster.kill9(victim);
                std::thread::sleep(Duration::from_millis(300 + rng.below(1500)));
                cluster.restart_and_wait(victim).unwrap();
                kills += 1;
                std::thread::sleep(Duration::from_millis(500 + rng.below(1000)));
            }
        }
        if step == 30 {
            for node in 0..3 {
                cluster.kill9(node);
                cluster.restart_and_wait(node).unwrap();
                std::thread::sleep(Duration::from_secs(2));
            }
            kills += 3;
        }
        workload.check_alive();
        println!(
            "{:>4.0}s step {step}: {kills} kills, {partitions} partitions, {pauses} pauses; {} acknowledged",
            started.elapsed().as_secs_f64(),
            workload.acknowledged()
        );
    }
    cluster.network.as_ref().unwrap().heal().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    workload.finish();
    let report = check(&cluster, &out);
    assert_no_violations(&report);
    replicas_converge(&cluster, &out, Duration::from_secs(30));
    cluster.stop_all().unwrap();
}

/// The leader of `topic`'s partition 0 and the size of its ISR, from `weir topic describe`.
fn leader_of_partition_0(cluster: &Cluster, topic: &str) -> Option<(usize, usize)> {
    let describe = cluster.cli(&["topic", "describe", topic]).ok()?;
    let row = describe.lines().find(|l| l.starts_with("0\t"))?;
    let fields: Vec<&str> = row.split('\t').collect();
    let leader = fields.get(1)?.parse::<i64>().ok()?;
    let isr = fields.get(4)?.split(',').filter(|s| !s.is_empty()).count();
    (leader >= 0).then_some((leader as usize, isr))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The failover benchmark of the cluster issue (a benchmark, so it runs by hand:
/// `cargo test --release -p weir-broker --test cluster failover -- --ignored --nocapture`,
/// `FAILOVER_TRIALS` trials, 30 by default): a librdkafka producer (acks=all,
/// idempotent) writes to partition 0 of an RF=3 topic every 2 ms; each trial kills the
/// partition's leader with SIGKILL and measures the time from the kill to the first
/// acknowledgement after it (which only a new leader can give), then restarts the
/// victim and waits until the ISR is whole again. Prints each trial and p50/p99/max.
#[test]
#[ignore = "a benchmark: run by hand, see docs/BENCHMARKS.md"]
fn failover_time_from_leader_kill_to_first_acknowledgement() {
    let trials: usize = std::env::var("FAILOVER_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(30);
    let dir = test_dir();
    let mut cluster =
        Cluster::start(env!("CARGO_BIN_EXE_weir"), dir.path(), 3, false, &[]).unwrap();
    create_topic(&cluster, 1);
    let out = dir.path().join("probe");
    std::fs::create_dir_all(&out).unwrap();
    let acks_path = out.join("acks.txt");
    let mut probe = Command::new(python())
        .arg(script("probe.py"))
        .args(["--bootstrap", &cluster.kafka_bootstrap(), "--topic", TOPIC])
        .arg("--out")
        .arg(&acks_path)
        .spawn()
        .unwrap();
    let acks = || -> Vec<f64> {
        std::fs::read_to_string(&acks_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    };
    let wall = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let mut times = Vec::with_capacity(trials);
    for trial in 0..trials {
        // A settled partition: whole ISR, and the probe acknowledged lately.
        let deadline = Instant::now() + Duration::from_secs(60);
        let leader = loop {
            let recent = acks().last().is_some_and(|t| wall() - t < 0.2);
            match leader_of_partition_0(&cluster, TOPIC) {
                Some((leader, 3)) if recent => break leader,
                _ if Instant::now() > deadline => {
                    panic!("trial {trial}: the partition did not settle")
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let killed_at = wall();
        cluster.kill9(leader);
        let deadline = Instant::now() + Duration::from_secs(60);
        // Responses the old leader sent before it died are handled within a poll (2 ms).
        let first = loop {
            if let Some(t) = acks().into_iter().find(|t| *t > killed_at + 0.02) {
                break t;
            }
            assert!(
                Instant::now() < deadline,
                "trial {trial}: no acknowledgement after the kill"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let seconds = first - killed_at;
        println!(
            "trial {trial}: killed leader {leader}; first acknowledgement after {seconds:.3} s"
        );
        times.push(seconds);
        cluster.restart_and_wait(leader).unwrap();
    }
    std::fs::write(out.join("stop"), b"").unwrap();
    let _ = probe.wait();
    times.sort_by(f64::total_cmp);
    println!(
        "failover over {trials} trials: p50 {:.3} s, p99 {:.3} s, max {:.3} s",
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        times[times.len() - 1]
    );
    cluster.stop_all().unwrap();
}

/// Transactions across brokers: a transactional producer writes to 6 partitions led by
/// the 3 brokers, so the coordinator sends WriteTxnMarkers to the others; a partition
/// leader is killed and restarted between two phases. read_committed sees exactly the
/// committed transactions, read_uncommitted the aborted ones too.
#[test]
fn transactions_span_brokers_and_survive_a_leader_kill() {
    let dir = test_dir();
    let mut cluster =
        Cluster::start(env!("CARGO_BIN_EXE_weir"), dir.path(), 3, false, &[]).unwrap();
    spanning_transactions_survive_a_leader_kill(&mut cluster, dir.path(), &[]);
    cluster.stop_all().unwrap();
}

/// Creates `tx-spanning` (6 partitions, RF=3) once the cluster can, then runs
/// `transactions.py spanning` (its clients given `client_args`): phase 1, a kill -9 and
/// restart of partition 0's leader, phase 2, and the check of both.
fn spanning_transactions_survive_a_leader_kill(
    cluster: &mut Cluster,
    dir: &Path,
    client_args: &[String],
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(error) = cluster.cli(&[
        "topic",
        "create",
        "tx-spanning",
        "--partitions",
        "6",
        "--replication-factor",
        "3",
    ]) {
        assert!(Instant::now() < deadline, "creating the topic: {error}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let phase = |cluster: &Cluster, phase: &str| {
        let status = Command::new(python())
            .arg(repo().join("tests/kafka_clients/transactions.py"))
            .args(["spanning", "--bootstrap", &cluster.kafka_bootstrap()])
            .args(["--phase", phase])
            .args(client_args)
            .arg("--work-dir")
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "transactions.py spanning --phase {phase}");
    };
    phase(cluster, "1");
    let (victim, _) = leader_of_partition_0(cluster, "tx-spanning").expect("a leader");
    cluster.kill9(victim);
    std::thread::sleep(Duration::from_secs(2));
    cluster.restart_and_wait(victim).unwrap();
    phase(cluster, "2");
    phase(cluster, "0");
}

/// Brokers that reach each other over mutual TLS with the authorizer on: each presents
/// its certificate (CN=weir-broker, a super user) on the others' SSL native and Kafka
/// listeners, and checks theirs against the cluster's CA. The cluster forms (Raft and
/// controller calls over TLS), an RF=3 topic takes acks=all writes (replica fetches over
/// TLS), transactions span brokers (WriteTxnMarkers over Kafka SSL, CLUSTER_ACTION
/// checked) and survive their leader's kill -9. Clients are held to their certificates:
/// none is refused at the handshake, `reader`'s, with no ACL, sees no topic and may not
/// write until an ACL lets it.
#[test]
fn a_cluster_over_mutual_tls_replicates_and_authorizes() {
    let dir = test_dir();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let ca = TestCa::new(&certs, "weir cluster CA");
    ca.leaf(
        "broker",
        &[(DnType::CommonName, "weir-broker")],
        local_hosts(),
    );
    for user in ["admin", "reader"] {
        ca.leaf(user, &[(DnType::CommonName, user)], vec![]);
    }
    let (broker_pem, broker_key, ca_pem) = (
        ca.path("broker.pem"),
        ca.path("broker.key"),
        ca.path("ca.pem"),
    );
    let env = [
        ("WEIR_NATIVE_LISTEN_PROTOCOL", "SSL"),
        ("WEIR_KAFKA_LISTEN_PROTOCOL", "SSL"),
        ("WEIR_TLS_CERT_FILE", broker_pem.as_str()),
        ("WEIR_TLS_KEY_FILE", broker_key.as_str()),
        ("WEIR_TLS_CLIENT_CA_FILE", ca_pem.as_str()),
        ("WEIR_TLS_CLIENT_AUTH", "required"),
        ("WEIR_AUTHORIZER_ENABLED", "true"),
        (
            "WEIR_SUPER_USERS",
            "[\"User:CN=weir-broker\", \"User:CN=admin\"]",
        ),
    ];
    let mut cluster =
        Cluster::start(env!("CARGO_BIN_EXE_weir"), dir.path(), 3, false, &env).unwrap();
    let identity = |user: &str| {
        vec![
            "--tls-ca-file".to_string(),
            ca.path("ca.pem"),
            "--tls-cert-file".to_string(),
            ca.path(&format!("{user}.pem")),
            "--tls-key-file".to_string(),
            ca.path(&format!("{user}.key")),
        ]
    };
    cluster.client_args = identity("admin");
    let ssl = [
        ("--ssl-ca", "ca.pem"),
        ("--ssl-cert", "admin.pem"),
        ("--ssl-key", "admin.key"),
    ]
    .map(|(flag, file)| [flag.to_string(), ca.path(file)]);
    spanning_transactions_survive_a_leader_kill(&mut cluster, dir.path(), &ssl.concat());

    let weir = |client_args: &[String], args: &[&str], input: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(args)
            .args(["--brokers", &cluster.native_bootstrap()])
            .args(client_args)
            .env("WEIR_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.success(), stdout, stderr)
    };
    let no_certificate = ["--tls-ca-file".to_string(), ca.path("ca.pem")];
    let (ok, _, stderr) = weir(&no_certificate, &["topic", "list"], "");
    assert!(!ok, "served a client without a certificate");
    assert!(stderr.contains("CertificateRequired"), "{stderr}");
    let reader = identity("reader");
    let (ok, listed, stderr) = weir(&reader, &["topic", "list"], "");
    assert!(ok, "{stderr}");
    assert!(!listed.contains("tx-spanning"), "reader sees {listed}");
    let produce = ["produce", "tx-spanning"];
    let (ok, _, stderr) = weir(&reader, &produce, "refused\n");
    assert!(!ok, "reader wrote without an ACL");
    assert!(stderr.contains("AuthorizationFailed"), "{stderr}");
    cluster
        .cli(&[
            "acl",
            "create",
            "--topic",
            "tx-spanning",
            "--principal",
            "User:CN=reader",
            "--operation",
            "write,describe",
        ])
        .unwrap();
    // Every broker applies the ACL from the metadata log; until then, refusals.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, _, stderr) = weir(&reader, &produce, "allowed\n");
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "reader still refused: {stderr}");
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.stop_all().unwrap();
    // A broker whose certificate is no super user would be refused by every other: it
    // says so and does not start.
    let output = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--node-id", "0", "--cores", "1"])
        .args(["--cluster", "127.0.0.1:1,127.0.0.1:2"])
        .args([
            "--native-listen",
            "127.0.0.1:0",
            "--kafka-listen",
            "127.0.0.1:0",
        ])
        .args(["--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("lone"))
        .envs(
            env.iter()
                .filter(|(k, _)| *k != "WEIR_SUPER_USERS")
                .copied(),
        )
        .env("WEIR_SUPER_USERS", "[\"User:CN=admin\"]")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started: {stderr}");
    assert!(stderr.contains("User:CN=weir-broker"), "{stderr}");
}
