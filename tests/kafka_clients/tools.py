#!/usr/bin/env python3
"""kcat and the admin clients against a real weir broker.

    tools.py kcat --weir BIN --work-dir DIR
        Produces 20,000 keyed messages from a file with kcat (one run per codec, a header
        per run) into a topic that the produce auto-creates, lists it with -L, and reads
        everything back with -C -o beginning -e: all present, each key in order.
    tools.py admin --weir BIN --work-dir DIR
        Creates, describes, alters and deletes topics and configs, adds partitions and
        deletes records through confluent_kafka.admin and kafka-python's admin client.
    tools.py configs --weir BIN --work-dir DIR
        Kafka's topic configs through confluent_kafka.admin against a broker started with
        one changed default (WEIR_LOG_CLEANER_DELETE_RETENTION_MS): set at creation,
        described with their sources (topic, broker, default), replaced with
        AlterConfigs, changed with IncrementalAlterConfigs (SET, DELETE, APPEND,
        SUBTRACT), and every invalid value refused with INVALID_CONFIG.

Run by broker/tests/kafka_clients.rs.
"""

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scenario import Broker, log  # noqa: E402

KCAT_MESSAGES = 20_000
KCAT_KEYS = 100
KCAT_CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def kcat(broker, work_dir):
    bootstrap = broker.kafka
    topic = "kcat-topic"
    per_codec = KCAT_MESSAGES // len(KCAT_CODECS)
    for n, codec in enumerate(KCAT_CODECS):
        path = os.path.join(work_dir, f"input-{codec}.txt")
        with open(path, "w") as f:
            for i in range(n * per_codec, (n + 1) * per_codec):
                f.write(f"key{i % KCAT_KEYS}\t{i}\n")
        subprocess.run(["kcat", "-b", bootstrap, "-P", "-t", topic, "-K", "\t", "-z", codec,
                        "-H", f"codec={codec}", "-X", "enable.idempotence=true", "-l", path],
                       check=True, timeout=120)
        log(f"kcat: produced {per_codec} messages with {codec}")

    listing = subprocess.run(["kcat", "-b", bootstrap, "-L", "-t", topic], check=True,
                             capture_output=True, text=True, timeout=60).stdout
    log("kcat -L:\n" + listing)
    assert "1 brokers:" in listing and f'topic "{topic}" with 4 partitions' in listing, listing

    out = subprocess.run(["kcat", "-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e",
                          "-f", "%p\t%o\t%k\t%s\t%h\n"],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    lines = [line.split("\t") for line in out.splitlines()]
    assert len(lines) == KCAT_MESSAGES, f"consumed {len(lines)} of {KCAT_MESSAGES}"
    last = {}
    seen = set()
    for partition, offset, key, value, headers in lines:
        i = int(value)
        assert key == f"key{i % KCAT_KEYS}", (key, value)
        codec = KCAT_CODECS[i // per_codec]
        assert headers == f"codec={codec}", (headers, value)
        assert i > last.get(key, -1), f"key {key} out of order at {partition}/{offset}"
        last[key] = i
        seen.add(i)
    assert seen == set(range(KCAT_MESSAGES))
    log(f"kcat: consumed all {KCAT_MESSAGES} with -C -o beginning -e, keys in order")


def admin(broker, work_dir):
    from confluent_kafka import Producer, TopicPartition
    from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry,
                                       ConfigResource, NewPartitions, NewTopic)
    bootstrap = broker.kafka
    a = AdminClient({"bootstrap.servers": bootstrap})
    for future in a.create_topics([NewTopic("admin-a", 3, 1, config={"retention.ms": "3600000"})]).values():
        future.result(30)
    assert a.list_topics(timeout=10).topics["admin-a"].partitions.keys() == {0, 1, 2}
    resource = ConfigResource("topic", "admin-a")
    configs = a.describe_configs([resource])[resource].result(30)
    assert configs["retention.ms"].value == "3600000" and not configs["retention.ms"].is_default
    assert configs["segment.bytes"].is_default
    change = ConfigResource("topic", "admin-a", incremental_configs=[
        ConfigEntry("retention.bytes", "1073741824", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)])
    a.incremental_alter_configs([change])[change].result(30)
    configs = a.describe_configs([resource])[resource].result(30)
    assert configs["retention.bytes"].value == "1073741824"
    assert configs["retention.ms"].is_default, "DELETE restores the default"
    bad = ConfigResource("topic", "admin-a", set_config={"no.such.config": "1"})
    try:
        a.alter_configs([bad])[bad].result(30)
        raise AssertionError("an unknown config was accepted")
    except Exception as e:
        assert "INVALID_CONFIG" in str(e) or "no.such.config" in str(e), e
    broker_resource = ConfigResource("broker", "0")
    broker_configs = a.describe_configs([broker_resource])[broker_resource].result(30)
    assert broker_configs["num.partitions"].is_read_only
    for future in a.create_partitions([NewPartitions("admin-a", 5)]).values():
        future.result(30)
    assert len(a.list_topics("admin-a", timeout=10).topics["admin-a"].partitions) == 5
    p = Producer({"bootstrap.servers": bootstrap})
    for _ in range(100):
        p.produce("admin-a", value=b"x", partition=0)
    assert p.flush(30) == 0
    deleted = a.delete_records([TopicPartition("admin-a", 0, 40)])
    for future in deleted.values():
        assert future.result(30).low_watermark == 40
    cluster = a.describe_cluster().result(30)
    assert len(cluster.nodes) == 1 and cluster.cluster_id
    for future in a.delete_topics(["admin-a"]).values():
        future.result(30)
    assert "admin-a" not in a.list_topics(timeout=10).topics
    log("confluent_kafka.admin: topics, configs, partitions, records, cluster: OK")

    from kafka.admin import ConfigResource as KConfigResource
    from kafka.admin import ConfigResourceType, KafkaAdminClient
    from kafka.admin import NewPartitions as KNewPartitions
    from kafka.admin import NewTopic as KNewTopic
    k = KafkaAdminClient(bootstrap_servers=bootstrap)
    k.create_topics([KNewTopic("admin-k", 2, 1, topic_configs={"retention.ms": "1000000"})])
    described = k.describe_configs([KConfigResource(ConfigResourceType.TOPIC, "admin-k")])
    text = str(described)
    assert "1000000" in text, text
    k.alter_configs([KConfigResource(ConfigResourceType.TOPIC, "admin-k", configs={"retention.ms": "2000000"})])
    assert "2000000" in str(k.describe_configs([KConfigResource(ConfigResourceType.TOPIC, "admin-k")]))
    k.create_partitions({"admin-k": KNewPartitions(4)})
    topics = k.describe_topics(["admin-k"])
    assert len(topics[0]["partitions"]) == 4, topics
    assert "admin-k" in k.list_topics()
    k.delete_topics(["admin-k"])
    assert "admin-k" not in k.list_topics()
    k.close()
    log("kafka-python admin: topics, configs, partitions: OK")


# The broker default the configs scenario changes, and the value it sets.
CHANGED_DEFAULT = ("WEIR_LOG_CLEANER_DELETE_RETENTION_MS", "3600000")


def configs(broker, work_dir):
    import warnings
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry,
                                       ConfigResource, ConfigSource, NewTopic)
    a = AdminClient({"bootstrap.servers": broker.kafka})
    topic = "configs-a"
    resource = ConfigResource("topic", topic)
    TOPIC, BROKER, DEFAULT = (ConfigSource.DYNAMIC_TOPIC_CONFIG, ConfigSource.STATIC_BROKER_CONFIG,
                              ConfigSource.DEFAULT_CONFIG)

    def source(entry):
        return ConfigSource(getattr(entry.source, "value", entry.source))

    def describe():
        return a.describe_configs([resource])[resource].result(30)

    def expect(described, name, value, expected_source):
        entry = described[name]
        assert (entry.value, source(entry)) == (value, expected_source), \
            f"{name}: {entry.value} from {source(entry)}, expected {value} from {expected_source}"
        assert entry.is_default == (expected_source == DEFAULT), (name, entry.is_default)
        assert not entry.is_read_only, name

    def refused(future, what):
        try:
            future.result(30)
        except KafkaException as e:
            error = e.args[0]
            assert error.code() == KafkaError.INVALID_CONFIG, f"{what}: {error}"
            return error.str()
        raise AssertionError(f"{what} was accepted")

    created = {
        "cleanup.policy": "compact",
        "min.insync.replicas": "2",
        "compression.type": "zstd",
        "message.timestamp.type": "LogAppendTime",
        "min.cleanable.dirty.ratio": "0.2",
        "max.compaction.lag.ms": "86400000",
        "segment.bytes": "16777216",
        "flush.policy": "interval(100)",
    }
    for future in a.create_topics([NewTopic(topic, 2, 1, config=created)]).values():
        future.result(30)
    described = describe()
    for name, value in created.items():
        expect(described, name, value, TOPIC)
    changed_name, changed_value = CHANGED_DEFAULT
    expect(described, "delete.retention.ms", changed_value, BROKER)
    expect(described, "retention.ms", "604800000", DEFAULT)
    expect(described, "min.compaction.lag.ms", "0", DEFAULT)
    expect(described, "retention.bytes", "-1", DEFAULT)
    synonyms = described["delete.retention.ms"].synonyms
    assert "log.cleaner.delete.retention.ms" in synonyms, synonyms
    synonyms = described["cleanup.policy"].synonyms
    assert {"cleanup.policy", "log.cleanup.policy"} <= set(synonyms), synonyms
    log("configs: created with 8 configs; described with sources topic, broker and default")

    # AlterConfigs replaces the whole set of overrides (deprecated in the client, not gone).
    warnings.filterwarnings("ignore", "alter_configs has been deprecated", DeprecationWarning)
    replace = ConfigResource("topic", topic, set_config={
        "cleanup.policy": "compact,delete", "retention.ms": "3600000",
        "compression.type": "producer"})
    a.alter_configs([replace])[replace].result(30)
    described = describe()
    expect(described, "cleanup.policy", "compact,delete", TOPIC)
    expect(described, "retention.ms", "3600000", TOPIC)
    expect(described, "compression.type", "producer", TOPIC)
    expect(described, "min.insync.replicas", "1", DEFAULT)
    expect(described, "message.timestamp.type", "CreateTime", DEFAULT)
    expect(described, "min.cleanable.dirty.ratio", "0.5", DEFAULT)

    # IncrementalAlterConfigs changes single keys.
    def incremental(*entries):
        change = ConfigResource("topic", topic, incremental_configs=[
            ConfigEntry(name, value, incremental_operation=op) for name, value, op in entries])
        return a.incremental_alter_configs([change])[change]

    SET, DELETE = AlterConfigOpType.SET, AlterConfigOpType.DELETE
    APPEND, SUBTRACT = AlterConfigOpType.APPEND, AlterConfigOpType.SUBTRACT
    incremental(("compression.type", "lz4", SET), ("cleanup.policy", "delete", SUBTRACT),
                ("retention.ms", None, DELETE), ("min.insync.replicas", "3", SET)).result(30)
    described = describe()
    expect(described, "compression.type", "lz4", TOPIC)
    expect(described, "cleanup.policy", "compact", TOPIC)
    expect(described, "retention.ms", "604800000", DEFAULT)
    expect(described, "min.insync.replicas", "3", TOPIC)
    incremental(("cleanup.policy", "delete", APPEND),
                ("delete.retention.ms", "0", SET)).result(30)
    described = describe()
    expect(described, "cleanup.policy", "compact,delete", TOPIC)
    expect(described, "delete.retention.ms", "0", TOPIC)
    incremental(("delete.retention.ms", None, DELETE)).result(30)
    expect(describe(), "delete.retention.ms", changed_value, BROKER)
    log("configs: AlterConfigs replaced, IncrementalAlterConfigs SET/DELETE/APPEND/SUBTRACT: OK")

    # Kafka's flush.messages and flush.ms decide weir's flush policy together.
    NEVER = str(2**63 - 1)
    expect(describe(), "flush.messages", "1", DEFAULT)
    incremental(("flush.messages", NEVER, SET), ("flush.ms", "250", SET)).result(30)
    described = describe()
    expect(described, "flush.policy", "interval(250)", TOPIC)
    expect(described, "flush.ms", "250", TOPIC)
    expect(described, "flush.messages", NEVER, TOPIC)
    incremental(("flush.messages", None, DELETE)).result(30)
    expect(describe(), "flush.policy", "every-batch", TOPIC)
    message = refused(incremental(("flush.policy", "never", SET)), "flush.policy beside flush.ms")
    assert "disagrees" in message, message
    incremental(("flush.ms", None, DELETE)).result(30)
    expect(describe(), "flush.policy", "every-batch", DEFAULT)
    log("configs: flush.messages and flush.ms set the flush policy: OK")

    # Invalid values: refused with INVALID_CONFIG and a message saying what is allowed,
    # by each of the three requests, and nothing changes.
    before = {name: entry.value for name, entry in describe().items()}
    messages = []
    invalid = [
        ("retention.ms", "-2", "at least -1"),
        ("retention.bytes", "lots", "LONG"),
        ("min.cleanable.dirty.ratio", "1.5", "from 0 to 1"),
        ("compression.type", "brotli", "uncompressed, zstd, lz4, snappy, gzip or producer"),
        ("message.timestamp.type", "Now", "CreateTime or LogAppendTime"),
        ("cleanup.policy", "forever", "delete, compact, or compact,delete"),
        ("min.insync.replicas", "0", "at least 1"),
        ("max.compaction.lag.ms", "0", "at least 1"),
        ("delete.retention.ms", "-1", "at least 0"),
        ("segment.bytes", "1000", "max.message.bytes"),
        ("flush.policy", "always", "every-batch, interval(MS)"),
        ("flush.ms", "-1", "at least 0"),
        ("no.such.config", "1", "Unknown topic config name"),
    ]
    for name, value, allowed in invalid:
        what = f"{name}={value}"
        replace = ConfigResource("topic", topic, set_config={name: value})
        message = refused(a.alter_configs([replace])[replace], f"AlterConfigs {what}")
        assert allowed in message, f"AlterConfigs {what}: {message}"
        messages.append(message)
        message = refused(incremental((name, value, SET)), f"IncrementalAlterConfigs {what}")
        assert allowed in message, f"IncrementalAlterConfigs {what}: {message}"
        new = NewTopic(f"configs-bad-{len(what)}", 1, 1, config={name: value})
        for future in a.create_topics([new]).values():
            message = refused(future, f"CreateTopics {what}")
            assert allowed in message, f"CreateTopics {what}: {message}"
    message = refused(incremental(("retention.ms", "1", APPEND)), "APPEND to a LONG")
    assert "not a list" in message, message
    message = refused(incremental(("min.compaction.lag.ms", "10", SET),
                                  ("max.compaction.lag.ms", "5", SET)), "min lag over max lag")
    assert "larger than max.compaction.lag.ms" in message, message
    after = {name: entry.value for name, entry in describe().items()}
    assert after == before, "a refused change changed nothing"
    assert not [t for t in a.list_topics(timeout=10).topics if t.startswith("configs-bad")]
    log(f"configs: {len(invalid)} invalid values refused with INVALID_CONFIG by AlterConfigs, "
        "IncrementalAlterConfigs and CreateTopics, e.g.\n  " + "\n  ".join(messages[:3]))

    # The broker's own settings: read-only, the changed default from the broker's config.
    broker_resource = ConfigResource("broker", "0")
    described = a.describe_configs([broker_resource])[broker_resource].result(30)
    entry = described["log.cleaner.delete.retention.ms"]
    assert (entry.value, source(entry)) == (changed_value, BROKER), entry
    assert entry.is_read_only and not entry.is_default
    for name, value in [("log.retention.ms", "604800000"), ("compression.type", "producer"),
                        ("log.cleanup.policy", "delete"), ("min.insync.replicas", "1")]:
        entry = described[name]
        assert (entry.value, source(entry)) == (value, DEFAULT), (name, entry.value, entry.source)
        assert entry.is_default, name
    log("configs: broker defaults described, the changed one from STATIC_BROKER_CONFIG: OK")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["kcat", "admin", "configs"])
    parser.add_argument("--weir", required=True)
    parser.add_argument("--work-dir", required=True)
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    broker = Broker(args.weir, os.path.join(args.work_dir, "data"))
    if args.command == "configs":
        broker.env[CHANGED_DEFAULT[0]] = CHANGED_DEFAULT[1]
    broker.start()
    try:
        {"kcat": kcat, "admin": admin, "configs": configs}[args.command](broker, args.work_dir)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
