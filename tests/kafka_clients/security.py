#!/usr/bin/env python3
"""TLS and SASL with real Kafka clients against a real weir broker.

    security.py --weir BIN --work-dir DIR --certs DIR

The broker serves Kafka on PLAINTEXT (its main listener), SSL, SASL_SSL and
SASL_PLAINTEXT, HTTP on plain and TLS ports and native on plain and TLS ports, with the
test CA's certificates (made by broker/tests/security.rs) and client certificates
requested. Then:

- users: `weir user create` (SCRAM-SHA-256 and -512) and confluent_kafka.admin's
  AlterUserScramCredentials; DescribeUserScramCredentials and `weir user list` show them;
- confluent-kafka and kafka-python produce and consume over SSL, SASL_SSL (SCRAM-SHA-512,
  SCRAM-SHA-256) and SASL_PLAINTEXT (PLAIN), kcat over SASL_PLAINTEXT and SASL_SSL with
  PLAIN: every message back;
- librdkafka with a client certificate the CA signed is served; a TLS client with a
  certificate of an unknown CA is refused;
- a wrong password and an unknown user are refused with an authentication error (and
  counted in weir_authentication_failures_total); a deleted user can no longer log in;
- /metrics over HTTPS;
- the server certificate is replaced on disk and new connections get the new one, with
  no restart.

Run by broker/tests/security.rs.
"""

import argparse
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scenario import log, stop_process  # noqa: E402

MESSAGES = 2_000
PASSWORD = "alice-s3cret"


