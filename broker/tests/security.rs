//! Security on the Kafka listeners with real clients and real certificates (made here
//! with rcgen, never committed): `tests/kafka_clients/security.py` runs confluent-kafka,
//! kafka-python and kcat over SSL (with and without a client certificate), SASL_SSL
//! with SCRAM-SHA-512 and SCRAM-SHA-256, and SASL_PLAINTEXT with PLAIN, refuses a wrong
//! password with an authentication error, manages users through the Kafka admin API and
//! `weir user`, serves /metrics over HTTPS, and reloads a replaced certificate without a
//! restart. And a fuzz of the path before authentication: random bytes and valid
//! non-SASL requests from unauthenticated connections are closed on without reaching a
//! request handler, and the broker keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use weir_tests::broker::BrokerProcess;
use weir_tests::certs::{DnType, TestCa, local_hosts};
use weir_tests::{python, repo};

/// A test CA and what it signs, as PEM files in `dir`: `ca.pem`; the broker's
/// `server.pem`/`server.key` and a second pair for the reload (`server2.*`); a client
/// certificate `client.pem`/`client.key` (CN=writer,O=weir); and `stranger.*`, a client
/// certificate from a CA nobody trusts.
fn write_certificates(dir: &Path) {
    let ca = TestCa::new(dir, "weir test CA");
    ca.leaf(
        "server",
        &[(DnType::CommonName, "weir broker")],
        local_hosts(),
    );
    ca.leaf(
        "server2",
        &[(DnType::CommonName, "weir broker renewed")],
        local_hosts(),
    );
    ca.leaf(
        "client",
        &[
            (DnType::OrganizationName, "weir"),
            (DnType::CommonName, "writer"),
        ],
        vec![],
    );
    let strangers = dir.join("strangers");
    std::fs::create_dir(&strangers).unwrap();
    TestCa::new(&strangers, "nobody's CA").leaf(
        "stranger",
        &[(DnType::CommonName, "stranger")],
        vec![],
    );
    for suffix in ["pem", "key"] {
        std::fs::rename(
            strangers.join(format!("stranger.{suffix}")),
            dir.join(format!("stranger.{suffix}")),
        )
        .unwrap();
    }
}

#[test]
fn kafka_clients_over_tls_and_sasl() {
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    write_certificates(&certs);
    let status = Command::new(python())
        .arg(repo().join("tests/kafka_clients/security.py"))
        .args(["--weir", env!("CARGO_BIN_EXE_weir")])
        .arg("--work-dir")
        .arg(work.path())
        .arg("--certs")
        .arg(&certs)
        .status()
        .expect("running security.py");
    assert!(status.success(), "security.py failed");
}

/// The authorizer with real clients: `tests/kafka_clients/acls.py` (produce but not
/// consume, a prefixed set of topics only, no topic creation; the native CLI under the
/// same ACLs).
#[test]
fn acls_hold_real_clients_to_what_they_are_allowed() {
    let work = tempfile::tempdir().unwrap();
    let status = Command::new(python())
        .arg(repo().join("tests/kafka_clients/acls.py"))
        .args(["--weir", env!("CARGO_BIN_EXE_weir")])
        .arg("--work-dir")
        .arg(work.path())
        .status()
        .expect("running acls.py");
    assert!(status.success(), "acls.py failed");
}

