"""The workload of weir's fault-injection tests, with librdkafka (confluent-kafka).

    workload.py produce --bootstrap B --topic T --out DIR [--producers N] [--rate R]
        Idempotent producers with acks=all write unique values ("<producer>-<sequence>")
        until DIR/stop appears, then flush. Every attempt goes to DIR/attempted-<n>.txt
        and every acknowledgement (value, partition, offset) to DIR/acked-<n>.txt as it
        happens; errors to DIR/errors-<n>.txt. A live reader (no group) follows every
        partition from its start meanwhile and records what it sees in DIR/live.txt.
    workload.py read --bootstrap B --topic T --out DIR
        Reads every partition from its start to its high watermark into DIR/final.txt.

The checker (checker.py) judges the files; it knows nothing of weir.
"""

import argparse
import logging
import os
import sys
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition


def stop_requested(out):
    return os.path.exists(os.path.join(out, "stop"))


def debug_logger(out, name):
    """librdkafka's debug log (WORKLOAD_DEBUG=eos,msg,...) goes to a file per client."""
    logger = logging.getLogger(name)
    handler = logging.FileHandler(os.path.join(out, f"{name}.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    return logger


def produce(args, index):
    debug = os.environ.get("WORKLOAD_DEBUG")
    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 2,
        "message.timeout.ms": 180000,
        "request.timeout.ms": 5000,
        "metadata.max.age.ms": 2000,
        "topic.metadata.refresh.interval.ms": 1000,
        "retry.backoff.ms": 50,
        "socket.timeout.ms": 5000,
        "error_cb": lambda error: print(f"producer {index}: {error}", file=sys.stderr, flush=True),
        **({"debug": debug} if debug else {}),
    }, **({"logger": debug_logger(args.out, f"rdkafka-producer-{index}")} if debug else {}))
    attempted = open(os.path.join(args.out, f"attempted-{index}.txt"), "w", buffering=1)
    acked = open(os.path.join(args.out, f"acked-{index}.txt"), "w", buffering=1)
    errors = open(os.path.join(args.out, f"errors-{index}.txt"), "w", buffering=1)

    def delivered(error, message):
        value = message.value().decode()
        if error is not None:
            errors.write(f"{value} {error}\n")
        else:
            acked.write(f"{value} {message.partition()} {message.offset()}\n")

    pause = 1.0 / args.rate if args.rate > 0 else 0
    try:
        run(args, index, producer, attempted, delivered, pause)
    except Exception as error:  # a fatal producer error: the run is void, and says why
        errors.write(f"# fatal {error!r}\n")
        print(f"producer {index}: fatal: {error!r}", file=sys.stderr, flush=True)
        if os.environ.get("WORKLOAD_DEBUG"):
            try:
                producer.poll(1)  # serves the debug log's last lines
            except Exception:
                pass
        os._exit(3)
    left = producer.flush(240)
    errors.write(f"# unflushed {left}\n")
    for f in (attempted, acked, errors):
        f.close()


def run(args, index, producer, attempted, delivered, pause):
    sequence = 0
    while not stop_requested(args.out):
        value = f"{index}-{sequence}"
        attempted.write(value + "\n")
        while True:
            try:
                producer.produce(args.topic, key=str(sequence % 97).encode(), value=value.encode(),
                                 on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        sequence += 1
        producer.poll(0)
        if pause:
            time.sleep(pause)


def partitions_of(consumer, topic):
    metadata = consumer.list_topics(topic, timeout=30)
    return sorted(metadata.topics[topic].partitions)


def follow(args):
    """Reads everything as it is written, never seeking back: what it sees must never go
    backwards or change."""
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": "live-reader",
        "enable.auto.commit": False,
        "isolation.level": "read_uncommitted",
        "topic.metadata.refresh.interval.ms": 1000,
        "fetch.wait.max.ms": 100,
    })
    partitions = partitions_of(consumer, args.topic)
    consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in partitions])
    with open(os.path.join(args.out, "live.txt"), "w", buffering=1) as live:
        while not os.path.exists(os.path.join(args.out, "stop-reader")):
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            live.write(f"{message.value().decode()} {message.partition()} {message.offset()}\n")
    consumer.close()


def read(args):
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": "final-reader",
        "enable.auto.commit": False,
        "isolation.level": "read_uncommitted",
    })
    partitions = partitions_of(consumer, args.topic)
    ends = {}
    for p in partitions:
        deadline = time.time() + 60
        while True:
            try:
                ends[p] = consumer.get_watermark_offsets(TopicPartition(args.topic, p), timeout=10)[1]
                break
            except KafkaException:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
    consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in partitions])
    positions = {p: -1 for p in partitions}
    deadline = time.time() + 120
    with open(os.path.join(args.out, "final.txt"), "w") as final:
        while any(positions[p] + 1 < ends[p] for p in partitions):
            if time.time() > deadline:
                sys.exit(f"could not read to the high watermarks {ends}; at {positions}")
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            if message.offset() >= ends[message.partition()]:
                continue
            positions[message.partition()] = message.offset()
            final.write(f"{message.value().decode()} {message.partition()} {message.offset()}\n")
    with open(os.path.join(args.out, "high-watermarks.txt"), "w") as hw:
        for p in partitions:
            hw.write(f"{p} {ends[p]}\n")
    consumer.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["produce", "read"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=0, help="messages a second per producer (0: as fast as it goes)")
    args = parser.parse_args()
    if args.mode == "read":
        read(args)
        return
    reader = threading.Thread(target=follow, args=(args,), daemon=True)
    reader.start()
    producers = [threading.Thread(target=produce, args=(args, i)) for i in range(args.producers)]
    for t in producers:
        t.start()
    for t in producers:
        t.join()
    open(os.path.join(args.out, "stop-reader"), "w").close()
    # What the live reader saw is on disk line by line; a reader that does not stop (once,
    # librdkafka's Consumer.close() hung here) must not hang the run.
    reader.join(60)
    if reader.is_alive():
        print("the live reader did not stop within 60 s; leaving it", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