class SecureBroker:
    """`weir serve` with every listener kind; stopped by PID."""

    def __init__(self, binary, data_dir, certs):
        self.binary = binary
        self.certs = certs
        self.args = [binary, "serve", "--data-dir", data_dir, "--native-listen", "127.0.0.1:0",
                     "--kafka-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                     "--cores", "2"]
        self.env = dict(
            os.environ, WEIR_LOG="warn",
            WEIR_KAFKA_LISTENERS='["SSL://127.0.0.1:0", "SASL_SSL://127.0.0.1:0", '
                                 '"SASL_PLAINTEXT://127.0.0.1:0"]',
            WEIR_NATIVE_LISTENERS='["SSL://127.0.0.1:0"]',
            WEIR_HTTP_LISTENERS='["SSL://127.0.0.1:0"]',
            WEIR_TLS_CERT_FILE=os.path.join(certs, "server.pem"),
            WEIR_TLS_KEY_FILE=os.path.join(certs, "server.key"),
            WEIR_TLS_CLIENT_CA_FILE=os.path.join(certs, "ca.pem"),
            WEIR_TLS_CLIENT_AUTH="requested",
            WEIR_TLS_RELOAD_INTERVAL_MS="200",
            WEIR_SASL_FAILED_AUTHENTICATION_DELAY_MS="50",
        )
        self.process = subprocess.Popen(self.args, env=self.env, stdout=subprocess.PIPE,
                                        text=True)
        line = self.process.stdout.readline()
        self.fields = dict(re.findall(r"([\w+]+)=(\S+)", line))
        if "kafka+SASL_SSL" not in self.fields:
            raise RuntimeError(f"broker did not announce its listeners: {line!r}")
        log("broker", self.process.pid, "serving", line.strip())

    def address(self, listener):
        return self.fields[listener]

    def stop(self):
        stop_process(self.process)

    def cli(self, *args):
        return subprocess.run([self.binary, *args, "--brokers", self.fields["native"]],
                              capture_output=True, text=True, timeout=60)

    def metric(self, name):
        text = urllib.request.urlopen(f"http://{self.fields['http']}/metrics", timeout=10)
        total = 0.0
        for line in text.read().decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total


def librdkafka_config(broker, protocol, mechanism=None, user="alice", password=PASSWORD,
                      client_cert=None):
    listener = {"PLAINTEXT": "kafka"}.get(protocol, f"kafka+{protocol}")
    config = {"bootstrap.servers": broker.address(listener), "security.protocol": protocol}
    if "SSL" in protocol:
        config["ssl.ca.location"] = os.path.join(broker.certs, "ca.pem")
        if client_cert:
            config["ssl.certificate.location"] = os.path.join(broker.certs, client_cert + ".pem")
            config["ssl.key.location"] = os.path.join(broker.certs, client_cert + ".key")
    if mechanism:
        config.update({"sasl.mechanism": mechanism, "sasl.username": user,
                       "sasl.password": password})
    return config


def round_trip_librdkafka(broker, topic, **kwargs):
    from confluent_kafka import Consumer, Producer
    config = librdkafka_config(broker, **kwargs)
    producer = Producer(dict(config, **{"enable.idempotence": True}))
    failures = []
    for i in range(MESSAGES):
        producer.produce(topic, key=f"k{i % 10}", value=str(i),
                         on_delivery=lambda err, msg: err and failures.append(err))
        if i % 500 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0, "messages left unsent"
    assert not failures, failures[:3]
    consumer = Consumer(dict(config, **{"group.id": f"{topic}-group",
                                        "auto.offset.reset": "earliest"}))
    consumer.subscribe([topic])
    seen = set()
    deadline = time.time() + 60
    while len(seen) < MESSAGES and time.time() < deadline:
        msg = consumer.poll(1.0)
        if msg is not None and not msg.error():
            seen.add(int(msg.value()))
    consumer.close()
    assert seen == set(range(MESSAGES)), f"{topic}: consumed {len(seen)} of {MESSAGES}"
    log(f"confluent-kafka {kwargs}: {MESSAGES} produced and consumed")


def refused_librdkafka(broker, **kwargs):
    """The client reports an authentication (or, for TLS, a transport) error and gets
    nothing served."""
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import AdminClient
    errors = []
    config = dict(librdkafka_config(broker, **kwargs), error_cb=errors.append)
    admin = AdminClient(config)
    try:
        admin.list_topics(timeout=5)
        served = True
    except Exception:
        served = False
    deadline = time.time() + 20
    wanted = {KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError._TRANSPORT,
              KafkaError._ALL_BROKERS_DOWN}
    while not any(e.code() in wanted for e in errors) and time.time() < deadline:
        admin.poll(0.5)
    assert not served, f"{kwargs} was served"
    assert any(e.code() in wanted for e in errors), f"{kwargs}: errors {errors}"
    return [e.code() for e in errors]


def round_trip_kafka_python(broker, topic, protocol, mechanism=None, user="alice",
                            password=PASSWORD):
    from kafka import KafkaConsumer, KafkaProducer
    listener = f"kafka+{protocol}"
    config = {"bootstrap_servers": broker.address(listener), "security_protocol": protocol}
    if "SSL" in protocol:
        config["ssl_cafile"] = os.path.join(broker.certs, "ca.pem")
    if mechanism:
        config.update(sasl_mechanism=mechanism, sasl_plain_username=user,
                      sasl_plain_password=password)
    producer = KafkaProducer(**config)
    for i in range(MESSAGES):
        producer.send(topic, key=b"k", value=str(i).encode())
    producer.flush(60)
    producer.close()
    consumer = KafkaConsumer(topic, group_id=f"{topic}-group", auto_offset_reset="earliest",
                             consumer_timeout_ms=10_000, **config)
    seen = {int(m.value) for m in consumer}
    consumer.close()
    assert seen == set(range(MESSAGES)), f"{topic}: consumed {len(seen)} of {MESSAGES}"
    log(f"kafka-python {protocol} {mechanism}: {MESSAGES} produced and consumed")


def refused_kafka_python(broker, protocol, mechanism, user, password):
    from kafka import KafkaProducer
    config = {"bootstrap_servers": broker.address(f"kafka+{protocol}"),
              "security_protocol": protocol, "sasl_mechanism": mechanism,
              "sasl_plain_username": user, "sasl_plain_password": password,
              "request_timeout_ms": 5000, "max_block_ms": 5000, "api_version": (2, 8, 0)}
    if "SSL" in protocol:
        config["ssl_cafile"] = os.path.join(broker.certs, "ca.pem")
    try:
        producer = KafkaProducer(**config)
        producer.send("kafka-python-refused", b"x").get(timeout=5)
    except Exception as error:  # kafka-python names it differently by where it fails
        log(f"kafka-python {mechanism} as {user}: refused ({type(error).__name__})")
        return
    raise AssertionError(f"kafka-python logged in as {user} with a wrong password")


def kcat(broker, topic, protocol, mechanism):
    listener = f"kafka+{protocol}"
    options = ["-b", broker.address(listener), "-X", f"security.protocol={protocol}",
               "-X", f"sasl.mechanisms={mechanism}", "-X", "sasl.username=alice",
               "-X", f"sasl.password={PASSWORD}"]
    if "SSL" in protocol:
        options += ["-X", f"ssl.ca.location={os.path.join(broker.certs, 'ca.pem')}"]
    lines = "".join(f"k{i}\t{i}\n" for i in range(MESSAGES))
    subprocess.run(["kcat", *options, "-P", "-t", topic, "-K", "\t"], input=lines, text=True,
                   check=True, timeout=60)
    out = subprocess.run(["kcat", *options, "-C", "-t", topic, "-o", "beginning", "-e",
                          "-f", "%s\n"], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    assert sorted(map(int, out.split())) == list(range(MESSAGES)), f"kcat read {out[:200]!r}"
    log(f"kcat {protocol} {mechanism}: {MESSAGES} produced and consumed")


def users(broker):
    out = broker.cli("user", "create", "alice", "--password", PASSWORD)
    assert out.returncode == 0, out.stderr
    out = broker.cli("user", "create", "carol", "--password", "carol-pw",
                     "--mechanism", "SCRAM-SHA-256", "--iterations", "4096")
    assert out.returncode == 0, out.stderr
    out = broker.cli("user", "create", "bad", "--password", "x", "--iterations", "10")
    assert out.returncode != 0 and "iterations" in out.stderr, out
    from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                       UserScramCredentialDeletion,
                                       UserScramCredentialUpsertion)
    admin = AdminClient({"bootstrap.servers": broker.address("kafka")})
    futures = admin.alter_user_scram_credentials([
        UserScramCredentialUpsertion("bob", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512,
                                                                8192), b"bob-pw"),
        UserScramCredentialUpsertion("dave", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256,
                                                                 4096), b"dave-pw"),
    ])
    for user, future in futures.items():
        future.result(timeout=30)
    # Kafka's rules: a credential that does not exist cannot be deleted, and too few
    # iterations are refused.
    futures = admin.alter_user_scram_credentials([
        UserScramCredentialDeletion("nobody", ScramMechanism.SCRAM_SHA_256),
        UserScramCredentialUpsertion("erin", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256,
                                                                 100), b"pw"),
    ])
    for user, future in futures.items():
        try:
            future.result(timeout=30)
            raise AssertionError(f"{user}'s change was accepted")
        except Exception as error:
            log(f"AlterUserScramCredentials for {user} refused: {error}")
    described = admin.describe_user_scram_credentials()
    described = described.result(timeout=30) if hasattr(described, "result") else {
        u: f.result(timeout=30) for u, f in described.items()}
    mechanisms = {user: sorted(info.mechanism.name for info in d.scram_credential_infos)
                  for user, d in described.items()}
    assert mechanisms == {"alice": ["SCRAM_SHA_256", "SCRAM_SHA_512"],
                          "bob": ["SCRAM_SHA_512"], "carol": ["SCRAM_SHA_256"],
                          "dave": ["SCRAM_SHA_256"]}, mechanisms
    listing = broker.cli("user", "list").stdout
    assert "bob\tSCRAM-SHA-512\t8192" in listing and "carol\tSCRAM-SHA-256\t4096" in listing, \
        listing
    log("users: created with weir user and AdminClient, described both ways")


