//! Proves the `weir` CLI round trip against a real two-shard broker: 10,000 keyed lines
//! produced come back complete and in order per partition (and per key), a timestamp
//! start skips older records, and a group's committed offsets survive a restart so that
//! two runs of a group consumer together read everything exactly once; topic configs set
//! at creation are described, and an invalid one is refused.

use std::collections::{BTreeMap, HashSet};

use weir_tests::broker::BrokerProcess;

const LINES: usize = 10_000;
const KEYS: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Seen {
    partition: i64,
    offset: i64,
    key: String,
    value: String,
}

fn parse(json_lines: &str) -> Vec<Seen> {
    json_lines
        .lines()
        .map(|line| {
            let v: serde_json::Value =
                serde_json::from_str(line).expect("consume --format json prints JSON lines");
            Seen {
                partition: v["partition"].as_i64().expect("partition"),
                offset: v["offset"].as_i64().expect("offset"),
                key: v["key"].as_str().unwrap_or_default().to_string(),
                value: v["value"].as_str().expect("value").to_string(),
            }
        })
        .collect()
}

fn sequence(value: &str) -> usize {
    value
        .strip_prefix("value-")
        .and_then(|n| n.parse().ok())
        .expect("value-N")
}

#[test]
fn cli_round_trip_with_keys_timestamps_and_groups() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker =
        BrokerProcess::start(env!("CARGO_BIN_EXE_weir"), dir.path(), 2, &[]).expect("broker");
    broker
        .cli_ok(&["topic", "create", "events", "--partitions", "4"], None)
        .expect("create");
    let listed = broker.cli_ok(&["topic", "list"], None).expect("list");
    assert!(listed.contains("events\t4 partitions"), "{listed}");

    let input: String = (0..LINES)
        .map(|i| format!("key-{}:value-{i}\n", i % KEYS))
        .collect();
    broker
        .cli_ok(&["produce", "events", "--key-separator", ":"], Some(&input))
        .expect("produce");
    let all = parse(
        &broker
            .cli_ok(
                &[
                    "consume",
                    "events",
                    "--from",
                    "beginning",
                    "-n",
                    &LINES.to_string(),
                    "--format",
                    "json",
                ],
                None,
            )
            .expect("consume"),
    );
    assert_eq!(all.len(), LINES);
    assert_eq!(
        all.iter()
            .map(|s| s.value.clone())
            .collect::<HashSet<_>>()
            .len(),
        LINES,
        "every line exactly once"
    );
    let mut last_offset: BTreeMap<i64, i64> = BTreeMap::new();
    let mut last_value: BTreeMap<String, usize> = BTreeMap::new();
    let mut partition_of_key: BTreeMap<String, i64> = BTreeMap::new();
    for seen in &all {
        let previous = last_offset.insert(seen.partition, seen.offset);
        assert!(
            previous.is_none_or(|p| p < seen.offset),
            "offsets increase within partition {}",
            seen.partition
        );
        let n = sequence(&seen.value);
        assert!(
            last_value.insert(seen.key.clone(), n).is_none_or(|p| p < n),
            "records of {} in produced order",
            seen.key
        );
        assert_eq!(
            *partition_of_key
                .entry(seen.key.clone())
                .or_insert(seen.partition),
            seen.partition,
            "one key, one partition"
        );
        assert_eq!(
            n % KEYS,
            seen.key
                .strip_prefix("key-")
                .and_then(|k| k.parse::<usize>().ok())
                .expect("key-N")
        );
    }
    assert_eq!(last_offset.len(), 4, "keys spread over all 4 partitions");
    let describe = broker
        .cli_ok(&["topic", "describe", "events"], None)
        .expect("describe");
    assert!(
        describe.lines().any(|l| l.starts_with("0\t0\t")),
        "{describe}"
    );

    // From a timestamp: only what was produced after it.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    std::thread::sleep(std::time::Duration::from_millis(10));
    let later: String = (LINES..LINES + 100)
        .map(|i| format!("key-{}:value-{i}\n", i % KEYS))
        .collect();
    broker
        .cli_ok(&["produce", "events", "--key-separator", ":"], Some(&later))
        .expect("produce later");
    let from_time = parse(
        &broker
            .cli_ok(
                &[
                    "consume",
                    "events",
                    "--from",
                    &format!("@{since}"),
                    "-n",
                    "100",
                    "--format",
                    "json",
                ],
                None,
            )
            .expect("consume from time"),
    );
    let mut values: Vec<usize> = from_time.iter().map(|s| sequence(&s.value)).collect();
    values.sort_unstable();
    assert_eq!(values, (LINES..LINES + 100).collect::<Vec<_>>());

    // A group commits what it printed; after a restart it continues from there.
    let first = parse(
        &broker
            .cli_ok(
                &[
                    "consume",
                    "events",
                    "--group",
                    "readers",
                    "--from",
                    "beginning",
                    "-n",
                    "4000",
                    "--format",
                    "json",
                ],
                None,
            )
            .expect("first half"),
    );
    broker.restart().expect("restart");
    let rest = parse(
        &broker
            .cli_ok(
                &[
                    "consume",
                    "events",
                    "--group",
                    "readers",
                    "--from",
                    "beginning",
                    "-n",
                    &(LINES + 100 - 4000).to_string(),
                    "--format",
                    "json",
                ],
                None,
            )
            .expect("second half"),
    );
    let first_values: HashSet<String> = first.iter().map(|s| s.value.clone()).collect();
    let rest_values: HashSet<String> = rest.iter().map(|s| s.value.clone()).collect();
    assert_eq!(first_values.len() + rest_values.len(), LINES + 100);
    assert!(
        first_values.is_disjoint(&rest_values),
        "nothing read twice across the restart"
    );
    let groups = broker.cli_ok(&["group", "list"], None).expect("group list");
    assert_eq!(groups.trim(), "readers");
    let lag = broker
        .cli_ok(&["group", "describe", "readers"], None)
        .expect("group describe");
    assert_eq!(lag.lines().count(), 5, "{lag}");
    assert!(
        lag.lines().skip(1).all(|l| l.ends_with("\t0")),
        "no lag left: {lag}"
    );

    // Topic configs: set at creation, described as DescribeConfigs values them; an
    // invalid one is refused with what is allowed.
    let created = [
        "cleanup.policy=delete, compact",
        "retention.ms=0100",
        "compression.type=zstd",
    ];
    let mut create = vec!["topic", "create", "compacted"];
    for config in &created {
        create.extend(["--config", config]);
    }
    broker.cli_ok(&create, None).expect("create with configs");
    let describe = broker
        .cli_ok(&["topic", "describe", "compacted"], None)
        .expect("describe configs");
    for line in [
        "config cleanup.policy=compact,delete\t(topic)",
        "config compression.type=zstd\t(topic)",
        "config retention.ms=100\t(topic)",
    ] {
        assert!(describe.lines().any(|l| l == line), "{line}: {describe}");
    }
    let refused = broker
        .cli(
            &[
                "topic",
                "create",
                "bad",
                "--config",
                "min.insync.replicas=0",
            ],
            None,
        )
        .expect("create with a bad config");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("Value must be at least 1"),
        "{stderr}"
    );

    broker
        .cli_ok(&["topic", "delete", "events"], None)
        .expect("delete");
    assert!(!dir.path().join("events-0").exists());
    let status = broker.terminate().expect("terminate");
    assert!(status.success(), "SIGTERM exits cleanly: {status}");
}