/// The native protocol logs in with the same SCRAM credentials: the CLI on a SASL native
/// listener is refused without them or with a wrong password, and with them it is the
/// user it logged in as (the authorizer shows it: alice, with no ACLs, sees no topics;
/// admin, a super user, sees them).
#[test]
fn native_clients_log_in_with_sasl() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_with_env(
        env!("CARGO_BIN_EXE_weir"),
        dir.path(),
        1,
        &[],
        &[
            (
                "WEIR_NATIVE_LISTENERS",
                "[\"SASL_PLAINTEXT://127.0.0.1:0\"]",
            ),
            ("WEIR_AUTHORIZER_ENABLED", "true"),
            ("WEIR_SUPER_USERS", "[\"User:admin\", \"User:ANONYMOUS\"]"),
            ("WEIR_SASL_FAILED_AUTHENTICATION_DELAY_MS", "10"),
        ],
    )
    .unwrap();
    for user in ["alice", "admin"] {
        let password = format!("{user}-pw");
        broker
            .cli_ok(&["user", "create", user, "--password", &password], None)
            .unwrap();
    }
    broker.cli_ok(&["topic", "create", "ledger"], None).unwrap();
    let sasl = broker.extra_listener("native+SASL_PLAINTEXT").unwrap();
    let weir = |login: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["topic", "list", "--brokers", &sasl])
            .args(login)
            .env("WEIR_LOG", "warn")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.success(), stdout, stderr)
    };
    let (ok, _, stderr) = weir(&[]);
    assert!(!ok, "served without logging in");
    assert!(stderr.contains("authenticate first"), "{stderr}");
    let login = |mechanism: &'static str, user: &'static str, password: &'static str| {
        [
            "--sasl-mechanism",
            mechanism,
            "--sasl-username",
            user,
            "--sasl-password",
            password,
        ]
    };
    let (ok, _, stderr) = weir(&login("SCRAM-SHA-512", "alice", "wrong"));
    assert!(!ok, "a wrong password was let in");
    assert!(stderr.contains("AuthenticationFailed"), "{stderr}");
    let (ok, listed, stderr) = weir(&login("SCRAM-SHA-512", "alice", "alice-pw"));
    assert!(ok, "{stderr}");
    assert!(
        !listed.contains("ledger"),
        "alice may not describe ledger: {listed}"
    );
    for mechanism in ["SCRAM-SHA-256", "PLAIN"] {
        let (ok, listed, stderr) = weir(&login(mechanism, "admin", "admin-pw"));
        assert!(ok, "{mechanism}: {stderr}");
        assert!(listed.contains("ledger"), "{mechanism}: {listed}");
    }
}

// ---- before authentication -------------------------------------------------------

/// A connection that never authenticates is closed once its time is up, one that is in
/// the middle of a frame too, while ApiVersions is still served to newcomers.
#[test]
fn connections_that_do_not_authenticate_are_closed_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_with_env(
        env!("CARGO_BIN_EXE_weir"),
        dir.path(),
        1,
        &[],
        &[
            ("WEIR_KAFKA_LISTEN_PROTOCOL", "SASL_PLAINTEXT"),
            ("WEIR_SASL_AUTHENTICATION_TIMEOUT_MS", "300"),
        ],
    )
    .unwrap();
    let mut silent = connect(&broker.kafka);
    let mut halfway = connect(&broker.kafka);
    halfway.write_all(&100i32.to_be_bytes()).unwrap();
    // The read timeout of `connect` (longer than 300 ms) would fail the reads instead.
    assert!(
        closed_unanswered(&mut silent),
        "a silent connection stayed open"
    );
    assert!(
        closed_unanswered(&mut halfway),
        "a half-sent frame kept its connection"
    );
    assert!(serving(&broker.kafka));
}