def acls(broker):
    """CreateAcls, DescribeAcls and DeleteAcls through confluent_kafka.admin (the ACLs are
    stored and listed; enforcing them comes with the authorizer)."""
    from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation,
                                       AclPermissionType, AdminClient, ResourcePatternType,
                                       ResourceType)
    admin = AdminClient({"bootstrap.servers": broker.address("kafka")})
    bindings = [
        AclBinding(ResourceType.TOPIC, "orders-", ResourcePatternType.PREFIXED, "User:alice",
                   "*", AclOperation.READ, AclPermissionType.ALLOW),
        AclBinding(ResourceType.TOPIC, "orders-secret", ResourcePatternType.LITERAL, "User:*",
                   "*", AclOperation.ALL, AclPermissionType.DENY),
        AclBinding(ResourceType.GROUP, "*", ResourcePatternType.LITERAL, "User:alice", "*",
                   AclOperation.READ, AclPermissionType.ALLOW),
        AclBinding(ResourceType.BROKER, "kafka-cluster", ResourcePatternType.LITERAL,
                   "User:admin", "*", AclOperation.ALTER, AclPermissionType.ALLOW),
    ]
    for binding, future in admin.create_acls(bindings).items():
        future.result(timeout=30)
    every = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                             AclOperation.ANY, AclPermissionType.ANY)
    described = admin.describe_acls(every).result(timeout=30)
    assert sorted(map(str, described)) == sorted(map(str, bindings)), described
    # MATCH: the ACLs that apply to topic orders-eu (the prefix, not the literal).
    applying = admin.describe_acls(AclBindingFilter(
        ResourceType.TOPIC, "orders-eu", ResourcePatternType.MATCH, None, None,
        AclOperation.ANY, AclPermissionType.ANY)).result(timeout=30)
    assert [b.name for b in applying] == ["orders-"], applying
    deny = AclBindingFilter(ResourceType.TOPIC, None, ResourcePatternType.ANY, None, None,
                            AclOperation.ANY, AclPermissionType.DENY)
    deleted = list(admin.delete_acls([deny]).values())[0].result(timeout=30)
    assert [b.name for b in deleted] == ["orders-secret"], deleted
    left = admin.describe_acls(every).result(timeout=30)
    assert len(left) == 3, left
    log("ACLs created, described (ANY and MATCH filters) and deleted with confluent_kafka.admin")


