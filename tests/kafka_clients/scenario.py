#!/usr/bin/env python3
"""Unmodified Kafka clients against a real weir broker.

For one client library: start `weir serve`, create a topic of 6 partitions, produce
20,000 keyed messages with headers in every compression codec the client supports,
consume them in a group of 3 consumer processes, kill -9 one of them mid-way (the group
rebalances), stop the rest, kill -9 and restart the broker, and consume the rest with a
new group of 3. Then check: every message was consumed at least once with its key,
value and headers intact; each partition kept its order (so each key kept its order);
and after the restart every partition resumed exactly at the offset the group had
committed (nothing skipped, nothing re-read from the start).

Run by broker/tests/kafka_clients.rs:
    scenario.py run --client confluent|kafka-python|aiokafka|kafkajs --weir BIN --work-dir DIR
The consumers are this same script (`consume`) or, for kafkajs, kafkajs_client.js.
"""

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
MESSAGES = 20_000
PARTITIONS = 6
KEYS = 200
CONSUMERS = 3
TOPIC = "scenario"
GROUP = "scenario-group"

CODECS = {
    "confluent": ["none", "gzip", "snappy", "lz4", "zstd"],
    "kafka-python": ["none", "gzip", "snappy", "lz4", "zstd"],
    "aiokafka": ["none", "gzip", "snappy", "lz4", "zstd"],
    # kafkajs ships gzip; snappy through the pure-JS kafkajs-snappy codec. Its lz4 and
    # zstd codecs are native add-ons that need a compiler: not used here.
    "kafkajs": ["none", "gzip", "snappy"],
}


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


def message(i):
    """The i-th message: key, value, headers. Values carry the key's sequence number."""
    key = f"k{i % KEYS}"
    seq = i // KEYS
    value = f"{key}:{seq}:" + "x" * (i % 50)
    return key, value, [("seq", str(seq)), ("n", str(i))]


def codec_of(i, codecs):
    return codecs[i * len(codecs) // MESSAGES]


def stop_process(process):
    """SIGTERM, then SIGKILL if it has not exited within 30 s (by PID, never by name)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Broker:
    """A `weir serve` process; restarts reuse its ports, stops are by PID."""

    def __init__(self, binary, data_dir):
        self.args = [
            binary, "serve", "--data-dir", data_dir,
            "--native-listen", "127.0.0.1:0",
            "--kafka-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0",
            "--cores", "2",
        ]
        self.env = dict(os.environ, WEIR_LOG="warn", WEIR_GROUP_INITIAL_REBALANCE_DELAY_MS="1000")
        self.process = None

    def start(self):
        self.process = subprocess.Popen(self.args, env=self.env, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        fields = dict(re.findall(r"(\w+)=(\S+)", line))
        if "kafka" not in fields:
            raise RuntimeError(f"broker did not announce itself: {line!r}")
        self.kafka, self.http = fields["kafka"], fields["http"]
        for flag, address in (("--native-listen", fields["native"]),
                              ("--kafka-listen", self.kafka), ("--http-listen", self.http)):
            self.args[self.args.index(flag) + 1] = address
        log("broker", self.process.pid, "serving", line.strip())

    def kill9(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        if self.process:
            stop_process(self.process)

    def metrics_text(self):
        """weir's /metrics, as Prometheus text."""
        return urllib.request.urlopen(f"http://{self.http}/metrics", timeout=10).read().decode()

    def metric(self, name, group=None):
        """One of weir's /metrics families, per partition of the test topic: a group's
        (labelled group, topic, partition) or a partition's (shard, topic, partition)."""
        text = self.metrics_text()
        values = {}
        first = r'group="([^"]+)",' if group is not None else r'shard="([^"]+)",'
        pattern = name + r'\{' + first + r'topic="([^"]+)",partition="(\d+)"\} (\S+)'
        for g, topic, partition, value in re.findall(pattern, text):
            if (group is None or g == group) and topic == TOPIC:
                values[int(partition)] = int(float(value))
        return values

    def committed_offsets(self, group):
        """The group's committed offsets, from weir's own /metrics."""
        return self.metric("weir_group_committed_offset", group)

    def check_lag(self, group, committed):
        """The group's lag, from /metrics and from `weir group describe`: what is readable
        beyond each committed offset."""
        high_watermarks = self.metric("weir_partition_high_watermark")
        expected = {p: high_watermarks[p] - offset for p, offset in committed.items()}
        lag = self.metric("weir_group_lag", group)
        assert lag == expected, f"weir_group_lag {lag}, expected {expected}"
        native = self.args[self.args.index("--native-listen") + 1]
        out = subprocess.run([self.args[0], "group", "describe", group, "--brokers", native],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        described = {}
        for line in out.splitlines():
            cells = line.split("\t")
            if len(cells) == 5 and cells[0] == TOPIC:
                described[int(cells[1])] = int(cells[4])
        assert described == expected, f"weir group describe lag {described}, expected {expected}:\n{out}"
        return expected


# ---- producers and admin, per client -------------------------------------------------

def create_topic(client, bootstrap):
    if client == "confluent":
        from confluent_kafka.admin import AdminClient, NewTopic
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)]).values():
            future.result(30)
    elif client == "kafka-python":
        from kafka.admin import KafkaAdminClient, NewTopic
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
        admin.close()
    elif client == "aiokafka":
        async def create():
            from aiokafka.admin import AIOKafkaAdminClient, NewTopic
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
            await admin.start()
            await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
            await admin.close()
        asyncio.run(create())
    elif client == "kafkajs":
        node("admin", "--bootstrap", bootstrap, "--topic", TOPIC, "--partitions", str(PARTITIONS))


