//! Proves that bad input gets a clear error response or a closed connection, never a
//! crash or a stalled broker: oversized, truncated and garbage frames, unknown request
//! types, invalid flatbuffers, batches with a wrong CRC or magic, unknown partitions and
//! out-of-range offsets; and, with quickcheck, random bytes and mutated valid frames,
//! after each of which the broker still answers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use flatbuffers::FlatBufferBuilder;
use quickcheck::{QuickCheck, TestResult};
use weir_tests::broker::BrokerProcess;
use weir_wire::BatchBuilder;
use weir_wire::native::{self, schema};

/// A frame with `header` and `payload`.
fn frame(header: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = native::encode_prefix(header.len(), payload.len()).to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(payload);
    out
}

fn metadata_request(id: u64) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let body =
        schema::MetadataRequest::create(&mut b, &schema::MetadataRequestArgs { topics: None });
    let request = schema::Request::create(
        &mut b,
        &schema::RequestArgs {
            request_id: id,
            body_type: schema::RequestBody::MetadataRequest,
            body: Some(body.as_union_value()),
        },
    );
    b.finish(request, Some("WEIR"));
    frame(b.finished_data(), &[])
}

fn produce_request(id: u64, topic: &str, partition: i32, records: &[u8]) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let slice = schema::PayloadSlice::new(0, records.len() as u32);
    let entry = schema::ProducePartition::create(
        &mut b,
        &schema::ProducePartitionArgs {
            partition,
            records: Some(&slice),
        },
    );
    let partitions = b.create_vector(&[entry]);
    let name = b.create_string(topic);
    let topic = schema::ProduceTopic::create(
        &mut b,
        &schema::ProduceTopicArgs {
            name: Some(name),
            partitions: Some(partitions),
        },
    );
    let topics = b.create_vector(&[topic]);
    let body = schema::ProduceRequest::create(
        &mut b,
        &schema::ProduceRequestArgs {
            acks: schema::Acks::All,
            timeout_ms: 5000,
            topics: Some(topics),
            transactional_id: None,
        },
    );
    let request = schema::Request::create(
        &mut b,
        &schema::RequestArgs {
            request_id: id,
            body_type: schema::RequestBody::ProduceRequest,
            body: Some(body.as_union_value()),
        },
    );
    b.finish(request, Some("WEIR"));
    frame(b.finished_data(), records)
}

fn fetch_request(id: u64, topic: &str, offset: i64) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let entry = schema::FetchPartition::create(
        &mut b,
        &schema::FetchPartitionArgs {
            partition: 0,
            offset,
            max_bytes: 1 << 20,
        },
    );
    let partitions = b.create_vector(&[entry]);
    let name = b.create_string(topic);
    let topic = schema::FetchTopic::create(
        &mut b,
        &schema::FetchTopicArgs {
            name: Some(name),
            partitions: Some(partitions),
        },
    );
    let topics = b.create_vector(&[topic]);
    let body = schema::FetchRequest::create(
        &mut b,
        &schema::FetchRequestArgs {
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 1 << 20,
            topics: Some(topics),
            isolation: schema::Isolation::ReadUncommitted,
        },
    );
    let request = schema::Request::create(
        &mut b,
        &schema::RequestArgs {
            request_id: id,
            body_type: schema::RequestBody::FetchRequest,
            body: Some(body.as_union_value()),
        },
    );
    b.finish(request, Some("WEIR"));
    frame(b.finished_data(), &[])
}

