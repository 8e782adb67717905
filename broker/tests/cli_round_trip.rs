//! Proves the `weir` CLI round trip against a real two-shard broker: 10,000 keyed lines
//! produced come back complete and in order per partition (and per key), a timestamp
//! start skips older records, and a group's committed offsets survive a restart so that
//! two runs of a group consumer together read everything exactly once; topic configs set
//! at creation are described, and an invalid one is refused. `weir topic alter-config`
//! overrides and deletes configs (kept across a restart), `weir topic describe` shows
//! every config with its source, and bad changes are refused whole, with what is allowed.
//! A deleted topic leaves no files, and a deletion a crash cut short is finished at start.

use std::collections::{BTreeMap, HashSet};

use glommio::{LocalExecutorBuilder, Placement};
use weir_broker::topic::TOPIC_CONFIG_KEYS;
use weir_client::{Client, ClientError, ConfigSource, ErrorCode};
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
    // A deleted partition's directory whose removal a crash cut short goes at the next
    // start.
    let interrupted = dir.path().join("gone-0.1764000000000000000.deleted");
    std::fs::create_dir(&interrupted).unwrap();
    std::fs::write(interrupted.join("00000000000000000000.log"), b"old").unwrap();
    broker.restart().expect("restart");
    let gone = wait_until(|| !interrupted.exists());
    assert!(gone, "the interrupted deletion was not finished");
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
    // The directory leaves its name at once; its files are freed at the delete rate.
    let left = || -> Vec<String> {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("events-"))
            .collect()
    };
    assert!(
        left().iter().all(|name| name.ends_with(".deleted")),
        "{:?}",
        left()
    );
    assert!(
        wait_until(|| left().is_empty()),
        "the deleted topic's files stay: {:?}",
        left()
    );
    let status = broker.terminate().expect("terminate");
    assert!(status.success(), "SIGTERM exits cleanly: {status}");
}