def produce(client, bootstrap):
    codecs = CODECS[client]
    runs = []  # (codec, first, end) in order: each codec's producer is flushed before the next
    for codec in codecs:
        indexes = [i for i in range(MESSAGES) if codec_of(i, codecs) == codec]
        runs.append((codec, indexes[0], indexes[-1] + 1))
    for codec, first, end in runs:
        log(f"{client}: producing {end - first} messages with {codec}")
        if client == "confluent":
            from confluent_kafka import Producer
            errors = []
            producer = Producer({"bootstrap.servers": bootstrap, "compression.type": codec,
                                 "linger.ms": 5, "enable.idempotence": True})
            for i in range(first, end):
                key, value, headers = message(i)
                producer.produce(TOPIC, key=key, value=value, headers=headers,
                                 on_delivery=lambda err, msg: err and errors.append(err))
                producer.poll(0)
            assert producer.flush(60) == 0, "messages left unsent"
            assert not errors, errors[:3]
        elif client == "kafka-python":
            from kafka import KafkaProducer
            producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                     compression_type=None if codec == "none" else codec)
            futures = []
            for i in range(first, end):
                key, value, headers = message(i)
                futures.append(producer.send(TOPIC, key=key.encode(), value=value.encode(),
                                             headers=[(k, v.encode()) for k, v in headers]))
            producer.flush(60)
            for future in futures:
                future.get(60)
            producer.close()
        elif client == "aiokafka":
            async def send_all():
                from aiokafka import AIOKafkaProducer
                producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                            enable_idempotence=True,
                                            compression_type=None if codec == "none" else codec)
                await producer.start()
                try:
                    pending = []
                    for i in range(first, end):
                        key, value, headers = message(i)
                        pending.append(await producer.send(
                            TOPIC, key=key.encode(), value=value.encode(),
                            headers=[(k, v.encode()) for k, v in headers]))
                    await asyncio.gather(*pending)
                finally:
                    await producer.stop()
            asyncio.run(send_all())
        elif client == "kafkajs":
            node("produce", "--bootstrap", bootstrap, "--topic", TOPIC, "--codec", codec,
                 "--first", str(first), "--end", str(end), "--keys", str(KEYS))


def node(*args):
    env = dict(os.environ, KAFKAJS_NO_PARTITIONER_WARNING="1")
    subprocess.run(["node", os.path.join(HERE, "kafkajs_client.js"), *args], check=True, timeout=300, env=env)


# ---- consumers (separate processes) ---------------------------------------------------

def consumer_command(client, bootstrap, out, stop_file):
    if client == "kafkajs":
        return ["node", os.path.join(HERE, "kafkajs_client.js"), "consume", "--bootstrap", bootstrap,
                "--topic", TOPIC, "--group", GROUP, "--out", out, "--stop-file", stop_file]
    return [sys.executable, os.path.abspath(__file__), "consume", "--client", client,
            "--bootstrap", bootstrap, "--out", out, "--stop-file", stop_file]


def record_line(partition, offset, key, value, headers):
    return json.dumps({"p": partition, "o": offset, "k": key, "v": value, "h": headers}) + "\n"


def write_polled(out, polled):
    """Writes what kafka-python's poll or aiokafka's getmany returned; returns the count."""
    count = 0
    for records in polled.values():
        for m in records:
            headers = {k: v.decode() for k, v in m.headers}
            out.write(record_line(m.partition, m.offset, m.key.decode(), m.value.decode(), headers))
            count += 1
    return count