fn connect(address: &str) -> TcpStream {
    let stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// A request frame: size, api key, version, correlation id, client id, then `body`.
fn frame(api_key: i16, version: i16, body: &[u8]) -> Vec<u8> {
    let mut request = Vec::new();
    request.extend_from_slice(&api_key.to_be_bytes());
    request.extend_from_slice(&version.to_be_bytes());
    request.extend_from_slice(&7i32.to_be_bytes());
    request.extend_from_slice(&(-1i16).to_be_bytes());
    request.extend_from_slice(body);
    let mut framed = (request.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&request);
    framed
}

/// The broker closed the connection (EOF or reset) without answering.
fn closed_unanswered(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

/// ApiVersions on a fresh connection is still answered.
fn serving(address: &str) -> bool {
    answered(&mut connect(address))
}

/// What an unauthenticated peer sends.
#[derive(Debug, Clone)]
enum Hostile {
    /// A well-formed header of an API other than ApiVersions and the SASL ones, with an
    /// arbitrary body (a Metadata request is an empty-ish body at version 0).
    Request {
        api_key: i16,
        version: i16,
        body: Vec<u8>,
    },
    /// Bytes, whatever they are.
    Garbage(Vec<u8>),
}

impl Arbitrary for Hostile {
    fn arbitrary(g: &mut Gen) -> Hostile {
        if bool::arbitrary(g) {
            let api_key = loop {
                let key = i16::from(u8::arbitrary(g) % 75);
                if ![17, 18, 36].contains(&key) {
                    break key;
                }
            };
            Hostile::Request {
                api_key,
                version: i16::from(u8::arbitrary(g) % 14),
                body: Vec::arbitrary(g),
            }
        } else {
            Hostile::Garbage(Vec::arbitrary(g))
        }
    }
}

/// The broker under the property test (quickcheck takes plain functions).
static ADDRESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

#[test]
fn unauthenticated_connections_reach_no_request_handler() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_with_env(
        env!("CARGO_BIN_EXE_weir"),
        dir.path(),
        1,
        &[],
        &[("WEIR_KAFKA_LISTEN_PROTOCOL", "SASL_PLAINTEXT")],
    )
    .unwrap();
    let address = broker.kafka.clone();
    // Valid requests of every kind a client might try first: each closes the connection
    // unanswered.
    for (api_key, version, body) in [
        (3i16, 0i16, vec![0, 0, 0, 0]),             // Metadata v0, no topics
        (3, 1, vec![0xff, 0xff, 0xff, 0xff]),       // Metadata v1, all topics
        (0, 3, vec![0xff, 0xff, 0, 1, 0, 0, 0, 0]), // Produce
        (19, 2, vec![0, 0, 0, 0]),                  // CreateTopics
        (10, 0, vec![0, 1, b'g']),                  // FindCoordinator
    ] {
        let mut stream = connect(&address);
        stream.write_all(&frame(api_key, version, &body)).unwrap();
        assert!(
            closed_unanswered(&mut stream),
            "API {api_key} v{version} before authentication was answered"
        );
    }
    // A frame bigger than sasl_max_receive_bytes (512 KiB) is refused by its size alone.
    let mut stream = connect(&address);
    stream.write_all(&(1i32 << 20).to_be_bytes()).unwrap();
    assert!(
        closed_unanswered(&mut stream),
        "a 1 MiB frame before authentication"
    );
    ADDRESS.set(address.clone()).unwrap();
    fn property(hostile: Hostile) -> TestResult {
        let address = ADDRESS.get().unwrap();
        let bytes = match &hostile {
            Hostile::Request {
                api_key,
                version,
                body,
            } => frame(*api_key, *version, body),
            Hostile::Garbage(bytes) => bytes.clone(),
        };
        let mut stream = connect(address);
        let _ = stream.write_all(&bytes);
        if let Hostile::Request { .. } = hostile
            && !closed_unanswered(&mut stream)
        {
            return TestResult::error(format!("{hostile:?} was answered"));
        }
        drop(stream);
        TestResult::from_bool(serving(address))
    }
    QuickCheck::new()
        .tests(300)
        .quickcheck(property as fn(Hostile) -> TestResult);
    assert!(serving(&address));
    // Nothing reached a handler: every request counted is ApiVersions.
    let (_, metrics) = broker.http_get("/metrics").unwrap();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("weir_requests_total{"))
    {
        let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(
            count == 0.0 || line.contains("api=\"kafka_api_versions\""),
            "a request reached a handler before authentication: {line}"
        );
    }
}

// ---- connection limits -------------------------------------------------------------