/// Whether `done` holds within 30 s.
fn wait_until(done: impl Fn() -> bool) -> bool {
    let by = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() && std::time::Instant::now() < by {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    done()
}

/// `weir topic describe`'s config lines: key to (value, source).
fn described_configs(broker: &BrokerProcess, topic: &str) -> BTreeMap<String, (String, String)> {
    let describe = broker
        .cli_ok(&["topic", "describe", topic], None)
        .expect("describe");
    let configs: BTreeMap<String, (String, String)> = describe
        .lines()
        .filter_map(|line| line.strip_prefix("config "))
        .map(|line| {
            let (pair, source) = line.split_once('\t').expect("KEY=VALUE\t(SOURCE)");
            let (key, value) = pair.split_once('=').expect("KEY=VALUE");
            let source = source.trim_start_matches('(').trim_end_matches(')');
            (key.to_string(), (value.to_string(), source.to_string()))
        })
        .collect();
    assert_eq!(
        configs.keys().map(String::as_str).collect::<Vec<_>>(),
        TOPIC_CONFIG_KEYS.iter().map(|k| k.name).collect::<Vec<_>>(),
        "every key once, in name order: {describe}"
    );
    configs
}

/// Runs `weir topic alter-config` expecting a refusal; returns its stderr.
fn refused(broker: &BrokerProcess, args: &[&str]) -> String {
    let mut command = vec!["topic", "alter-config"];
    command.extend(args);
    let output = broker.cli(&command, None).expect("run weir");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{args:?} was accepted: {stderr}");
    stderr
}

/// Proves that `weir topic alter-config` sets and deletes overrides through a real broker
/// (kept across a restart), that `weir topic describe` lists every key with source topic,
/// broker or default, and that bad changes exit non-zero, say what is allowed and change
/// nothing.
#[test]
fn alter_config_overrides_and_deletes_and_describe_shows_sources() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The broker's configuration sets retention.ms, so its source is the broker.
    let mut broker = BrokerProcess::start_with_env(
        env!("CARGO_BIN_EXE_weir"),
        dir.path(),
        1,
        &[],
        &[("WEIR_LOG_RETENTION_MS", "3600000")],
    )
    .expect("broker");
    broker
        .cli_ok(
            &[
                "topic",
                "create",
                "tuned",
                "--config",
                "compression.type=zstd",
            ],
            None,
        )
        .expect("create");
    let value = |configs: &BTreeMap<String, (String, String)>, key: &str| {
        let (value, source) = &configs[key];
        (value.clone(), source.clone())
    };
    let pair = |value: &str, source: &str| (value.to_string(), source.to_string());
    let configs = described_configs(&broker, "tuned");
    assert_eq!(value(&configs, "compression.type"), pair("zstd", "topic"));
    assert_eq!(value(&configs, "retention.ms"), pair("3600000", "broker"));
    assert_eq!(value(&configs, "segment.ms"), pair("604800000", "default"));

    let altered = broker
        .cli_ok(
            &[
                "topic",
                "alter-config",
                "tuned",
                "--set",
                "retention.ms=5000",
                "--set",
                "cleanup.policy=compact, delete",
                "--delete",
                "compression.type",
            ],
            None,
        )
        .expect("alter");
    assert!(altered.contains("altered"), "{altered}");
    let configs = described_configs(&broker, "tuned");
    assert_eq!(value(&configs, "retention.ms"), pair("5000", "topic"));
    assert_eq!(
        value(&configs, "cleanup.policy"),
        pair("compact,delete", "topic")
    );
    assert_eq!(
        value(&configs, "compression.type"),
        pair("producer", "default")
    );

    // Deleting one override brings back the broker's value and keeps the others.
    broker
        .cli_ok(
            &["topic", "alter-config", "tuned", "--delete", "retention.ms"],
            None,
        )
        .expect("delete an override");
    let configs = described_configs(&broker, "tuned");
    assert_eq!(value(&configs, "retention.ms"), pair("3600000", "broker"));
    assert_eq!(
        value(&configs, "cleanup.policy"),
        pair("compact,delete", "topic")
    );

    // Validating changes nothing.
    broker
        .cli_ok(
            &[
                "topic",
                "alter-config",
                "tuned",
                "--set",
                "segment.ms=1000",
                "--validate-only",
            ],
            None,
        )
        .expect("validate only");
    assert_eq!(described_configs(&broker, "tuned"), configs);

    // Refusals: the message says what is allowed; nothing of a refused change applies.
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "tuned",
                "--set",
                "segment.ms=7",
                "--set",
                "compression.type=brotli",
            ],
            "InvalidConfig: invalid config: Invalid value brotli for configuration \
             compression.type: not one of the allowed values; allowed: uncompressed, zstd, \
             lz4, snappy, gzip or producer",
        ),
        (
            &["tuned", "--set", "min.insync.replicas=0"],
            "Value must be at least 1; allowed: at least 1",
        ),
        (
            &["tuned", "--set", "no.such.key=1"],
            "InvalidConfig: invalid config: Unknown topic config name: no.such.key; known are \
             cleanup.policy",
        ),
        (
            &["tuned", "--delete", "no.such.key"],
            "Unknown topic config name: no.such.key",
        ),
        (
            &[
                "tuned",
                "--set",
                "retention.ms=1",
                "--delete",
                "retention.ms",
            ],
            "InvalidRequest: invalid request: config retention.ms is named more than once",
        ),
        (&["tuned", "--set", "retention.ms"], "is not KEY=VALUE"),
        (&["tuned"], "--set <KEY=VALUE>"),
        (
            &["missing", "--set", "retention.ms=1"],
            "UnknownTopicOrPartition: unknown topic missing",
        ),
        (
            &["__consumer_offsets", "--set", "retention.ms=1"],
            "InvalidTopic: invalid topic: __consumer_offsets is internal",
        ),
        (
            &[
                "__consumer_offsets",
                "--set",
                "retention.ms=1",
                "--validate-only",
            ],
            "__consumer_offsets is internal",
        ),
    ];
    for (args, expected) in cases {
        let stderr = refused(&broker, args);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert_eq!(described_configs(&broker, "tuned"), configs);

    // The overrides are in the metadata log: a restart keeps them.
    broker.restart().expect("restart");
    assert_eq!(described_configs(&broker, "tuned"), configs);
    let status = broker.terminate().expect("terminate");
    assert!(status.success(), "SIGTERM exits cleanly: {status}");
}

