#!/usr/bin/env python3
"""ACLs enforced, with real Kafka clients and the weir CLI against a real weir broker.

    acls.py --weir BIN --work-dir DIR

The broker runs with `authorizer_enabled`, its Kafka listener SASL_PLAINTEXT (PLAIN and
SCRAM). First it starts with `User:ANONYMOUS` among the super users, so that the CLI
(anonymous over the native protocol) can make the users, topics and records, and with
`weir acl` give ANONYMOUS READ on `metrics-cpu`; then it restarts with `User:admin` the
only super user, and:

- admin grants, through confluent_kafka.admin CreateAcls: `writer` WRITE on topic
  `orders` and READ on group `writer-group`; `reader` READ on topics prefixed
  `metrics-` and on groups prefixed `dash-`;
- writer produces to `orders` (librdkafka, and kafka-python whose idempotent producer
  needs WRITE on some topic for InitProducerId) and commits a transaction with an id
  it may WRITE (prefix `writer-`, another id is refused), but cannot consume it, cannot create a
  topic (CreateTopics, nor by Metadata auto-creation), and cannot change ACLs;
- reader consumes both metrics- topics in group dash-1 and sees only them in Metadata,
  but cannot produce to them, cannot read `orders`, and cannot join a group outside
  dash-; a DENY added for metrics-mem wins over its prefixed ALLOW;
- the CLI, anonymous on the native protocol, is held to the same ACLs: it lists only
  metrics-cpu, consumes it, and cannot produce to it, read orders, create a topic or
  list the ACLs.

Run by broker/tests/security.rs.
"""

import argparse
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scenario import log, stop_process  # noqa: E402

MESSAGES = 500
USERS = {"admin": "admin-pw", "writer": "writer-pw", "reader": "reader-pw"}


class Broker:
    """`weir serve` with the authorizer on; stopped by PID."""

    def __init__(self, binary, data_dir, super_users):
        self.binary = binary
        env = dict(os.environ, WEIR_LOG="warn", WEIR_KAFKA_LISTEN_PROTOCOL="SASL_PLAINTEXT",
                   WEIR_AUTHORIZER_ENABLED="true",
                   WEIR_SUPER_USERS="[" + ", ".join(f'"{u}"' for u in super_users) + "]",
                   WEIR_SASL_FAILED_AUTHENTICATION_DELAY_MS="50")
        self.process = subprocess.Popen(
            [binary, "serve", "--data-dir", data_dir, "--native-listen", "127.0.0.1:0",
             "--kafka-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--cores", "2"],
            env=env, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        self.fields = dict(re.findall(r"([\w+]+)=(\S+)", line))
        if "kafka" not in self.fields:
            raise RuntimeError(f"broker did not announce its listeners: {line!r}")
        log("broker", self.process.pid, "serving", line.strip(), "super users", super_users)

    def stop(self):
        stop_process(self.process)

    def cli(self, *args, stdin=None):
        return subprocess.run([self.binary, *args, "--brokers", self.fields["native"]],
                              input=stdin, capture_output=True, text=True, timeout=60)

    def config(self, user, **extra):
        return dict({"bootstrap.servers": self.fields["kafka"],
                     "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512",
                     "sasl.username": user, "sasl.password": USERS[user]}, **extra)


def must(out):
    assert out.returncode == 0, f"{out.args}: {out.stderr}"
    return out.stdout


def bootstrap(broker):
    """Users, topics and records, made by the CLI while ANONYMOUS is a super user."""
    for user, password in USERS.items():
        must(broker.cli("user", "create", user, "--password", password))
    for topic in ["orders", "metrics-cpu", "metrics-mem", "payments"]:
        must(broker.cli("topic", "create", topic, "--partitions", "2"))
    for topic in ["metrics-cpu", "metrics-mem"]:
        lines = "".join(f"{topic}-{i}\n" for i in range(MESSAGES))
        must(broker.cli("produce", topic, stdin=lines))
    # weir acl: the CLI's own ACL for later, and two made and deleted again.
    must(broker.cli("acl", "create", "--topic", "metrics-cpu", "--principal", "User:ANONYMOUS",
                    "--host", "127.0.0.1", "--operation", "read"))
    must(broker.cli("acl", "create", "--group", "g-", "--pattern", "prefixed", "--principal",
                    "User:nobody", "--operation", "read,describe", "--permission", "deny"))
    deleted = must(broker.cli("acl", "delete", "--principal", "User:nobody"))
    assert len(deleted.splitlines()) == 2, deleted
    listed = must(broker.cli("acl", "list")).splitlines()
    assert listed[1:] == ["TOPIC\tmetrics-cpu\tLITERAL\tUser:ANONYMOUS\t127.0.0.1\tREAD\tALLOW"], \
        listed
    log("bootstrap: users, topics, records and an ACL made by the anonymous CLI")


def grant(broker):
    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType,
                                       AdminClient, ResourcePatternType, ResourceType)
    allow = AclPermissionType.ALLOW
    bindings = [
        AclBinding(ResourceType.TOPIC, "orders", ResourcePatternType.LITERAL, "User:writer",
                   "*", AclOperation.WRITE, allow),
        AclBinding(ResourceType.TOPIC, "metrics-", ResourcePatternType.PREFIXED, "User:reader",
                   "*", AclOperation.READ, allow),
        AclBinding(ResourceType.GROUP, "dash-", ResourcePatternType.PREFIXED, "User:reader",
                   "*", AclOperation.READ, allow),
        AclBinding(ResourceType.GROUP, "writer-group", ResourcePatternType.LITERAL,
                   "User:writer", "*", AclOperation.READ, allow),
        AclBinding(ResourceType.TRANSACTIONAL_ID, "writer-", ResourcePatternType.PREFIXED,
                   "User:writer", "*", AclOperation.WRITE, allow),
    ]
    admin = AdminClient(broker.config("admin"))
    for binding, future in admin.create_acls(bindings).items():
        future.result(timeout=30)
    log("admin: ACLs created")