fn connect(address: &str) -> TcpStream {
    let stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

/// Reads one response frame: (request id, error code, header bytes). `None` when the
/// broker closed the connection.
fn read_response(stream: &mut TcpStream) -> Option<(u64, schema::ErrorCode, Vec<u8>)> {
    let mut prefix = [0u8; 8];
    stream.read_exact(&mut prefix).ok()?;
    let prefix = native::decode_prefix(&prefix, 1 << 30).expect("a well-formed response prefix");
    let mut body = vec![0u8; prefix.remaining()];
    stream.read_exact(&mut body).expect("the whole response");
    let header = body[..prefix.header_length].to_vec();
    let response = native::parse_response(&header).expect("a valid response header");
    Some((response.request_id(), response.error(), header))
}

fn still_serves(address: &str) -> bool {
    let mut stream = connect(address);
    stream.write_all(&metadata_request(77)).is_ok()
        && read_response(&mut stream)
            .is_some_and(|(id, error, _)| id == 77 && error == schema::ErrorCode::None)
}

/// The per-partition error of a produce or fetch response.
fn partition_error(header: &[u8]) -> schema::ErrorCode {
    let response = native::parse_response(header).expect("response");
    if let Some(produce) = response.body_as_produce_response() {
        return produce
            .topics()
            .expect("topics")
            .get(0)
            .partitions()
            .expect("partitions")
            .get(0)
            .error();
    }
    let fetch = response.body_as_fetch_response().expect("fetch body");
    fetch
        .topics()
        .expect("topics")
        .get(0)
        .partitions()
        .expect("partitions")
        .get(0)
        .error()
}

#[test]
fn each_kind_of_bad_input_gets_a_clear_answer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(
        env!("CARGO_BIN_EXE_weir"),
        dir.path(),
        2,
        &["--config", "/dev/null"],
    )
    .expect("broker");
    broker
        .cli_ok(&["topic", "create", "t", "--partitions", "1"], None)
        .expect("create");
    let mut good = BatchBuilder::new(0);
    good.append(0, None, Some(b"v"), &[]);
    let good = good.build().to_vec();

    // Oversized frame: refused before anything is allocated, then closed.
    let mut stream = connect(&broker.native);
    stream
        .write_all(&native::encode_prefix(16, (1 << 30) - 100))
        .expect("write");
    let (id, error, _) = read_response(&mut stream).expect("an error response first");
    assert_eq!((id, error), (0, schema::ErrorCode::InvalidRequest));
    assert!(
        read_response(&mut stream).is_none(),
        "then the connection closes"
    );

    // Garbage header: error with request id 0, then closed.
    let mut stream = connect(&broker.native);
    stream
        .write_all(&frame(b"definitely not a flatbuffer", &[]))
        .expect("write");
    assert_eq!(
        read_response(&mut stream).map(|r| (r.0, r.1)),
        Some((0, schema::ErrorCode::InvalidRequest))
    );

    // Truncated frame, then the client goes away: the broker just closes.
    let mut stream = connect(&broker.native);
    let whole = metadata_request(1);
    stream.write_all(&whole[..whole.len() - 3]).expect("write");
    drop(stream);

    // Unknown request type: a valid flatbuffer whose union tag is unknown.
    let mut b = FlatBufferBuilder::new();
    let body = schema::ListGroupsRequest::create(&mut b, &schema::ListGroupsRequestArgs {});
    let request = schema::Request::create(
        &mut b,
        &schema::RequestArgs {
            request_id: 5,
            body_type: schema::RequestBody(99),
            body: Some(body.as_union_value()),
        },
    );
    b.finish(request, Some("WEIR"));
    let mut stream = connect(&broker.native);
    stream
        .write_all(&frame(b.finished_data(), &[]))
        .expect("write");
    assert_eq!(
        read_response(&mut stream).map(|r| (r.0, r.1)),
        Some((5, schema::ErrorCode::InvalidRequest))
    );

    // Batches: wrong CRC, wrong magic, unknown topic, partition out of range.
    let mut stream = connect(&broker.native);
    let mut bad_crc = good.clone();
    *bad_crc.last_mut().expect("bytes") ^= 1;
    let mut bad_magic = good.clone();
    bad_magic[16] = 1;
    let cases: [(Vec<u8>, schema::ErrorCode); 5] = [
        (
            produce_request(10, "t", 0, &bad_crc),
            schema::ErrorCode::CorruptBatch,
        ),
        (
            produce_request(11, "t", 0, &bad_magic),
            schema::ErrorCode::CorruptBatch,
        ),
        (
            produce_request(12, "nope", 0, &good),
            schema::ErrorCode::UnknownTopicOrPartition,
        ),
        (
            produce_request(13, "t", 7, &good),
            schema::ErrorCode::UnknownTopicOrPartition,
        ),
        (
            fetch_request(14, "t", -5),
            schema::ErrorCode::OffsetOutOfRange,
        ),
    ];
    for (request, expected) in cases {
        stream.write_all(&request).expect("write");
        let (_, error, header) = read_response(&mut stream).expect("a response");
        assert_eq!(
            error,
            schema::ErrorCode::None,
            "the request as a whole is fine"
        );
        assert_eq!(partition_error(&header), expected);
    }
    assert!(still_serves(&broker.native));
}

/// The broker and valid frames the property below mutates (quickcheck takes plain `fn`s).
static TARGET: std::sync::OnceLock<(String, Vec<Vec<u8>>)> = std::sync::OnceLock::new();

fn survives(random: Vec<u8>, pick: u8, mutations: Vec<(u16, u8)>) -> TestResult {
    let (address, valid) = TARGET.get().expect("broker started");
    let mut bytes = valid[usize::from(pick) % valid.len()].clone();
    for (position, value) in &mutations {
        let at = usize::from(*position) % bytes.len();
        bytes[at] = *value;
    }
    if mutations.is_empty() {
        bytes = random;
    }
    let mut stream = connect(address);
    let _ = stream.write_all(&bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Whatever comes back must be well-formed responses, until the broker closes.
    let mut answered = 0;
    while read_response(&mut stream).is_some() {
        answered += 1;
        if answered > 4 {
            return TestResult::failed();
        }
    }
    TestResult::from_bool(still_serves(address))
}

#[test]
fn random_bytes_and_mutated_frames_never_stop_the_broker() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker =
        BrokerProcess::start(env!("CARGO_BIN_EXE_weir"), dir.path(), 2, &[]).expect("broker");
    broker
        .cli_ok(&["topic", "create", "t", "--partitions", "2"], None)
        .expect("create");
    let mut good = BatchBuilder::new(0);
    good.append(0, Some(b"k"), Some(b"value"), &[]);
    let valid = vec![
        metadata_request(1),
        produce_request(2, "t", 1, &good.build()),
        fetch_request(3, "t", 0),
    ];
    TARGET
        .set((broker.native.clone(), valid))
        .expect("set once");
    QuickCheck::new()
        .tests(150)
        .max_tests(300)
        .quickcheck(survives as fn(Vec<u8>, u8, Vec<(u16, u8)>) -> TestResult);
}