def consume(args):
    """One group member: writes every record it gets, then commits; stops at the stop file.
    Slow on purpose (about 500 records a second), so that the test can kill it mid-way
    and the group has work left after the broker restarts."""
    out = open(args.out, "a", buffering=1)
    stopping = lambda: os.path.exists(args.stop_file)
    if args.client == "confluent":
        from confluent_kafka import Consumer
        c = Consumer({"bootstrap.servers": args.bootstrap, "group.id": GROUP,
                      "auto.offset.reset": "earliest", "enable.auto.commit": False,
                      "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
        c.subscribe([TOPIC])
        while not stopping():
            batch = c.consume(num_messages=50, timeout=0.5)
            records = [m for m in batch if not m.error()]
            for m in records:
                headers = {k: v.decode() for k, v in (m.headers() or [])}
                out.write(record_line(m.partition(), m.offset(), m.key().decode(), m.value().decode(), headers))
            if records:
                try:
                    c.commit(asynchronous=False)
                except Exception as e:  # a rebalance may refuse it: at least once
                    print("commit failed:", e, file=sys.stderr)
                time.sleep(0.1)
        c.close()
    elif args.client == "kafka-python":
        from kafka import KafkaConsumer
        c = KafkaConsumer(TOPIC, bootstrap_servers=args.bootstrap, group_id=GROUP,
                          auto_offset_reset="earliest", enable_auto_commit=False,
                          session_timeout_ms=6000, heartbeat_interval_ms=500, max_poll_records=50)
        while not stopping():
            if write_polled(out, c.poll(timeout_ms=500)):
                try:
                    c.commit()
                except Exception as e:
                    print("commit failed:", e, file=sys.stderr)
                time.sleep(0.1)
        c.close()
    elif args.client == "aiokafka":
        async def run():
            from aiokafka import AIOKafkaConsumer
            c = AIOKafkaConsumer(TOPIC, bootstrap_servers=args.bootstrap, group_id=GROUP,
                                 auto_offset_reset="earliest", enable_auto_commit=False,
                                 session_timeout_ms=6000, heartbeat_interval_ms=500, max_poll_records=50)
            await c.start()
            try:
                while not stopping():
                    if write_polled(out, await c.getmany(timeout_ms=500)):
                        try:
                            await c.commit()
                        except Exception as e:
                            print("commit failed:", e, file=sys.stderr)
                        await asyncio.sleep(0.1)
            finally:
                await c.stop()
        asyncio.run(run())
    out.close()


# ---- the scenario ---------------------------------------------------------------------

def read_records(paths):
    records = []
    for path in paths:
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    if not line.endswith("\n"):  # a killed consumer may leave half a line
                        continue
                    try:
                        records.append((path, json.loads(line)))
                    except json.JSONDecodeError:
                        # Seen once: a line read while its writer appended it. Skipping
                        # it loses nothing the check needs: a record really missing
                        # still keeps the phase from finishing.
                        log(f"skipping an unreadable line of {path}: {line[:80]!r}")
    return records


def distinct(records):
    return {(r["p"], r["o"]) for _, r in records}


def wait_for(what, condition, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def run_group(client, bootstrap, work_dir, phase, until, kill_one):
    """Runs CONSUMERS group members until `until(records)`; kill_one: kill -9 one of them
    once a few thousand records are in, and go on only after the others took over its
    partitions."""
    stop_file = os.path.join(work_dir, f"stop-{phase}")
    outs = [os.path.join(work_dir, f"{phase}-consumer-{n}.jsonl") for n in range(CONSUMERS)]
    errs = [open(os.path.join(work_dir, f"{phase}-consumer-{n}.err"), "w") for n in range(CONSUMERS)]
    members = [subprocess.Popen(consumer_command(client, bootstrap, out, stop_file), stderr=err)
               for out, err in zip(outs, errs)]
    try:
        if kill_one:
            wait_for("3,000 records", lambda: len(distinct(read_records(outs))) >= 3_000, 120)
            victim = members[0]
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            seen_by_victim = {r["p"] for _, r in read_records(outs[:1])}
            log(f"{client}: killed consumer {victim.pid} (it had partitions {sorted(seen_by_victim)})")
            killed_at = {p: max(r["o"] for _, r in read_records(outs[:1]) if r["p"] == p)
                         for p in seen_by_victim}
            # The survivors must take over the victim's partitions (after its session
            # times out and the group rebalances).
            def taken_over():
                later = read_records(outs[1:])
                return all(any(r["p"] == p and r["o"] >= o for _, r in later)
                           for p, o in killed_at.items())
            wait_for("the survivors to take over the killed consumer's partitions", taken_over, 120)
            log(f"{client}: the group rebalanced; survivors consume the victim's partitions")
        wait_for(f"phase {phase} to finish", lambda: until(read_records(outs)), 180)
    finally:
        open(stop_file, "w").close()
        for member in members:
            try:
                member.wait(timeout=60)
            except subprocess.TimeoutExpired:
                member.kill()
                member.wait()
        for err in errs:
            err.close()
    return outs


def check(records, client):
    expected = {}
    for i in range(MESSAGES):
        key, value, headers = message(i)
        expected[(key, value)] = dict(headers)
    by_position = {}
    for path, r in records:
        position = (r["p"], r["o"])
        content = (r["k"], r["v"], tuple(sorted(r["h"].items())))
        if by_position.setdefault(position, content) != content:
            raise AssertionError(f"offset {position} read as two different records")
        if (r["k"], r["v"]) not in expected:
            raise AssertionError(f"unexpected record {r}")
        if r["h"] != expected[(r["k"], r["v"])]:
            raise AssertionError(f"headers of {r['k']}:{r['v']} are {r['h']}")
    got = {(k, v) for k, v, _ in by_position.values()}
    missing = set(expected) - got
    if missing:
        raise AssertionError(f"{len(missing)} messages never consumed, e.g. {sorted(missing)[:3]}")
    # Per partition, in offset order: each key's sequence numbers ascend, and every
    # offset from the first to the last is present (no gaps inside what was consumed).
    for partition in range(PARTITIONS):
        offsets = sorted(o for p, o in by_position if p == partition)
        if offsets and offsets != list(range(offsets[0], offsets[-1] + 1)):
            raise AssertionError(f"partition {partition} has gaps")
        last = {}
        for o in offsets:
            key, value, _ = by_position[(partition, o)]
            seq = int(value.split(":")[1])
            if seq <= last.get(key, -1):
                raise AssertionError(f"key {key} out of order in partition {partition} at {o}")
            last[key] = seq
    # Each consumer saw each partition's records in offset order between rewinds
    # (a rewind is a redelivery after a rebalance: at least once).
    streams = {}
    for path, r in records:
        streams.setdefault((path, r["p"]), []).append(r["o"])
    rewinds = sum(sum(1 for a, b in zip(s, s[1:]) if b <= a) for s in streams.values())
    log(f"{client}: {len(records)} records read, {len(by_position)} distinct, {rewinds} redeliveries after rebalances")


def run(args):
    os.makedirs(args.work_dir, exist_ok=True)
    broker = Broker(args.weir, os.path.join(args.work_dir, "data"))
    broker.start()
    try:
        bootstrap = broker.kafka
        create_topic(args.client, bootstrap)
        produce(args.client, bootstrap)
        log(f"{args.client}: produced {MESSAGES}")

        half = lambda records: len(distinct(records)) >= MESSAGES // 2
        first = run_group(args.client, bootstrap, args.work_dir, "1", half, kill_one=True)
        committed = broker.committed_offsets(GROUP)
        log(f"{args.client}: phase 1 done; committed {committed}")
        assert committed, "the group committed nothing"
        assert sum(committed.values()) < MESSAGES, "phase 1 consumed everything: the resume would prove nothing"
        lag = broker.check_lag(GROUP, committed)
        if len(committed) == PARTITIONS:
            assert sum(lag.values()) == MESSAGES - sum(committed.values()), f"lag {lag}"
        log(f"{args.client}: lag {lag}")

        broker.kill9()
        broker.start()
        log(f"{args.client}: broker killed with SIGKILL and restarted")
        after = broker.committed_offsets(GROUP)
        assert after == committed, f"commits changed across the restart: {committed} -> {after}"

        everything = lambda records: len(distinct(read_records(first)) | distinct(records)) >= MESSAGES
        second = run_group(args.client, bootstrap, args.work_dir, "2", everything, kill_one=False)

        phase_two = read_records(second)
        for partition in range(PARTITIONS):
            offsets = [r["o"] for _, r in phase_two if r["p"] == partition]
            start = committed.get(partition, 0)
            if offsets and min(offsets) != start:
                raise AssertionError(
                    f"partition {partition} resumed at {min(offsets)}, but {start} was committed")
        check(read_records(first) + phase_two, args.client)
        log(f"{args.client}: OK")
    finally:
        broker.stop()


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--client", required=True, choices=sorted(CODECS))
    r.add_argument("--weir", required=True)
    r.add_argument("--work-dir", required=True)
    c = sub.add_parser("consume")
    c.add_argument("--client", required=True)
    c.add_argument("--bootstrap", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--stop-file", required=True)
    args = parser.parse_args()
    if args.command == "run":
        run(args)
    else:
        consume(args)


if __name__ == "__main__":
    main()
