"""A compacted topic through librdkafka (confluent-kafka), against a real `weir serve`.

100,000 updates over 1,000 keys go to a one-partition topic with cleanup.policy=compact
and 128 KiB segments (half of them lz4-compressed, half zstd), then 100 of the keys are
deleted with tombstones; one more update after segment.ms rolls the active segment (which
is never compacted). The broker compacts in the background; the test waits until the
partition's segment files hold at most a few segments of data, then reads the partition
from the beginning and checks that it sees exactly every key's last value (a tombstone
for the deleted keys), in increasing offsets, and far fewer records than were written.
It also checks that a record without a key is refused with INVALID_RECORD, that reading
from an offset compaction removed continues at the next surviving one, and that the log
start offset did not move. Then kill -9 and a restart: the same again. Before all that,
a topic with compression.type=gzip and message.timestamp.type=LogAppendTime shows the
broker rewriting batches: stored gzip-compressed, read back with log-append time; and
min.insync.replicas=2 refuses acks=all on one broker.

Usage: compaction.py --weir PATH --work-dir DIR
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scenario import Broker, log  # noqa: E402

TOPIC = "table"
KEYS = 1000
UPDATES = 100_000
DELETED = 100
SEGMENT_BYTES = 128 * 1024
SEGMENT_MS = 3000


def key(k):
    return f"key-{k:04d}".encode()


def value(k, update):
    return f"{k}:{update}:".encode() + b"v" * 80


def expected_latest():
    latest = {}
    for i in range(UPDATES):
        latest[key(i % KEYS)] = value(i % KEYS, i)
    for k in range(DELETED):
        latest[key(k)] = None
    return latest


def produce(bootstrap):
    from confluent_kafka import KafkaError, Producer
    errors = []
    for codec, first, end in (("lz4", 0, UPDATES // 2), ("zstd", UPDATES // 2, UPDATES)):
        producer = Producer({"bootstrap.servers": bootstrap, "compression.type": codec,
                             "linger.ms": 5, "batch.size": 64 * 1024,
                             "enable.idempotence": True})
        for i in range(first, end):
            producer.produce(TOPIC, key=key(i % KEYS), value=value(i % KEYS, i),
                             on_delivery=lambda err, msg: err and errors.append(err))
            producer.poll(0)
        assert producer.flush(60) == 0, "messages left unsent"
        if codec == "zstd":
            for k in range(DELETED):
                producer.produce(TOPIC, key=key(k), value=None,
                                 on_delivery=lambda err, msg: err and errors.append(err))
            assert producer.flush(60) == 0, "tombstones left unsent"
    assert not errors, errors[:3]
    # A record without a key has no place in a compacted topic.
    refused = []
    producer = Producer({"bootstrap.servers": bootstrap, "message.send.max.retries": 0})
    producer.produce(TOPIC, value=b"no key", on_delivery=lambda err, msg: refused.append(err))
    producer.flush(30)
    assert refused and refused[0] is not None, "a keyless record was accepted"
    assert refused[0].code() == KafkaError.INVALID_RECORD, refused[0]
    log(f"produced {UPDATES} updates and {DELETED} tombstones; keyless refused: {refused[0]}")


def segment_files(data_dir):
    directory = os.path.join(data_dir, f"{TOPIC}-0")
    sizes = [os.path.getsize(os.path.join(directory, name))
             for name in os.listdir(directory) if name.endswith(".log")]
    return len(sizes), sum(sizes)


def metric_total(broker, name):
    """A /metrics family summed over its labels."""
    return sum(float(line.split()[-1]) for line in broker.metrics_text().splitlines()
               if line.startswith(name + "{"))


def roll_active_segment(bootstrap):
    """The active segment is never compacted: once it is older than segment.ms, one more
    update (of the last key, with the value it already has) rolls it."""
    from confluent_kafka import Producer
    time.sleep(SEGMENT_MS / 1000 + 0.5)
    producer = Producer({"bootstrap.servers": bootstrap})
    last = UPDATES - 1
    producer.produce(TOPIC, key=key(last % KEYS), value=value(last % KEYS, last))
    assert producer.flush(30) == 0


def wait_compacted(broker, data_dir):
    deadline = time.time() + 120
    while True:
        count, total = segment_files(data_dir)
        _, _, records = consume_all(broker.kafka, 0)
        if count <= 4 and total <= 3 * SEGMENT_BYTES and len(records) <= 2 * KEYS:
            log(f"compacted: {count} segments, {total} bytes, {len(records)} records; "
                f"{metric_total(broker, 'weir_compaction_records_removed_total'):.0f} records removed")
            return
        if time.time() > deadline:
            raise AssertionError(
                f"not compacted after 120 s: {count} segments, {total} bytes, {len(records)} records")
        time.sleep(1)


def consume_all(bootstrap, start_offset):
    """(offset, key, value) of every record from `start_offset` to the end."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "compaction-check",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    low, high = consumer.get_watermark_offsets(TopicPartition(TOPIC, 0), timeout=10)
    consumer.assign([TopicPartition(TOPIC, 0, start_offset)])
    records = []
    deadline = time.time() + 60
    while time.time() < deadline:
        message = consumer.poll(1)
        if message is None:
            continue
        if message.error():
            if message.error().code() == KafkaError._PARTITION_EOF:
                break
            raise AssertionError(message.error())
        records.append((message.offset(), message.key(), message.value()))
    consumer.close()
    return low, high, records


