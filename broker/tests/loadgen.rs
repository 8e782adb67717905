//! Proves that loadgen drives a real broker end to end and verifies it: a short run with
//! several producers and consumers, keys and varied message sizes passes, and its JSON
//! report carries the fields scripts rely on; the same load passes through the Kafka
//! gateway with loadgen's Kafka mode.

use weir_loadgen::{AcksArg, Config, Protocol};
use weir_tests::broker::BrokerProcess;

fn config(brokers: String) -> Config {
    Config {
        brokers,
        protocol: Protocol::Native,
        topic: "load".into(),
        topics: 1,
        partitions: 4,
        message_bytes: 200,
        message_bytes_max: Some(3000),
        acks: AcksArg::All,
        rate_mb_s: None,
        duration_s: 2.0,
        messages: None,
        warmup_s: 0.5,
        producers: 2,
        consumers: 2,
        compression: "none".into(),
        batch_bytes: 16 << 10,
        linger_ms: 1.0,
        in_flight: 8,
        key_cardinality: 100,
        threads: 2,
        drain_timeout_s: 20.0,
        json: true,
        quiet: true,
        topic_configs: vec![],
        from_beginning: false,
        no_read_back: false,
        idempotent: false,
        transaction_messages: None,
    }
}

#[test]
fn loadgen_verifies_a_real_broker() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker =
        BrokerProcess::start(env!("CARGO_BIN_EXE_weir"), dir.path(), 2, &[]).expect("broker");
    let report = weir_loadgen::run(config(broker.native.clone())).expect("loadgen");
    assert!(report.ok, "{}", report.table());
    assert!(
        report.messages > 0 && report.consumed == report.messages,
        "{}",
        report.table()
    );
    let json = serde_json::to_value(&report).expect("json");
    for field in ["throughput_mb_s", "messages", "lost", "duplicates"] {
        assert!(json.get(field).is_some(), "missing {field}");
    }
    for histogram in ["produce_latency_us", "end_to_end_latency_us"] {
        for percentile in ["p50", "p90", "p99", "p999", "max"] {
            assert!(
                json[histogram].get(percentile).is_some(),
                "missing {histogram}.{percentile}"
            );
        }
    }
    // Open loop at a fixed rate, acks leader, one partition.
    let open = Config {
        rate_mb_s: Some(2.0),
        acks: AcksArg::Leader,
        topic: "open".into(),
        partitions: 1,
        ..config(broker.native.clone())
    };
    let report = weir_loadgen::run(open).expect("open loop");
    assert!(report.ok, "{}", report.table());
    // Three topics of three partitions, keyed and not; then without consumers, verified
    // by reading back; then a catch-up read of everything stored.
    for keys in [0, 50] {
        let spread = Config {
            topic: format!("spread-{keys}"),
            topics: 3,
            partitions: 3,
            key_cardinality: keys,
            ..config(broker.native.clone())
        };
        let report = weir_loadgen::run(spread.clone()).expect("three topics");
        assert!(
            report.ok && report.consumed == report.messages,
            "{}",
            report.table()
        );
        let produced = report.messages;
        let report = weir_loadgen::run(Config {
            consumers: 0,
            ..spread.clone()
        })
        .expect("read back");
        assert!(
            report.ok && report.verified && report.consumed == report.messages,
            "{}",
            report.table()
        );
        let stored = produced + report.messages;
        let report = weir_loadgen::run(Config {
            producers: 0,
            from_beginning: true,
            drain_timeout_s: 5.0,
            ..spread
        })
        .expect("catch up");
        assert!(report.ok && report.consumed == stored, "{}", report.table());
    }
}

/// The same load through the Kafka gateway: loadgen's Kafka mode produces and fetches
/// with the Kafka protocol and verifies every message.
#[test]
fn loadgen_verifies_the_kafka_gateway() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker =
        BrokerProcess::start(env!("CARGO_BIN_EXE_weir"), dir.path(), 2, &[]).expect("broker");
    let mut config = config(broker.kafka.clone());
    config.protocol = Protocol::Kafka;
    let report = weir_loadgen::run(config).expect("loadgen");
    assert!(report.ok, "{}", report.table());
    assert!(
        report.messages > 0 && report.consumed == report.messages,
        "{}",
        report.table()
    );
}

/// Idempotent and transactional producing over both protocols (what
/// `docs/BENCHMARKS.md` measures): batches carry producer ids and sequences, and in the
/// transactional runs 100-message transactions commit; every message is consumed once.
/// Without acks all, idempotence is refused up front.
#[test]
fn loadgen_produces_idempotently_and_in_transactions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker =
        BrokerProcess::start(env!("CARGO_BIN_EXE_weir"), dir.path(), 2, &[]).expect("broker");
    let protocols = [
        (Protocol::Kafka, broker.kafka.clone()),
        (Protocol::Native, broker.native.clone()),
    ];
    for (protocol, address) in protocols {
        for transaction_messages in [None, Some(100)] {
            let mut config = config(address.clone());
            config.protocol = protocol;
            config.topic = format!("load-{protocol:?}-{}", transaction_messages.unwrap_or(0));
            config.idempotent = true;
            config.transaction_messages = transaction_messages;
            let report = weir_loadgen::run(config).expect("loadgen");
            let run = format!("{protocol:?} {transaction_messages:?}");
            assert!(report.ok, "{run}: {}", report.table());
            assert!(
                report.messages > 0 && report.consumed == report.messages && report.duplicates == 0,
                "{run}: {}",
                report.table()
            );
        }
    }
    let mut leader_acks = config(broker.native.clone());
    leader_acks.idempotent = true;
    leader_acks.acks = weir_loadgen::AcksArg::Leader;
    assert!(
        weir_loadgen::run(leader_acks).is_err(),
        "idempotence needs acks all"
    );
}

/// Compressed batches in every codec, through both front doors: loadgen compresses what
/// it produces, the broker stores it as given, loadgen decompresses what it fetches and
/// verifies every message; an unknown codec is refused up front.
#[test]
fn loadgen_compresses_in_every_codec() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker =
        BrokerProcess::start(env!("CARGO_BIN_EXE_weir"), dir.path(), 1, &[]).expect("broker");
    for (n, codec) in ["gzip", "snappy", "lz4", "zstd"].into_iter().enumerate() {
        for (protocol, brokers) in [
            (Protocol::Native, broker.native.clone()),
            (Protocol::Kafka, broker.kafka.clone()),
        ] {
            let report = weir_loadgen::run(Config {
                protocol,
                compression: codec.into(),
                topic: format!("compressed-{n}-{protocol:?}"),
                duration_s: 1.0,
                warmup_s: 0.2,
                ..config(brokers)
            })
            .expect("loadgen");
            assert!(
                report.ok && report.consumed > 0,
                "{codec}: {}",
                report.table()
            );
        }
    }
    let refused = weir_loadgen::run(Config {
        compression: "brotli".into(),
        ..config(broker.native.clone())
    });
    assert!(refused.is_err());
}