def refused(future, code_name):
    from confluent_kafka import KafkaException
    try:
        future.result(timeout=30)
    except KafkaException as error:
        code = error.args[0].code()
        assert error.args[0].name() == code_name, f"wanted {code_name}, got {error}"
        return code
    raise AssertionError(f"accepted; {code_name} wanted")


def produce(config, topic, count):
    """Delivery errors of `count` messages (empty: all delivered)."""
    from confluent_kafka import Producer
    producer = Producer(dict(config, **{"message.timeout.ms": 10_000}))
    errors = []
    for i in range(count):
        producer.produce(topic, value=f"{topic}-{i}",
                         on_delivery=lambda err, msg: err and errors.append(err))
    producer.flush(30)
    return errors


def consume(config, topics, group, wanted, seconds=30):
    """(values read, errors) of a group member reading `topics` from the beginning until
    it has `wanted` values or an error."""
    from confluent_kafka import Consumer
    consumer = Consumer(dict(config, **{"group.id": group, "auto.offset.reset": "earliest",
                                        "session.timeout.ms": 6000}))
    consumer.subscribe(topics)
    values, errors = set(), []
    deadline = time.time() + seconds
    while len(values) < wanted and not errors and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            errors.append(msg.error().name())
        else:
            values.add(msg.value().decode())
    consumer.close()
    return values, errors


def writer_checks(broker):
    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType,
                                       AdminClient, NewTopic, ResourcePatternType,
                                       ResourceType)
    config = broker.config("writer")
    assert produce(config, "orders", MESSAGES) == [], "writer could not produce to orders"
    log(f"writer: {MESSAGES} produced to orders")

    from kafka import KafkaProducer
    producer = KafkaProducer(bootstrap_servers=broker.fields["kafka"],
                             security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                             sasl_plain_username="writer", sasl_plain_password=USERS["writer"])
    for i in range(100):
        producer.send("orders", value=f"kp-{i}".encode())
    producer.flush(30)
    producer.close()
    log("writer: kafka-python (idempotent) produced to orders")

    from confluent_kafka import KafkaException, Producer
    txn = Producer(dict(config, **{"transactional.id": "writer-txn"}))
    txn.init_transactions(30)
    txn.begin_transaction()
    txn.produce("orders", value="in-a-transaction")
    txn.commit_transaction(30)
    other = Producer(dict(config, **{"transactional.id": "other-txn"}))
    try:
        other.init_transactions(30)
        raise AssertionError("writer used transactional id other-txn")
    except KafkaException as error:
        assert error.args[0].name() == "TRANSACTIONAL_ID_AUTHORIZATION_FAILED", error
    log("writer: a transaction as writer-txn committed; other-txn refused")

    # Its group is allowed: the topic is what it may not read.
    _, errors = consume(config, ["orders"], "writer-group", 1, seconds=20)
    assert errors == ["TOPIC_AUTHORIZATION_FAILED"], f"writer consumed orders: {errors}"
    log(f"writer: consuming orders refused ({errors[0]})")

    admin = AdminClient(config)
    refused(admin.create_topics([NewTopic("writer-made", 1, 1)])["writer-made"],
            "TOPIC_AUTHORIZATION_FAILED")
    errors = produce(config, "auto-made", 1)
    assert errors and errors[0].name() in ("TOPIC_AUTHORIZATION_FAILED",
                                           "UNKNOWN_TOPIC_OR_PART"), errors
    everything = AdminClient(broker.config("admin")).list_topics(timeout=30).topics
    assert "writer-made" not in everything and "auto-made" not in everything, everything
    log("writer: CreateTopics and auto-creation refused")

    binding = AclBinding(ResourceType.TOPIC, "*", ResourcePatternType.LITERAL, "User:writer",
                         "*", AclOperation.ALL, AclPermissionType.ALLOW)
    refused(admin.create_acls([binding])[binding], "CLUSTER_AUTHORIZATION_FAILED")
    log("writer: CreateAcls refused")