/// A connection to `address` from the local address `from` (any 127.x.y.z is ours).
fn connect_from(from: [u8; 4], address: &str) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local = std::net::SocketAddr::from((from, 0));
    socket.bind(&local.into()).unwrap();
    let target: std::net::SocketAddr = address.parse().unwrap();
    socket.connect(&target.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Whether ApiVersions (v0: an empty body) is answered on `stream`.
fn answered(stream: &mut TcpStream) -> bool {
    if stream.write_all(&frame(18, 0, &[])).is_err() {
        return false;
    }
    let mut size = [0u8; 4];
    if stream.read_exact(&mut size).is_err() {
        return false;
    }
    let size = i32::from_be_bytes(size);
    let mut body = vec![0u8; size.max(0) as usize];
    size > 0 && stream.read_exact(&mut body).is_ok()
}

#[test]
fn connection_limits_close_new_connections_per_address_and_in_all() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_with_env(
        env!("CARGO_BIN_EXE_weir"),
        dir.path(),
        2,
        &[],
        &[
            ("WEIR_MAX_CONNECTIONS", "5"),
            ("WEIR_MAX_CONNECTIONS_PER_IP", "3"),
            (
                "WEIR_MAX_CONNECTIONS_PER_IP_OVERRIDES",
                "[\"127.0.0.2=10\"]",
            ),
        ],
    )
    .unwrap();
    // The listener is on 127.0.0.1; clients come from 127.0.0.1 and 127.0.0.2.
    let address = broker.kafka.clone();
    let mut first: Vec<TcpStream> = (0..3)
        .map(|_| connect_from([127, 0, 0, 1], &address))
        .collect();
    assert!(
        first.iter_mut().all(answered),
        "3 connections from one address"
    );
    let mut fourth = connect_from([127, 0, 0, 1], &address);
    assert!(
        !answered(&mut fourth),
        "a 4th from the same address was served"
    );
    // 127.0.0.2 may have 10, but the broker only 5 in all.
    let mut second: Vec<TcpStream> = (0..2)
        .map(|_| connect_from([127, 0, 0, 2], &address))
        .collect();
    assert!(
        second.iter_mut().all(answered),
        "127.0.0.2 under its override"
    );
    let mut sixth = connect_from([127, 0, 0, 2], &address);
    assert!(!answered(&mut sixth), "a 6th connection in all was served");
    // A closed connection gives its place back (once the broker has seen it close).
    drop(first.pop());
    let served_again = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        answered(&mut connect_from([127, 0, 0, 1], &address))
    });
    assert!(served_again, "the freed place was not given back");
    let (_, metrics) = broker.http_get("/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weir_connections_refused_total{") && !l.ends_with(" 0")),
        "refusals not counted"
    );
}

#[test]
fn the_connection_creation_rate_delays_accepting_and_loses_no_client() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_with_env(
        env!("CARGO_BIN_EXE_weir"),
        dir.path(),
        1,
        &[],
        &[("WEIR_MAX_CONNECTION_CREATION_RATE", "10")],
    )
    .unwrap();
    // 30 clients at once: the kernel's backlog holds them while the broker takes 10 a
    // second; every one is served in the end.
    let mut clients: Vec<TcpStream> = (0..30).map(|_| connect(&broker.kafka)).collect();
    for stream in &mut clients {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
    }
    assert!(
        clients.iter_mut().all(answered),
        "a delayed client was lost"
    );
    let (_, metrics) = broker.http_get("/metrics").unwrap();
    let throttled: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("weir_connections_throttled_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(throttled >= 1.0, "no accept was delayed: {throttled}");
}

/// With super users named, nobody else changes credentials: `weir user create` over the
/// native protocol (anonymous without a client certificate) is refused.
#[test]
fn only_super_users_change_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_with_env(
        env!("CARGO_BIN_EXE_weir"),
        dir.path(),
        1,
        &[],
        &[("WEIR_SUPER_USERS", "[\"User:admin\"]")],
    )
    .unwrap();
    let out = broker
        .cli(&["user", "create", "mallory", "--password", "pw"], None)
        .unwrap();
    assert!(!out.status.success(), "an anonymous client created a user");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("super_users"), "{stderr}");
    let listed = broker.cli(&["user", "list"], None).unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("mallory"));
}

// ---- re-authentication (KIP-368) ---------------------------------------------------

/// Reads one response frame; returns its body after the correlation id, or `None` when
/// the broker closed the connection instead.
fn response(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let size = i32::from_be_bytes(size);
    assert!((4..1 << 20).contains(&size), "response size {size}");
    let mut body = vec![0u8; size as usize];
    stream.read_exact(&mut body).ok()?;
    Some(body.split_off(4))
}

/// What SaslAuthenticate v0/v1 answered: the error code, and (v1) the session lifetime.
struct Authenticated {
    error_code: i16,
    session_lifetime_ms: Option<i64>,
}

