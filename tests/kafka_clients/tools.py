#!/usr/bin/env python3
"""kcat and the admin clients against a real weir broker.

    tools.py kcat --weir BIN --work-dir DIR
        Produces 20,000 keyed messages from a file with kcat (one run per codec, a header
        per run) into a topic that the produce auto-creates, lists it with -L, and reads
        everything back with -C -o beginning -e: all present, each key in order.
    tools.py admin --weir BIN --work-dir DIR
        Creates, describes, alters and deletes topics and configs, adds partitions and
        deletes records through confluent_kafka.admin and kafka-python's admin client.

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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["kcat", "admin"])
    parser.add_argument("--weir", required=True)
    parser.add_argument("--work-dir", required=True)
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    broker = Broker(args.weir, os.path.join(args.work_dir, "data"))
    broker.start()
    try:
        {"kcat": kcat, "admin": admin}[args.command](broker, args.work_dir)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