def tls_subject(address, certs, cert=None):
    """The common name the server's certificate (verified against the CA) carries; with
    `cert`, as a client presenting that certificate."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=os.path.join(certs, "ca.pem"))
    if cert:
        context.load_cert_chain(os.path.join(certs, cert + ".pem"),
                                os.path.join(certs, cert + ".key"))
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            subject = dict(pair[0] for pair in tls.getpeercert()["subject"])
            # An ApiVersions v0 request: a client the server refuses learns it here (a
            # TLS 1.3 server checks the client certificate after the client's handshake
            # has finished).
            tls.sendall(bytes.fromhex("0000000a" "0012" "0000" "00000001" "ffff"))
            answered = len(tls.recv(4)) == 4
            return subject["commonName"], answered


def certificates(broker):
    certs = broker.certs
    # A client certificate from the CA is accepted (mTLS); a stranger's is not.
    name, answered = tls_subject(broker.address("kafka+SSL"), certs, cert="client")
    assert name == "weir broker" and answered
    try:
        _, answered = tls_subject(broker.address("kafka+SSL"), certs, cert="stranger")
    except (ssl.SSLError, ConnectionError, OSError) as error:
        log(f"a stranger's certificate is refused: {error}")
        answered = False
    # (librdkafka does not even send a certificate the server's CAs did not issue, and is
    # then served as anonymous, since client certificates are requested, not required.)
    assert not answered, "a certificate from an unknown CA was accepted"
    # The native TLS listener completes its handshake with the same certificate.
    host, port = broker.address("native+SSL").rsplit(":", 1)
    context = ssl.create_default_context(cafile=os.path.join(certs, "ca.pem"))
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            assert dict(p[0] for p in tls.getpeercert()["subject"])["commonName"] == "weir broker"
    # /metrics over HTTPS.
    context = ssl.create_default_context(cafile=os.path.join(certs, "ca.pem"))
    body = urllib.request.urlopen(f"https://{broker.address('http+SSL')}/metrics",
                                  context=context, timeout=10).read().decode()
    assert "weir_requests_total" in body
    log("mTLS, native TLS and HTTPS served with the test CA's certificate")


def reload(broker):
    certs = broker.certs
    for suffix in ("pem", "key"):
        staged = os.path.join(certs, f"staged.{suffix}")
        shutil.copy(os.path.join(certs, f"server2.{suffix}"), staged)
        os.replace(staged, os.path.join(certs, f"server.{suffix}"))
    deadline = time.time() + 30
    while time.time() < deadline:
        name, _ = tls_subject(broker.address("kafka+SSL"), certs)
        if name == "weir broker renewed":
            break
        time.sleep(0.2)
    assert name == "weir broker renewed", f"still serving {name}"
    round_trip_librdkafka(broker, "after-reload", protocol="SASL_SSL", mechanism="SCRAM-SHA-512")
    log("the replaced certificate is served without a restart")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--weir", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--certs", required=True)
    args = parser.parse_args()
    broker = SecureBroker(args.weir, os.path.join(args.work_dir, "data"), args.certs)
    try:
        users(broker)
        acls(broker)
        round_trip_librdkafka(broker, "ssl-topic", protocol="SSL")
        round_trip_librdkafka(broker, "mtls-topic", protocol="SSL", client_cert="client")
        round_trip_librdkafka(broker, "scram512-topic", protocol="SASL_SSL",
                              mechanism="SCRAM-SHA-512")
        round_trip_librdkafka(broker, "scram256-topic", protocol="SASL_SSL",
                              mechanism="SCRAM-SHA-256", user="dave", password="dave-pw")
        round_trip_librdkafka(broker, "plain-topic", protocol="SASL_PLAINTEXT",
                              mechanism="PLAIN", user="bob", password="bob-pw")
        round_trip_kafka_python(broker, "kp-ssl", "SSL")
        round_trip_kafka_python(broker, "kp-scram", "SASL_SSL", "SCRAM-SHA-512")
        round_trip_kafka_python(broker, "kp-plain", "SASL_PLAINTEXT", "PLAIN")
        # Debian's kcat is librdkafka 2.0.2, whose SCRAM repeats the client nonce in its
        # final message (fixed in librdkafka 2.6.1; docs/COMPATIBILITY.md): PLAIN only.
        kcat(broker, "kcat-plain", "SASL_PLAINTEXT", "PLAIN")
        kcat(broker, "kcat-plain-tls", "SASL_SSL", "PLAIN")

        before = broker.metric("weir_authentication_failures_total")
        codes = refused_librdkafka(broker, protocol="SASL_SSL", mechanism="SCRAM-SHA-512",
                                   password="wrong")
        from confluent_kafka import KafkaError
        assert KafkaError._AUTHENTICATION in codes, codes
        refused_librdkafka(broker, protocol="SASL_PLAINTEXT", mechanism="PLAIN",
                           user="mallory", password="guess")
        refused_kafka_python(broker, "SASL_SSL", "SCRAM-SHA-512", "alice", "wrong")
        refused_kafka_python(broker, "SASL_PLAINTEXT", "PLAIN", "alice", "wrong")
        # The user goes; its logins go with it.
        out = broker.cli("user", "delete", "carol")
        assert out.returncode == 0, out.stderr
        refused_librdkafka(broker, protocol="SASL_PLAINTEXT", mechanism="SCRAM-SHA-256",
                           user="carol", password="carol-pw")
        after = broker.metric("weir_authentication_failures_total")
        assert after >= before + 5, f"authentication failures counted {before} -> {after}"
        log(f"wrong passwords, unknown and deleted users refused ({after - before:.0f} "
            "failures counted)")

        certificates(broker)
        reload(broker)
    finally:
        broker.stop()
    log("security: all passed")


if __name__ == "__main__":
    main()
