#!/usr/bin/env python3
"""What librdkafka (through confluent-kafka) reaches against a broker with its default
batching: 1 KiB messages, acks=all, idempotence on (librdkafka's defaults otherwise:
linger.ms 5, batch.size 1 MB), produced as fast as the client can for --seconds, each
delivery timed from produce() to its delivery report. Prints JSON: throughput_mb_s,
messages, and delivery_latency_us percentiles. See docs/BENCHMARKS.md.

    target/test-venv/bin/python bench/scripts/librdkafka_producer.py --bootstrap HOST:9092
"""

import argparse
import json
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(p / 100 * len(sorted_values)))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", default="librdkafka-bench")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--message-bytes", type=int, default=1024)
    args = parser.parse_args()

    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    for future in admin.create_topics([NewTopic(args.topic, args.partitions, 1)]).values():
        try:
            future.result(30)
        except Exception as e:  # an earlier run's topic
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise
    producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all",
                         "enable.idempotence": True, "queue.buffering.max.messages": 1_000_000})
    payload = b"x" * args.message_bytes
    latencies = []
    delivered = [0]
    errors = [0]
    start = time.monotonic()
    measure_from = start + args.warmup
    end = start + args.warmup + args.seconds

    def report(err, msg, sent=None):
        if err:
            errors[0] += 1
        elif sent >= measure_from:
            delivered[0] += 1
            latencies.append((time.monotonic() - sent) * 1e6)

    while time.monotonic() < end:
        sent = time.monotonic()
        try:
            producer.produce(args.topic, payload, on_delivery=lambda e, m, s=sent: report(e, m, s))
        except BufferError:
            producer.poll(0.001)
            continue
        producer.poll(0)
    producer.flush(60)
    latencies.sort()
    print(json.dumps({
        "throughput_mb_s": delivered[0] * args.message_bytes / 1e6 / args.seconds,
        "messages": delivered[0],
        "errors": errors[0],
        "delivery_latency_us": {name: percentile(latencies, p) for name, p in
                                (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9))},
    }, indent=2))


if __name__ == "__main__":
    main()