def check(bootstrap):
    latest = expected_latest()
    low, high, records = consume_all(bootstrap, 0)
    assert low == 0, f"the log start moved to {low}"
    assert high == UPDATES + DELETED + 1, f"high watermark {high}"
    offsets = [offset for offset, _, _ in records]
    assert offsets == sorted(set(offsets)), "offsets must strictly increase"
    seen = {}
    for _, k, v in records:
        seen[k] = v
    assert seen == latest, (
        f"{sum(1 for k in latest if seen.get(k) != latest[k])} keys differ from their latest value")
    assert len(records) <= 2 * KEYS, f"{len(records)} records left: compaction removed too little"
    # Start inside a removed range: the read continues at the next surviving offset.
    first_surviving = offsets[0]
    assert first_surviving > 0, "offset 0 should have been compacted away"
    _, _, from_gap = consume_all(bootstrap, first_surviving - 1)
    assert from_gap and from_gap[0][0] == first_surviving, from_gap[:1]
    log(f"read {len(records)} records from offset {first_surviving}: every key's latest value")


def check_rewrites(bootstrap, data_dir):
    """compression.type other than `producer` stores batches in that codec whatever the
    producer sent; message.timestamp.type=LogAppendTime gives records the broker's time."""
    from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = "rewritten"
    admin.create_topics([NewTopic(topic, 1, 1, config={
        "compression.type": "gzip", "message.timestamp.type": "LogAppendTime",
    })])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "compression.type": "none"})
    before = int(time.time() * 1000)
    for i in range(100):
        producer.produce(topic, key=b"k%d" % i, value=b"v" * 100, timestamp=1_000_000)
    assert producer.flush(30) == 0
    after = int(time.time() * 1000)
    with open(os.path.join(data_dir, f"{topic}-0", "0" * 20 + ".log"), "rb") as segment:
        header = segment.read(61)
    codec = int.from_bytes(header[21:23], "big") & 7
    assert codec == 1, f"stored with codec {codec}, not gzip (1)"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "rewrites"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    message = None
    while message is None or message.error():
        message = consumer.poll(5)
    kind, stamp = message.timestamp()
    consumer.close()
    assert kind == TIMESTAMP_LOG_APPEND_TIME and before <= stamp <= after, (kind, stamp)
    log(f"uncompressed batches stored as gzip; records carry log-append time {stamp}")
    # One broker is one in-sync replica: acks=all cannot meet min.insync.replicas=2.
    from confluent_kafka import KafkaError
    admin.create_topics([NewTopic("guarded", 1, 1, config={"min.insync.replicas": "2"})
                         ])["guarded"].result(30)
    for acks, expected in (("all", KafkaError.NOT_ENOUGH_REPLICAS), ("1", None)):
        outcome = []
        # NOT_ENOUGH_REPLICAS is retriable: without retries librdkafka reports it.
        producer = Producer({"bootstrap.servers": bootstrap, "acks": acks,
                             "message.send.max.retries": 0, "message.timeout.ms": 10000})
        producer.produce("guarded", key=b"k", value=b"v",
                         on_delivery=lambda err, msg: outcome.append(err))
        producer.flush(10)
        code = outcome[0].code() if outcome and outcome[0] else None
        assert outcome and code == expected, (acks, outcome)
    log("min.insync.replicas=2: acks=all refused with NOT_ENOUGH_REPLICAS, acks=1 accepted")


def run(args):
    from confluent_kafka.admin import AdminClient, NewTopic
    data_dir = os.path.join(args.work_dir, "data")
    broker = Broker(args.weir, data_dir)
    broker.env["WEIR_LOG_CLEANER_BACKOFF_MS"] = "200"
    broker.start()
    try:
        admin = AdminClient({"bootstrap.servers": broker.kafka})
        futures = admin.create_topics([NewTopic(TOPIC, 1, 1, config={
            "cleanup.policy": "compact",
            "segment.bytes": str(SEGMENT_BYTES),
            "max.message.bytes": str(SEGMENT_BYTES),
            "min.cleanable.dirty.ratio": "0.01",
            "segment.ms": str(SEGMENT_MS),
        })])
        futures[TOPIC].result(30)
        check_rewrites(broker.kafka, data_dir)
        produce(broker.kafka)
        roll_active_segment(broker.kafka)
        wait_compacted(broker, data_dir)
        check(broker.kafka)
        broker.kill9()
        broker.start()
        check(broker.kafka)
        log("compaction: OK")
    finally:
        broker.stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--weir", required=True)
    parser.add_argument("--work-dir", required=True)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