/// The refusal's error code, or a panic naming what came instead.
fn code_of(result: Result<(), ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Broker { code, .. }) => code,
        other => panic!("expected a broker error, got {other:?}"),
    }
}

/// Proves the native client's config calls: sources as the protocol defines them,
/// validate-only changes nothing, metadata reports the overrides, and each refusal has
/// its error code.
#[test]
fn native_client_describes_and_alters_topic_configs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker =
        BrokerProcess::start(env!("CARGO_BIN_EXE_weir"), dir.path(), 1, &[]).expect("broker");
    let address = broker.native.clone();
    LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .expect("executor")
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            client.create_topic("native", 1, &[]).await.expect("create");
            let described = client
                .describe_topic_configs("native")
                .await
                .expect("describe");
            assert_eq!(described.len(), TOPIC_CONFIG_KEYS.len());
            assert!(
                described.iter().all(|c| c.source == ConfigSource::Default),
                "{described:?}"
            );
            let set = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            };
            let source_of = |configs: &[weir_client::TopicConfigEntry], key: &str| {
                let entry = configs.iter().find(|c| c.key == key).expect("key");
                (entry.value.clone(), entry.source)
            };

            let retention = set(&[("retention.ms", "1000")]);
            client
                .validate_topic_configs("native", &retention, &[])
                .await
                .expect("validate");
            let described = client
                .describe_topic_configs("native")
                .await
                .expect("describe");
            assert_eq!(
                source_of(&described, "retention.ms"),
                ("604800000".to_string(), ConfigSource::Default)
            );
            client
                .alter_topic_configs("native", &retention, &[])
                .await
                .expect("alter");
            let described = client
                .describe_topic_configs("native")
                .await
                .expect("describe");
            assert_eq!(
                source_of(&described, "retention.ms"),
                ("1000".to_string(), ConfigSource::Topic)
            );
            // Metadata reports the overrides too, valued as described.
            let metadata = client
                .metadata(Some(&["native".to_string()]))
                .await
                .expect("metadata");
            assert_eq!(
                metadata.topics[0].configs,
                vec![("retention.ms".to_string(), "1000".to_string())]
            );
            client
                .alter_topic_configs("native", &[], &["retention.ms".to_string()])
                .await
                .expect("delete");
            let described = client
                .describe_topic_configs("native")
                .await
                .expect("describe");
            assert_eq!(
                source_of(&described, "retention.ms"),
                ("604800000".to_string(), ConfigSource::Default)
            );

            let bad = set(&[("retention.ms", "-2")]);
            let cases = [
                (
                    client.alter_topic_configs("native", &bad, &[]).await,
                    ErrorCode::InvalidConfig,
                ),
                (
                    client.validate_topic_configs("native", &bad, &[]).await,
                    ErrorCode::InvalidConfig,
                ),
                (
                    client.alter_topic_configs("absent", &retention, &[]).await,
                    ErrorCode::UnknownTopicOrPartition,
                ),
                (
                    client
                        .alter_topic_configs("__consumer_offsets", &retention, &[])
                        .await,
                    ErrorCode::InvalidTopic,
                ),
                (
                    client.describe_topic_configs("absent").await.map(|_| ()),
                    ErrorCode::UnknownTopicOrPartition,
                ),
            ];
            for (result, expected) in cases {
                assert_eq!(code_of(result), expected);
            }
            let internal = client
                .describe_topic_configs("__consumer_offsets")
                .await
                .expect("internal topics are described");
            assert_eq!(
                source_of(&internal, "cleanup.policy"),
                ("compact".to_string(), ConfigSource::Topic)
            );
        });
}
