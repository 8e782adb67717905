#!/usr/bin/env python3
"""Client quotas with real Kafka clients against a real weir broker.

    quotas.py --weir BIN --work-dir DIR [--seconds 10] [--report FILE]

`weir quota alter` gives client id `bulk` a produce quota and client id `bulk-reader` a
fetch quota of QUOTA bytes a second (`weir quota describe` lists them). Then, with
librdkafka (confluent-kafka):

- `bulk` produces as fast as it can for the measured span (after a warm-up that spends
  the burst allowance): what the broker acknowledges per second is held near its quota,
  and the broker counts throttled requests;
- meanwhile `steady`, with no quota, produces one message every 10 ms with acks=all:
  its delivery latency is measured with and without `bulk` next to it, and none of it
  is throttled;
- `bulk-reader` consumes a topic larger than its quota allows in the span: it reads at
  about its quota;
- `weir produce` over a native produce quota is throttled and loses nothing;
- `chatty`, with a request quota, hears throttle_time_ms in its Metadata responses.

The test asserts only what cannot depend on the machine's speed (throttling happens,
the rates stay far below the unthrottled ones, `steady` is never throttled); the figures
(rate / quota, latency percentiles) go to `--report` for docs/BENCHMARKS.md.

Run by broker/tests/quotas.rs; the benchmark run is in docs/BENCHMARKS.md.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scenario import log, stop_process  # noqa: E402

QUOTA = 1 << 20  # bytes a second
VALUE = b"x" * 1000
WARMUP = 2.0


class Broker:
    def __init__(self, binary, data_dir):
        self.binary = binary
        self.process = subprocess.Popen(
            [binary, "serve", "--data-dir", data_dir, "--native-listen", "127.0.0.1:0",
             "--kafka-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--cores", "2"],
            env=dict(os.environ, WEIR_LOG="warn"), stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        self.fields = dict(re.findall(r"([\w+]+)=(\S+)", line))
        if "kafka" not in self.fields:
            raise RuntimeError(f"broker did not announce its listeners: {line!r}")
        log("broker", self.process.pid, "serving", line.strip())

    def cli(self, *args):
        out = subprocess.run([self.binary, *args, "--brokers", self.fields["native"]],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{args}: {out.stderr}"
        return out.stdout

    def metric(self, name):
        text = urllib.request.urlopen(f"http://{self.fields['http']}/metrics", timeout=10)
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.read().decode().splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " "))


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def steady_latencies(bootstrap, seconds, stop=None):
    """Delivery latencies (ms) of one acks=all message every 10 ms, and whether any
    response to it was throttled."""
    from confluent_kafka import Producer
    latencies, throttled = [], []
    producer = Producer({"bootstrap.servers": bootstrap, "client.id": "steady", "acks": "all",
                         "linger.ms": 0, "statistics.interval.ms": 1000,
                         "throttle_cb": lambda event: throttled.append(event.throttle_time)})
    end = time.time() + seconds
    while time.time() < end and not (stop and stop.is_set()):
        sent = time.perf_counter()
        producer.produce("steady", value=b"s" * 100,
                         on_delivery=lambda err, msg, sent=sent: err is None and latencies.append(
                             (time.perf_counter() - sent) * 1000))
        producer.poll(0.01)
    assert producer.flush(30) == 0
    return latencies, [t for t in throttled if t > 0]


def bulk_produce(bootstrap, seconds, result):
    """Produces as fast as librdkafka will; records when each acknowledged byte came."""
    from confluent_kafka import Producer
    acked = []  # (time, bytes)
    throttles = []
    producer = Producer({"bootstrap.servers": bootstrap, "client.id": "bulk", "acks": "1",
                         "linger.ms": 5, "batch.size": 65536,
                         "queue.buffering.max.kbytes": 4096,
                         "throttle_cb": lambda event: throttles.append(event.throttle_time)})
    start = time.time()
    end = start + WARMUP + seconds
    while time.time() < end:
        try:
            producer.produce("bulk", value=VALUE,
                             on_delivery=lambda err, msg: err is None and acked.append(
                                 (time.time(), len(msg.value()))))
        except BufferError:
            producer.poll(0.05)
            continue
        producer.poll(0)
    producer.flush(60)
    window = [b for t, b in acked if start + WARMUP <= t <= end]
    result["produce_rate"] = sum(window) / seconds
    result["producer_throttles"] = len([t for t in throttles if t > 0])


def bulk_read(bootstrap, seconds):
    """Bytes a second `bulk-reader` consumes over the span, after the warm-up."""
    from confluent_kafka import Consumer
    # Small fetches and a small prefetch queue, so that what is consumed in the span is
    # what the broker sent in it (give or take 256 KiB), not a backlog from before.
    consumer = Consumer({"bootstrap.servers": bootstrap, "client.id": "bulk-reader",
                         "group.id": "bulk-readers", "auto.offset.reset": "earliest",
                         "fetch.max.bytes": 256 << 10, "message.max.bytes": 256 << 10,
                         "max.partition.fetch.bytes": 128 << 10,
                         "queued.max.messages.kbytes": 256})
    consumer.subscribe(["reading"])
    start = time.time()
    got = 0
    while time.time() < start + WARMUP + seconds:
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error() and time.time() >= start + WARMUP:
            got += len(msg.value())
    consumer.close()
    return got / seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--weir", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--report")
    parser.add_argument("--bulk", action="store_true", help="(internal) the bulk producer")
    parser.add_argument("--bootstrap")
    args = parser.parse_args()
    if args.bulk:
        result = {}
        bulk_produce(args.bootstrap, args.seconds, result)
        with open(os.path.join(args.work_dir, "bulk.json"), "w") as f:
            json.dump(result, f)
        return
    broker = Broker(args.weir, os.path.join(args.work_dir, "data"))
    bootstrap = broker.fields["kafka"]
    report = {"quota_bytes_per_second": QUOTA, "seconds": args.seconds}
    try:
        for topic in ["bulk", "steady", "reading", "native"]:
            broker.cli("topic", "create", topic, "--partitions", "2")
        # More to read than the fetch quota lets through in the span.
        from confluent_kafka import Producer
        filler = Producer({"bootstrap.servers": bootstrap, "client.id": "filler",
                           "linger.ms": 5})
        total = int(QUOTA * (WARMUP + args.seconds) * 3)
        for _ in range(total // len(VALUE)):
            while True:
                try:
                    filler.produce("reading", value=VALUE)
                    break
                except BufferError:
                    filler.poll(0.05)
        assert filler.flush(60) == 0
        broker.cli("quota", "alter", "--client-id", "bulk", "--set",
                   f"producer_byte_rate={QUOTA}")
        broker.cli("quota", "alter", "--client-id", "bulk-reader", "--set",
                   f"consumer_byte_rate={QUOTA}")
        described = broker.cli("quota", "describe")
        assert f"client-id=bulk\tproducer_byte_rate={QUOTA}" in described, described
        assert f"client-id=bulk-reader\tconsumer_byte_rate={QUOTA}" in described, described
        log("quotas set:", described.strip().replace("\n", "; "))

        alone, alone_throttled = steady_latencies(bootstrap, args.seconds)
        report["steady_alone_ms"] = {"p50": percentile(alone, 0.5), "p99": percentile(alone, 0.99)}
        # The bulk producer in a process of its own, so that it and `steady` do not share
        # an interpreter lock (which would show up as `steady`'s latency).
        result_file = os.path.join(args.work_dir, "bulk.json")
        bulk = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--bulk",
                                 "--weir", args.weir, "--work-dir", args.work_dir,
                                 "--seconds", str(args.seconds), "--bootstrap", bootstrap])
        time.sleep(WARMUP)
        beside, beside_throttled = steady_latencies(bootstrap, args.seconds)
        assert bulk.wait(timeout=120) == 0, "the bulk producer failed"
        with open(result_file) as f:
            result = json.load(f)
        report["steady_beside_bulk_ms"] = {"p50": percentile(beside, 0.5),
                                           "p99": percentile(beside, 0.99)}
        report["produce_rate_over_quota"] = result["produce_rate"] / QUOTA
        report["producer_throttles"] = result["producer_throttles"]
        log(f"bulk producer: {result['produce_rate'] / 1e6:.3f} MB/s "
            f"({report['produce_rate_over_quota']:.3f} of its quota), "
            f"{result['producer_throttles']} throttled responses")
        log(f"steady: alone {report['steady_alone_ms']}, beside bulk "
            f"{report['steady_beside_bulk_ms']}")

        read_rate = bulk_read(bootstrap, args.seconds)
        report["fetch_rate_over_quota"] = read_rate / QUOTA
        log(f"bulk reader: {read_rate / 1e6:.3f} MB/s ({read_rate / QUOTA:.3f} of its quota)")
        report["broker_throttled_requests"] = broker.metric("weir_quota_throttled_total")

        # What holds on any machine: throttling happened, and held both bulk clients to
        # far less than an unthrottled client gets here (hundreds of MB/s); the steady
        # client, with no quota, was never throttled.
        assert report["broker_throttled_requests"] > 0, report
        assert result["producer_throttles"] > 0, "librdkafka saw no throttle_time_ms"
        assert report["produce_rate_over_quota"] < 2.0, report
        assert report["fetch_rate_over_quota"] < 2.0, report
        assert report["produce_rate_over_quota"] > 0.3, report
        assert report["fetch_rate_over_quota"] > 0.3, report
        assert not alone_throttled and not beside_throttled, "steady was throttled"
        assert len(beside) > 100, "steady got too little through"

        # The native protocol is held to the same quotas: the CLI's client id
        # (`weir-client`, from its handshake) over a produce quota is throttled, and
        # every record still arrives.
        broker.cli("quota", "alter", "--client-id", "weir-client", "--set",
                   f"producer_byte_rate={QUOTA}")
        before = broker.metric("weir_quota_throttled_total")
        lines = "".join(f"{i:08d}{'n' * 992}\n" for i in range(3 * QUOTA // 1000))
        out = subprocess.run([broker.binary, "produce", "native", "--brokers",
                              broker.fields["native"]], input=lines, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        throttled = broker.metric("weir_quota_throttled_total") - before
        assert throttled > 0, "the native producer was not throttled"
        broker.cli("quota", "alter", "--client-id", "weir-client", "--remove",
                   "producer_byte_rate")
        count = broker.cli("consume", "native", "--from", "beginning", "--count",
                           str(3 * QUOTA // 1000)).count("\n")
        assert count == 3 * QUOTA // 1000, count
        log(f"native: weir produce over its quota throttled {throttled:.0f} times, "
            f"{count} records arrived")

        # A request quota throttles every request, and every response that has the field
        # says so in throttle_time_ms (librdkafka's throttle_cb hears it from Metadata).
        from confluent_kafka.admin import AdminClient
        broker.cli("quota", "alter", "--client-id", "chatty", "--set", "request_rate=20")
        heard = []
        admin = AdminClient({"bootstrap.servers": bootstrap, "client.id": "chatty",
                             "throttle_cb": lambda event: heard.append(event.throttle_time)})
        for _ in range(60):
            admin.list_topics(timeout=30)
            admin.poll(0)
        admin.poll(1)
        assert any(t > 0 for t in heard), f"no throttle_time_ms heard: {heard}"
        log(f"request quota: {len(heard)} Metadata responses told chatty to back off")
    finally:
        stop_process(broker.process)
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report, f, indent=2)
    log("quotas:", json.dumps(report))


if __name__ == "__main__":
    main()