/// SaslHandshake v1 for PLAIN, then one SaslAuthenticate of `version` (0 or 1: both
/// non-flexible) as `user`. `None` when the broker closed the connection unanswered.
fn log_in_plain(
    stream: &mut TcpStream,
    version: i16,
    user: &str,
    password: &str,
) -> Option<Authenticated> {
    let mechanism = b"PLAIN";
    let mut handshake = (mechanism.len() as i16).to_be_bytes().to_vec();
    handshake.extend_from_slice(mechanism);
    stream.write_all(&frame(17, 1, &handshake)).ok()?;
    let answer = response(stream)?;
    assert_eq!(i16::from_be_bytes([answer[0], answer[1]]), 0, "handshake");
    let token = format!("\0{user}\0{password}");
    let mut authenticate = (token.len() as i32).to_be_bytes().to_vec();
    authenticate.extend_from_slice(token.as_bytes());
    stream.write_all(&frame(36, version, &authenticate)).ok()?;
    let answer = response(stream)?;
    let error_code = i16::from_be_bytes([answer[0], answer[1]]);
    // error_message (nullable string), auth_bytes (bytes), then v1's session lifetime.
    let message_len = i16::from_be_bytes([answer[2], answer[3]]).max(0) as usize;
    let at = 4 + message_len;
    let auth_len = i32::from_be_bytes(answer[at..at + 4].try_into().unwrap()) as usize;
    let at = at + 4 + auth_len;
    let session_lifetime_ms =
        (version >= 1).then(|| i64::from_be_bytes(answer[at..at + 8].try_into().unwrap()));
    Some(Authenticated {
        error_code,
        session_lifetime_ms,
    })
}

/// Metadata v0 for no topics in particular: `Some` when answered.
fn metadata(stream: &mut TcpStream) -> Option<Vec<u8>> {
    stream.write_all(&frame(3, 0, &0i32.to_be_bytes())).ok()?;
    response(stream)
}

/// With `connections_max_reauth_ms`, a session ends: a client told the lifetime (v1) that
/// does not authenticate again is closed on at its next request, one that does keeps its
/// connection, as the same user only; a v0 client is neither told nor cut off.
#[test]
fn sessions_end_unless_the_client_authenticates_again() {
    const LIFETIME_MS: u64 = 700;
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_with_env(
        env!("CARGO_BIN_EXE_weir"),
        dir.path(),
        1,
        &[],
        &[
            ("WEIR_KAFKA_LISTEN_PROTOCOL", "SASL_PLAINTEXT"),
            ("WEIR_CONNECTIONS_MAX_REAUTH_MS", &LIFETIME_MS.to_string()),
            ("WEIR_SASL_FAILED_AUTHENTICATION_DELAY_MS", "10"),
        ],
    )
    .unwrap();
    for (user, password) in [("alice", "alice-pw"), ("bob", "bob-pw")] {
        let out = broker
            .cli(&["user", "create", user, "--password", password], None)
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let logged_in = |version| {
        let mut stream = connect(&broker.kafka);
        let answer = log_in_plain(&mut stream, version, "alice", "alice-pw").unwrap();
        assert_eq!(answer.error_code, 0);
        (stream, answer)
    };
    let (mut lapsing, answer) = logged_in(1);
    assert_eq!(answer.session_lifetime_ms, Some(LIFETIME_MS as i64));
    let (mut renewing, _) = logged_in(1);
    let (mut old_client, _) = logged_in(0);
    let (mut impostor, _) = logged_in(1);
    assert!(metadata(&mut lapsing).is_some());

    // Past half the lifetime: renew one session, try to become bob on another.
    std::thread::sleep(Duration::from_millis(LIFETIME_MS / 2 + 100));
    let renewed = log_in_plain(&mut renewing, 1, "alice", "alice-pw").unwrap();
    assert_eq!(renewed.error_code, 0);
    assert_eq!(renewed.session_lifetime_ms, Some(LIFETIME_MS as i64));
    let changed = log_in_plain(&mut impostor, 1, "bob", "bob-pw").unwrap();
    assert_eq!(changed.error_code, 58, "SASL_AUTHENTICATION_FAILED");
    assert!(
        closed_unanswered(&mut impostor),
        "a changed principal kept its connection"
    );

    // Past the first lifetime, within the renewed one.
    std::thread::sleep(Duration::from_millis(LIFETIME_MS / 2 + 100));
    assert!(
        metadata(&mut lapsing).is_none(),
        "a session that ended was served"
    );
    assert!(
        metadata(&mut renewing).is_some(),
        "a renewed session was cut off"
    );
    assert!(
        metadata(&mut old_client).is_some(),
        "a v0 client was cut off"
    );
    assert!(serving(&broker.kafka));
}
