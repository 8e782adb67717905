"""The failover benchmark's probe: one librdkafka producer (acks=all, idempotent) writes a
small message to partition 0 of a topic every --interval-ms, and writes the wall-clock
time of every acknowledgement (seconds since the epoch) to --out, one per line, as it
happens. Runs until --out's directory holds a file named "stop"."""

import argparse
import os
import time

from confluent_kafka import Producer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--interval-ms", type=float, default=2)
    args = parser.parse_args()
    stop = os.path.join(os.path.dirname(args.out), "stop")
    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 0,
        "message.timeout.ms": 120000,
        "request.timeout.ms": 5000,
        "retry.backoff.ms": 20,
        "retry.backoff.max.ms": 100,
        "topic.metadata.refresh.interval.ms": 1000,
        "reconnect.backoff.ms": 20,
        "reconnect.backoff.max.ms": 200,
    })
    with open(args.out, "w", buffering=1) as acks:
        def delivered(error, _message):
            if error is None:
                acks.write(f"{time.time():.6f}\n")

        sequence = 0
        while not os.path.exists(stop):
            producer.produce(args.topic, value=str(sequence).encode(), partition=0,
                             on_delivery=delivered)
            sequence += 1
            producer.poll(args.interval_ms / 1000)
        producer.flush(30)


if __name__ == "__main__":
    main()
