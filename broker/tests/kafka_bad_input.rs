//! Hostile input on the Kafka port: each bad request gets a proper error or a closed
//! connection for that client only, never a crash, a hang or a huge allocation. After
//! each, a new connection's ApiVersions is still answered. With quickcheck: random bytes
//! and mutated valid requests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use quickcheck::{QuickCheck, TestResult};
use weir_tests::broker::BrokerProcess;

fn connect(address: &str) -> TcpStream {
    let stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

fn frame(api: ApiKey, version: i16, header_version: i16, body: &[u8]) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("bad-input")));
    let mut out = BytesMut::new();
    header.encode(&mut out, header_version).unwrap();
    out.extend_from_slice(body);
    let mut framed = (out.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&out);
    framed
}

fn api_versions_frame(version: i16) -> Vec<u8> {
    let mut body = BytesMut::new();
    ApiVersionsRequest::default()
        .encode(&mut body, version.min(4))
        .unwrap();
    frame(
        ApiKey::ApiVersions,
        version,
        ApiKey::ApiVersions.request_header_version(version.min(4)),
        &body,
    )
}

/// Reads one response frame, or None if the broker closed the connection.
fn read_frame(stream: &mut TcpStream) -> Option<Bytes> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(Bytes::from(body))
}

/// The connection was closed by the broker (EOF, or reset), not left hanging.
fn assert_closed(stream: &mut TcpStream, what: &str) {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("{what}: expected the connection closed, got {other:?}"),
    }
}

/// A fresh connection is still served.
fn assert_serving(address: &str) {
    let mut stream = connect(address);
    stream.write_all(&api_versions_frame(3)).unwrap();
    let started = std::time::Instant::now();
    let mut response = read_frame(&mut stream).unwrap_or_else(|| {
        panic!(
            "ApiVersions on a fresh connection to {address} not answered: closed or timed out \
             after {:?}",
            started.elapsed()
        )
    });
    ResponseHeader::decode(&mut response, 0).unwrap();
    let decoded = ApiVersionsResponse::decode(&mut response, 3).unwrap();
    assert_eq!(decoded.error_code, 0);
}

