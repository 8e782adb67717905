#!/usr/bin/env python3
"""Kafka transactions through librdkafka (confluent-kafka) against a real weir broker.

    transactions.py basics --weir BIN --work-dir DIR
        A transactional producer commits and aborts transactions over 3 partitions;
        read_committed consumers see exactly the committed messages, read_uncommitted ones
        the aborted ones too. Offsets sent to an aborted transaction are not committed,
        those of a committed one are. A transaction left open by a producer that is
        killed holds read_committed consumers at its first offset until a new producer of
        the same transactional.id fences the old one (its late writes are refused) and
        the transaction is aborted; an open transaction survives a broker kill -9, and
        one past transaction.timeout.ms is aborted by the broker.
    transactions.py spanning --bootstrap ADDRESSES --phase N [--ssl-ca F --ssl-cert F --ssl-key F]
        Against a running cluster (broker/tests/cluster.rs): 30 transactions over the 6
        partitions of topic `tx-spanning`, led by several brokers, so the coordinator
        writes markers to other brokers (WriteTxnMarkers); every fifth is aborted. Each
        phase appends to the phase files in the working directory; `--phase 0` checks
        instead that read_committed sees exactly the committed messages of all phases
        and read_uncommitted the aborted ones too.
    transactions.py idempotence --weir BIN --work-dir DIR [--kills N]
        An idempotent librdkafka producer (acks=all, retries) sends 100,000 numbered
        messages while the broker is killed with kill -9 and restarted N times (50 by
        default) mid-stream: every message is delivered, and the topic holds each
        exactly once (no duplicate from a retry of a batch the broker had stored, no
        loss).
    transactions.py pipeline --weir BIN --work-dir DIR [--messages N]
        Consume-transform-produce: `transform` processes (this script) copy N messages
        (100,000 by default) from topic A to topic B in transactions that also commit
        the input offsets, every seventh transaction aborted on purpose and redone. The
        driver kills the transforming process (SIGKILL) at random points at least 20
        times, restarting it, and restarts the broker (kill -9) at least 5 times. Then B,
        read with read_committed, must hold each input message exactly once, in
        per-partition order; read_uncommitted must see aborted records that read_committed
        never sees.

Run by broker/tests/kafka_clients.rs.
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scenario import Broker, log  # noqa: E402

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

PARTITION_EOF = -191  # librdkafka's _PARTITION_EOF

# Settings every client of `spanning` adds: SSL with a client certificate when the
# cluster's Kafka listeners serve it (--ssl-ca, --ssl-cert, --ssl-key).
SECURITY = {}


def create(bootstrap, name, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(30)


def read_all(bootstrap, topic, isolation, group, timeout=60):
    """Every message of the topic from the beginning to its end (as the isolation level
    sees it): a list of (partition, offset, key, value)."""
    consumer = Consumer({
        **SECURITY,
        "bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
        "isolation.level": isolation, "enable.partition.eof": True,
        "enable.auto.commit": False,
    })
    metadata = consumer.list_topics(topic, timeout=30).topics[topic]
    partitions = set(metadata.partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    out, eof = [], set()
    deadline = time.time() + timeout
    while eof != partitions:
        if time.time() > deadline:
            raise AssertionError(f"{topic}: no end of partitions {partitions - eof} in {timeout} s")
        message = consumer.poll(0.5)
        if message is None:
            continue
        if message.error():
            if message.error().code() == PARTITION_EOF:
                eof.add(message.partition())
                continue
            raise KafkaException(message.error())
        eof.discard(message.partition())
        out.append((message.partition(), message.offset(), message.key(), message.value()))
    consumer.close()
    return out


def committed(bootstrap, group, topic, partitions):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "isolation.level": "read_committed"})
    result = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
    consumer.close()
    return {tp.partition: tp.offset for tp in result}


def producer(bootstrap, transactional_id, **extra):
    config = {**SECURITY, "bootstrap.servers": bootstrap, "transactional.id": transactional_id,
              "linger.ms": 5}
    config.update(extra)
    return Producer(config)


# ---- basics ------------------------------------------------------------------------------

def basics(broker, work_dir):
    bootstrap = broker.kafka
    create(bootstrap, "tx-basics", 3)
    create(bootstrap, "tx-input", 1)
    p = producer(bootstrap, "basics-1")
    p.init_transactions(30)
    expected = []
    for t in range(4):
        p.begin_transaction()
        values = [f"t{t}-{i}".encode() for i in range(300)]
        for i, value in enumerate(values):
            p.produce("tx-basics", key=str(i).encode(), value=value)
        if t % 2 == 0:
            p.commit_transaction(30)
            expected += values
        else:
            p.flush(30)
            p.abort_transaction(30)
    committed_values = [m[3] for m in read_all(bootstrap, "tx-basics", "read_committed", "b1")]
    all_values = [m[3] for m in read_all(bootstrap, "tx-basics", "read_uncommitted", "b2")]
    assert sorted(committed_values) == sorted(expected), (len(committed_values), len(expected))
    assert len(all_values) == 1200 and set(expected) < set(all_values), len(all_values)
    log(f"basics: read_committed saw the {len(expected)} committed messages, "
        f"read_uncommitted all {len(all_values)}")

    # Offsets sent to a transaction count only if it commits.
    group = "basics-group"
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    c.assign([TopicPartition("tx-input", 0, 0)])
    metadata = c.consumer_group_metadata()
    for offset, commit in ((10, True), (20, False), (30, True), (40, False)):
        p.begin_transaction()
        p.produce("tx-basics", value=b"with-offsets")
        p.send_offsets_to_transaction([TopicPartition("tx-input", 0, offset)], metadata, 30)
        if commit:
            p.commit_transaction(30)
        else:
            p.abort_transaction(30)
        now = committed(bootstrap, group, "tx-input", 1)[0]
        assert now == (offset if commit else offset - 10), (offset, commit, now)
    c.close()
    log("basics: offsets sent to committed transactions are committed, aborted ones are not")

    # A producer that dies in a transaction holds read_committed readers back; a new one
    # of the same id fences it and the open transaction is aborted.
    zombie = producer(bootstrap, "basics-2")
    zombie.init_transactions(30)
    zombie.begin_transaction()
    for i in range(50):
        zombie.produce("tx-basics", partition=0, value=f"zombie-{i}".encode())
    zombie.flush(30)
    before = len(read_all(bootstrap, "tx-basics", "read_committed", "b3"))
    p.begin_transaction()
    p.produce("tx-basics", partition=0, value=b"after-the-zombie")
    p.commit_transaction(30)
    held = read_all(bootstrap, "tx-basics", "read_committed", "b4")
    assert len(held) == before and b"after-the-zombie" not in [m[3] for m in held], \
        "a read_committed consumer read past an open transaction"
    log("basics: an open transaction holds read_committed consumers at its first offset")

    broker.kill9()
    broker.start()
    log("basics: broker restarted with kill -9 while the transaction was open")
    held = read_all(broker.kafka, "tx-basics", "read_committed", "b5")
    assert len(held) == before, "the open transaction's effect on the LSO was lost in the restart"

    successor = producer(broker.kafka, "basics-2")
    successor.init_transactions(30)
    try:
        zombie.produce("tx-basics", partition=0, value=b"zombie-late")
        zombie.commit_transaction(30)
        raise AssertionError("the fenced producer committed")
    except KafkaException as e:
        assert e.args[0].fatal() or "fenced" in str(e).lower(), e
        log("basics: the fenced producer's late write was refused:", e.args[0].name())
    values = [m[3] for m in read_all(broker.kafka, "tx-basics", "read_committed", "b6")]
    assert b"after-the-zombie" in values, "the transaction after the zombie's is missing"
    assert not any(v.startswith(b"zombie") for v in values), "the zombie's records are visible"
    log("basics: the new producer fenced the old one and its transaction was aborted")

    # The broker aborts a transaction that outlives transaction.timeout.ms.
    slow = producer(broker.kafka, "basics-3", **{"transaction.timeout.ms": 2000})
    slow.init_transactions(30)
    slow.begin_transaction()
    slow.produce("tx-basics", partition=1, value=b"too-slow")
    slow.flush(30)
    deadline = time.time() + 30
    while True:
        p.begin_transaction()
        p.produce("tx-basics", partition=1, value=b"probe")
        p.commit_transaction(30)
        values = [m[3] for m in read_all(broker.kafka, "tx-basics", "read_committed", "b7")]
        if b"probe" in values:
            break
        assert time.time() < deadline, "the timed-out transaction was never aborted"
        time.sleep(1)
    assert b"too-slow" not in values
    try:
        slow.commit_transaction(30)
        raise AssertionError("a transaction aborted for its timeout committed")
    except KafkaException as e:
        log("basics: the broker aborted a transaction past its timeout; its commit failed:",
            e.args[0].name())


# ---- pipeline ----------------------------------------------------------------------------

INPUT, OUTPUT, GROUP, TXN_ID = "eos-input", "eos-output", "eos-group", "eos-transformer"
PARTITIONS = 4
BATCH = 500
ABORT_EVERY = 7


def transform(args):
    """One transforming process: exits (to be restarted) on any error."""
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap, "group.id": GROUP,
        "group.instance.id": "transformer", "session.timeout.ms": 6000,
        "isolation.level": "read_committed", "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    p = producer(args.bootstrap, TXN_ID, **{"transaction.timeout.ms": 10000})
    try:
        p.init_transactions(60)
        consumer.subscribe([INPUT])
        transactions = 0
        while True:
            messages = consumer.consume(BATCH, 1.0)
            for m in messages:
                if m.error():
                    raise KafkaException(m.error())
            if not messages:
                continue
            p.begin_transaction()
            for m in messages:
                p.produce(OUTPUT, partition=m.partition(), key=m.key(),
                          value=f"{m.partition()}:{m.offset()}:".encode() + m.value())
            transactions += 1
            if transactions % ABORT_EVERY == 0:
                # Sent first: abort_transaction purges what is still queued.
                p.flush(60)
                p.abort_transaction(60)
                first = {}
                for m in messages:
                    first.setdefault(m.partition(), m.offset())
                for partition, offset in first.items():
                    consumer.seek(TopicPartition(INPUT, partition, offset))
                continue
            p.send_offsets_to_transaction(consumer.position(consumer.assignment()),
                                          consumer.consumer_group_metadata(), 60)
            p.commit_transaction(60)
    except KafkaException as e:
        print(f"transform: {e}", flush=True)
        sys.exit(3)


class Transformer:
    def __init__(self, weir_script, broker, log_path):
        self.script, self.broker, self.log_path = weir_script, broker, log_path
        self.process = None
        self.starts = 0

    def ensure_running(self):
        if self.process is None or self.process.poll() is not None:
            out = open(self.log_path, "a")
            self.process = subprocess.Popen(
                [sys.executable, self.script, "transform", "--bootstrap", self.broker.kafka],
                stdout=out, stderr=subprocess.STDOUT)
            self.starts += 1

    def kill9(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            return True
        return False

    def stop(self):
        self.kill9()


def pipeline(broker, work_dir, messages):
    bootstrap = broker.kafka
    create(bootstrap, INPUT, PARTITIONS)
    create(bootstrap, OUTPUT, PARTITIONS)
    feed = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                     "linger.ms": 20})
    for i in range(messages):
        feed.produce(INPUT, key=f"k{i % 1000}".encode(), value=f"m{i}".encode())
        if i % 10_000 == 0:
            feed.poll(0)
    assert feed.flush(120) == 0
    log(f"pipeline: {messages} messages in {INPUT}")
    inputs = {(p, o): v for p, o, _, v in read_all(bootstrap, INPUT, "read_committed", "eos-in")}
    assert len(inputs) == messages
    ends = {p: 1 + max(o for (q, o) in inputs if q == p) for p in range(PARTITIONS)}

    rng = random.Random(8)
    transformer = Transformer(os.path.abspath(__file__), broker,
                              os.path.join(work_dir, "transformer.log"))
    kills = restarts = 0
    started = time.time()
    deadline = started + 900
    try:
        while True:
            transformer.ensure_running()
            done = committed(broker.kafka, GROUP, INPUT, PARTITIONS) == ends
            if done and kills >= 20 and restarts >= 5:
                break
            assert time.time() < deadline, \
                f"pipeline not done in 900 s ({kills} kills, {restarts} restarts)"
            time.sleep(rng.uniform(0.5, 3.0))
            if restarts < 5 and kills >= 4 * (restarts + 1):
                broker.kill9()
                broker.start()
                restarts += 1
                log(f"pipeline: broker restarted with kill -9 ({restarts})")
            elif kills < 20 or not done:
                if transformer.kill9():
                    kills += 1
            if done and kills >= 20 and restarts < 5:
                # Everything was copied early: keep restarting the broker anyway.
                broker.kill9()
                broker.start()
                restarts += 1
    finally:
        transformer.stop()
    log(f"pipeline: copied in {time.time() - started:.0f} s with {kills} transformer kills "
        f"({transformer.starts} starts) and {restarts} broker restarts")

    outputs = read_all(broker.kafka, OUTPUT, "read_committed", "eos-out-committed", timeout=120)
    seen = {}
    last = {}
    for partition, offset, key, value in outputs:
        p, o, original = value.split(b":", 2)
        source = (int(p), int(o))
        assert int(p) == partition, (partition, value)
        assert source not in seen, f"input {source} copied twice (at {seen[source]} and {offset})"
        assert inputs.get(source) == original, (source, original)
        assert o_increasing(last, partition, int(o)), \
            f"{OUTPUT}-{partition}: input offset {o} after {last[partition]}"
        seen[source] = offset
    missing = set(inputs) - set(seen)
    assert not missing, f"{len(missing)} inputs not copied, e.g. {sorted(missing)[:5]}"
    uncommitted = read_all(broker.kafka, OUTPUT, "read_uncommitted", "eos-out-all", timeout=120)
    aborted = len(uncommitted) - len(outputs)
    assert aborted > 0, "no aborted records: the test did not abort anything"
    committed_positions = {(p, o) for p, o, _, _ in outputs}
    assert committed_positions < {(p, o) for p, o, _, _ in uncommitted}
    log(f"pipeline: {OUTPUT} holds each of the {messages} inputs exactly once, in order; "
        f"read_uncommitted also sees {aborted} aborted records")


SPANNING = "tx-spanning"


def spanning(args):
    expected_path = os.path.join(args.work_dir, "committed.txt")
    if args.phase == 0:
        expected = open(expected_path).read().split()
        committed_values = sorted(m[3].decode() for m in
                                  read_all(args.bootstrap, SPANNING, "read_committed", "s1"))
        everything = [m[3].decode() for m in
                      read_all(args.bootstrap, SPANNING, "read_uncommitted", "s2")]
        assert committed_values == sorted(expected), \
            f"read_committed saw {len(committed_values)}, expected {len(expected)}"
        assert len(everything) > len(expected), "no aborted records"
        log(f"spanning: read_committed saw exactly the {len(expected)} committed messages, "
            f"read_uncommitted {len(everything) - len(expected)} more")
        return
    p = producer(args.bootstrap, "spanning", **{"acks": "all"})
    p.init_transactions(60)
    committed_values = []
    for t in range(30):
        p.begin_transaction()
        values = [f"p{args.phase}-t{t}-{i}" for i in range(60)]
        for i, value in enumerate(values):
            p.produce(SPANNING, partition=i % 6, value=value.encode())
        if t % 5 == 4:
            p.flush(60)
            p.abort_transaction(60)
        else:
            p.commit_transaction(60)
            committed_values += values
    with open(expected_path, "a") as f:
        f.write("\n".join(committed_values) + "\n")
    log(f"spanning: phase {args.phase}: 30 transactions over 6 partitions")


IDEMPOTENT = "idempotent-kills"


def idempotence(broker, work_dir, kills, messages=100_000):
    create(broker.kafka, IDEMPOTENT, 4)
    delivered, failed = [], []

    def report(error, message):
        (failed if error else delivered).append(message.value())

    p = Producer({"bootstrap.servers": broker.kafka, "enable.idempotence": True,
                  "acks": "all", "linger.ms": 5, "message.timeout.ms": 600_000,
                  "reconnect.backoff.max.ms": 200})
    rng = random.Random(50)
    per_kill = messages // kills
    sent = 0
    in_flight_at_kills = 0
    for kill in range(kills):
        for _ in range(per_kill):
            p.produce(IDEMPOTENT, key=str(sent % 97).encode(), value=str(sent).encode(),
                      on_delivery=report)
            sent += 1
            if sent % 1000 == 0:
                p.poll(0)
        # Killed once the restarted broker took part of the chunk, with the rest in
        # flight: some of it stored and not yet acknowledged.
        target = len(delivered) + rng.randint(per_kill // 8, per_kill // 2)
        deadline = time.time() + 30
        while len(delivered) < target and time.time() < deadline:
            p.poll(0.005)
        assert len(delivered) >= target, f"kill {kill}: nothing delivered in 30 s"
        in_flight_at_kills += len(p)
        broker.kill9()
        broker.start()
    while sent < messages:
        p.produce(IDEMPOTENT, value=str(sent).encode(), on_delivery=report)
        sent += 1
    remaining = p.flush(300)
    assert remaining == 0, f"{remaining} messages never delivered"
    assert not failed, f"{len(failed)} deliveries failed, e.g. {failed[:3]}"
    assert len(delivered) == messages
    assert in_flight_at_kills > 0, "no kill found messages in flight: the test proved nothing"
    stored = [m[3] for m in read_all(broker.kafka, IDEMPOTENT, "read_uncommitted", "idem", 120)]
    counts = {}
    for value in stored:
        counts[value] = counts.get(value, 0) + 1
    duplicates = sum(c - 1 for c in counts.values())
    lost = [v for v in delivered if v not in counts]
    assert duplicates == 0, f"{duplicates} duplicates, e.g. {[v for v, c in counts.items() if c > 1][:5]}"
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {lost[:5]}"
    log(f"idempotence: {messages} messages through {kills} broker kill -9s "
        f"({in_flight_at_kills} undelivered at the kills, all delivered since): "
        f"all delivered, stored exactly once (0 duplicates, 0 lost)")


def o_increasing(last, partition, offset):
    ok = offset > last.get(partition, -1)
    last[partition] = offset
    return ok


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command",
                        choices=["basics", "pipeline", "transform", "spanning", "idempotence"])
    parser.add_argument("--weir")
    parser.add_argument("--work-dir")
    parser.add_argument("--bootstrap")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--phase", type=int, default=1)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--ssl-ca")
    parser.add_argument("--ssl-cert")
    parser.add_argument("--ssl-key")
    args = parser.parse_args()
    if args.ssl_ca:
        SECURITY.update({"security.protocol": "SSL", "ssl.ca.location": args.ssl_ca,
                         "ssl.certificate.location": args.ssl_cert,
                         "ssl.key.location": args.ssl_key})
    if args.command == "transform":
        transform(args)
        return
    if args.command == "spanning":
        spanning(args)
        return
    os.makedirs(args.work_dir, exist_ok=True)
    broker = Broker(args.weir, os.path.join(args.work_dir, "data"))
    broker.env["WEIR_GROUP_INITIAL_REBALANCE_DELAY_MS"] = "0"
    broker.start()
    try:
        if args.command == "basics":
            basics(broker, args.work_dir)
        elif args.command == "idempotence":
            idempotence(broker, args.work_dir, args.kills)
        else:
            pipeline(broker, args.work_dir, args.messages)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