def reader_checks(broker):
    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType,
                                       AdminClient, ResourcePatternType, ResourceType)
    config = broker.config("reader")
    values, errors = consume(config, ["metrics-cpu", "metrics-mem"], "dash-1", 2 * MESSAGES)
    expected = {f"{t}-{i}" for t in ["metrics-cpu", "metrics-mem"] for i in range(MESSAGES)}
    assert values == expected and not errors, f"reader read {len(values)}, errors {errors}"
    log(f"reader: consumed {len(values)} from metrics-cpu and metrics-mem in dash-1")

    visible = set(AdminClient(config).list_topics(timeout=30).topics)
    assert visible == {"metrics-cpu", "metrics-mem"}, f"reader sees {visible}"
    log("reader: Metadata shows only the metrics- topics")

    errors = produce(config, "metrics-cpu", 1)
    assert [e.name() for e in errors] == ["TOPIC_AUTHORIZATION_FAILED"], errors
    _, errors = consume(config, ["orders"], "dash-2", 1, seconds=20)
    assert errors == ["TOPIC_AUTHORIZATION_FAILED"], errors
    _, errors = consume(config, ["metrics-cpu"], "elsewhere", 1, seconds=20)
    assert errors == ["GROUP_AUTHORIZATION_FAILED"], errors
    log("reader: producing, reading orders and group elsewhere refused")

    deny = AclBinding(ResourceType.TOPIC, "metrics-mem", ResourcePatternType.LITERAL,
                      "User:reader", "*", AclOperation.READ, AclPermissionType.DENY)
    admin = AdminClient(broker.config("admin"))
    admin.create_acls([deny])[deny].result(timeout=30)
    _, errors = consume(config, ["metrics-mem"], "dash-3", 1, seconds=20)
    assert errors == ["TOPIC_AUTHORIZATION_FAILED"], errors
    values, errors = consume(config, ["metrics-cpu"], "dash-4", MESSAGES)
    assert len(values) == MESSAGES and not errors, (len(values), errors)
    log("reader: a DENY on metrics-mem wins; metrics-cpu still read")


def cli_checks(broker):
    listed = must(broker.cli("topic", "list"))
    names = [line.split("\t")[0] for line in listed.splitlines()]
    assert names == ["metrics-cpu"], f"anonymous lists {listed!r}"
    read = must(broker.cli("consume", "metrics-cpu", "--from", "beginning",
                           "--count", str(MESSAGES)))
    assert sorted(read.split()) == sorted(f"metrics-cpu-{i}" for i in range(MESSAGES))
    # orders is hidden from anonymous: consuming it finds no such topic.
    for args, stdin, why in [(("produce", "metrics-cpu"), "x\n", "not allowed"),
                             (("consume", "orders", "--from", "beginning", "--count", "1"),
                              None, "orders"),
                             (("topic", "create", "anonymous-made"), None, "not allowed"),
                             (("acl", "list"), None, "not allowed")]:
        out = broker.cli(*args, stdin=stdin)
        assert out.returncode != 0 and why in out.stderr, (args, out)
    log("CLI (anonymous, native): lists and reads metrics-cpu only; the rest refused")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--weir", required=True)
    parser.add_argument("--work-dir", required=True)
    args = parser.parse_args()
    data = os.path.join(args.work_dir, "data")
    broker = Broker(args.weir, data, ["User:admin", "User:ANONYMOUS"])
    try:
        bootstrap(broker)
    finally:
        broker.stop()
    broker = Broker(args.weir, data, ["User:admin"])
    try:
        grant(broker)
        writer_checks(broker)
        reader_checks(broker)
        cli_checks(broker)
    finally:
        broker.stop()
    log("acls: every check passed")


if __name__ == "__main__":
    main()