#[test]
fn each_kind_of_bad_kafka_request_gets_an_error_or_a_closed_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(env!("CARGO_BIN_EXE_weir"), dir.path(), 2, &[]).unwrap();
    let address = broker.kafka.clone();

    // ApiVersions of a version from the future: UNSUPPORTED_VERSION in a v0 response, with
    // the supported table, and the connection stays usable.
    let mut stream = connect(&address);
    stream.write_all(&api_versions_frame(99)).unwrap();
    let mut response = read_frame(&mut stream).expect("answered");
    ResponseHeader::decode(&mut response, 0).unwrap();
    let decoded = ApiVersionsResponse::decode(&mut response, 0).unwrap();
    assert_eq!(decoded.error_code, 35, "UNSUPPORTED_VERSION");
    assert!(!decoded.api_keys.is_empty());
    stream.write_all(&api_versions_frame(3)).unwrap();
    assert!(read_frame(&mut stream).is_some(), "still usable");

    // Produce v0 (the old message format, an unadvertised version of a served API):
    // closed, as Kafka does.
    let mut stream = connect(&address);
    stream
        .write_all(&frame(ApiKey::Produce, 0, 1, &[0, 0, 0, 0, 0, 0, 0, 0]))
        .unwrap();
    assert_closed(&mut stream, "Produce v0");
    // An API weir does not serve, whose response has a request-wide error: answered
    // UNSUPPORTED_VERSION in its own response, and the connection stays usable.
    let mut stream = connect(&address);
    stream
        .write_all(&frame(ApiKey::CreateDelegationToken, 1, 1, &[0; 16]))
        .unwrap();
    let mut response = read_frame(&mut stream).expect("CreateDelegationToken answered");
    let header = ResponseHeader::decode(&mut response, 0).unwrap();
    assert_eq!(header.correlation_id, 7);
    let token =
        kafka_protocol::messages::CreateDelegationTokenResponse::decode(&mut response, 1).unwrap();
    assert_eq!(token.error_code, 35, "UNSUPPORTED_VERSION");
    stream.write_all(&api_versions_frame(3)).unwrap();
    assert!(read_frame(&mut stream).is_some(), "still usable");
    // One whose response has only per-item errors (ElectLeaders v0): closed.
    let mut stream = connect(&address);
    stream
        .write_all(&frame(ApiKey::ElectLeaders, 0, 1, &[0; 16]))
        .unwrap();
    assert_closed(&mut stream, "ElectLeaders");
    assert_serving(&address);

    // The 25-byte Produce v9 whose topic array claims four billion entries: the crate
    // would reserve tens of GB for it before the vendored bounds.
    let mut body = vec![0u8]; // transactional id: null
    body.extend_from_slice(&(-1i16).to_be_bytes()); // acks
    body.extend_from_slice(&30_000i32.to_be_bytes()); // timeout
    body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // topic count, unsigned varint
    let mut stream = connect(&address);
    stream
        .write_all(&frame(ApiKey::Produce, 9, 2, &body))
        .unwrap();
    assert_closed(&mut stream, "huge array count");
    assert_serving(&address);

    // An acks=0 produce that is refused (no such topic) has no response to say so: the
    // connection is closed, as Kafka's broker does, so the client notices.
    let topic = kafka_protocol::messages::produce_request::TopicProduceData::default()
        .with_name(kafka_protocol::messages::TopicName(
            StrBytes::from_static_str("no-such-topic"),
        ))
        .with_partition_data(vec![
            kafka_protocol::messages::produce_request::PartitionProduceData::default(),
        ]);
    let mut body = BytesMut::new();
    kafka_protocol::messages::ProduceRequest::default()
        .with_acks(0)
        .with_timeout_ms(1000)
        .with_topic_data(vec![topic])
        .encode(&mut body, 9)
        .unwrap();
    let mut stream = connect(&address);
    stream
        .write_all(&frame(ApiKey::Produce, 9, 2, &body))
        .unwrap();
    assert_closed(&mut stream, "a refused acks=0 produce");
    assert_serving(&address);

    // A size prefix over the frame limit, a negative one, and one shorter than a header.
    for prefix in [i32::MAX, -5, 3] {
        let mut stream = connect(&address);
        stream.write_all(&prefix.to_be_bytes()).unwrap();
        stream.write_all(&[0u8; 64]).unwrap();
        assert_closed(&mut stream, &format!("size prefix {prefix}"));
    }

    // A frame cut short: the broker waits for the rest, then the client goes away.
    let mut stream = connect(&address);
    let whole = api_versions_frame(3);
    stream.write_all(&whole[..whole.len() - 3]).unwrap();
    drop(stream);

    // A request for a real API whose body is garbage: closed.
    let mut stream = connect(&address);
    stream
        .write_all(&frame(ApiKey::Metadata, 12, 2, &[0xff; 40]))
        .unwrap();
    assert_closed(&mut stream, "garbage Metadata body");
    assert_serving(&address);
}

/// The broker's Kafka address and a valid request, for the property below.
static TARGET: std::sync::OnceLock<(String, Vec<u8>)> = std::sync::OnceLock::new();

fn bad_request_is_survived(
    flips: Vec<(usize, u8)>,
    garbage: Vec<u8>,
    use_garbage: bool,
) -> TestResult {
    let (address, valid) = TARGET.get().expect("set by the test");
    {
        let mut request = if use_garbage {
            let mut framed = (garbage.len() as i32).to_be_bytes().to_vec();
            framed.extend_from_slice(&garbage);
            framed
        } else {
            let mut mutated = valid.to_vec();
            for (at, byte) in &flips {
                // Leave the size prefix alone so the frame is read whole.
                let at = 4 + at % (mutated.len() - 4);
                mutated[at] = *byte;
            }
            mutated
        };
        if request.len() > 4096 {
            return TestResult::discard();
        }
        let mut stream = connect(address);
        let _ = stream.write_all(&request);
        request.clear();
        // The frame is whole, so the broker must answer it or close the connection.
        let mut sink = [0u8; 4096];
        match stream.read(&mut sink) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("no answer and no close: {e}"),
        }
        assert_serving(address);
        TestResult::passed()
    }
}

#[test]
fn random_and_mutated_kafka_requests_never_stop_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(env!("CARGO_BIN_EXE_weir"), dir.path(), 1, &[]).unwrap();
    let mut metadata = BytesMut::new();
    MetadataRequest::default()
        .with_topics(None)
        .encode(&mut metadata, 12)
        .unwrap();
    let valid = frame(ApiKey::Metadata, 12, 2, &metadata);
    TARGET.set((broker.kafka.clone(), valid)).unwrap();
    QuickCheck::new()
        .tests(150)
        .quickcheck(bad_request_is_survived as fn(Vec<(usize, u8)>, Vec<u8>, bool) -> TestResult);
}
