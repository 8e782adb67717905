//! Proves that loadgen's verification fails loudly when a broker drops, duplicates or
//! reorders messages, and passes when it does not. The broker here is a deliberately
//! faulty in-memory stand-in speaking the native protocol: real weir never misbehaves on
//! purpose, so this is the one place a fake broker is the right tool.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use flatbuffers::FlatBufferBuilder;
use weir_loadgen::Config;
use weir_wire::native::{self, schema};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Drop,
    Duplicate,
    Reorder,
}

/// The stand-in broker's single partition: stored batches with their base offsets.
#[derive(Default)]
struct Partition {
    batches: Vec<(i64, Vec<u8>)>,
    next: i64,
}

fn respond(
    stream: &mut TcpStream,
    id: u64,
    body_type: schema::ResponseBody,
    build: impl FnOnce(&mut FlatBufferBuilder) -> flatbuffers::WIPOffset<flatbuffers::UnionWIPOffset>,
    payload: &[u8],
) {
    let mut b = FlatBufferBuilder::new();
    let body = build(&mut b);
    let response = schema::Response::create(
        &mut b,
        &schema::ResponseArgs {
            request_id: id,
            error: schema::ErrorCode::None,
            error_message: None,
            body_type,
            body: Some(body),
        },
    );
    b.finish(response, Some("WEIR"));
    let mut frame = native::encode_prefix(b.finished_data().len(), payload.len()).to_vec();
    frame.extend_from_slice(b.finished_data());
    frame.extend_from_slice(payload);
    let _ = stream.write_all(&frame);
}

/// Fetch answer: every batch at or after `offset`, with the fault applied to the third
/// stored batch (index 2): left out, sent twice, or sent after the fourth.
fn fetch_payload(partition: &Partition, offset: i64, fault: Fault) -> Vec<u8> {
    let mut chosen: Vec<(usize, &Vec<u8>)> = Vec::new();
    for (index, (base, batch)) in partition.batches.iter().enumerate() {
        let last = base
            + i64::from(
                weir_wire::BatchHeader::parse(batch)
                    .expect("stored batch")
                    .last_offset_delta,
            );
        if last < offset {
            continue;
        }
        match (fault, index) {
            (Fault::Drop, 2) => continue,
            (Fault::Duplicate, 2) => chosen.extend([(index, batch), (index, batch)]),
            // Hold the third batch back until the fourth exists, then send them swapped.
            (Fault::Reorder, 2) if partition.batches.len() < 4 => break,
            _ => chosen.push((index, batch)),
        }
    }
    let third = chosen.iter().position(|(i, _)| *i == 2);
    let fourth = chosen.iter().position(|(i, _)| *i == 3);
    if let (Fault::Reorder, Some(third), Some(fourth)) = (fault, third, fourth) {
        chosen.swap(third, fourth);
    }
    chosen
        .into_iter()
        .flat_map(|(_, batch)| batch.iter().copied())
        .collect()
}

fn serve(mut stream: TcpStream, state: Arc<Mutex<Partition>>, fault: Fault) {
    loop {
        let mut prefix = [0u8; 8];
        if stream.read_exact(&mut prefix).is_err() {
            return;
        }
        let prefix = native::decode_prefix(&prefix, 1 << 30).expect("prefix");
        let mut body = vec![0u8; prefix.remaining()];
        stream.read_exact(&mut body).expect("frame");
        let (header, payload) = body.split_at(prefix.header_length);
        let request = native::parse_request(header).expect("request");
        let id = request.request_id();
        use schema::RequestBody as R;
        use schema::ResponseBody as S;
        match request.body_type() {
            R::HandshakeRequest => respond(
                &mut stream,
                id,
                S::HandshakeResponse,
                |b| {
                    schema::HandshakeResponse::create(
                        b,
                        &schema::HandshakeResponseArgs {
                            version: 1,
                            ..Default::default()
                        },
                    )
                    .as_union_value()
                },
                &[],
            ),
            R::MetadataRequest => respond(
                &mut stream,
                id,
                S::MetadataResponse,
                |b| {
                    let name = b.create_string("verify");
                    let partition =
                        schema::PartitionInfo::create(b, &schema::PartitionInfoArgs::default());
                    let partitions = b.create_vector(&[partition]);
                    let topic = schema::TopicInfo::create(
                        b,
                        &schema::TopicInfoArgs {
                            name: Some(name),
                            partitions: Some(partitions),
                            ..Default::default()
                        },
                    );
                    let topics = b.create_vector(&[topic]);
                    schema::MetadataResponse::create(
                        b,
                        &schema::MetadataResponseArgs {
                            brokers: None,
                            topics: Some(topics),
                        },
                    )
                    .as_union_value()
                },
                &[],
            ),
            R::ListOffsetsRequest => {
                let earliest = request
                    .body_as_list_offsets_request()
                    .and_then(|r| r.topics())
                    .is_some_and(|t| {
                        t.get(0).partitions().expect("partitions").get(0).spec()
                            == schema::OffsetSpec::Earliest
                    });
                let next = if earliest {
                    0
                } else {
                    state.lock().expect("state").next
                };
                respond(
                    &mut stream,
                    id,
                    S::ListOffsetsResponse,
                    |b| {
                        let result = schema::ListOffsetsPartitionResult::create(
                            b,
                            &schema::ListOffsetsPartitionResultArgs {
                                offset: next,
                                ..Default::default()
                            },
                        );
                        let partitions = b.create_vector(&[result]);
                        let name = b.create_string("verify");
                        let topic = schema::ListOffsetsTopicResult::create(
                            b,
                            &schema::ListOffsetsTopicResultArgs {
                                name: Some(name),
                                partitions: Some(partitions),
                            },
                        );
                        let topics = b.create_vector(&[topic]);
                        schema::ListOffsetsResponse::create(
                            b,
                            &schema::ListOffsetsResponseArgs {
                                topics: Some(topics),
                            },
                        )
                        .as_union_value()
                    },
                    &[],
                );
            }
            R::ProduceRequest => {
                let mut batch = payload.to_vec();
                let base = {
                    let mut partition = state.lock().expect("state");
                    let base = partition.next;
                    weir_wire::batch::assign_offset_and_epoch(&mut batch, base, 0);
                    partition.next = weir_wire::BatchHeader::parse(&batch)
                        .expect("batch")
                        .next_offset();
                    partition.batches.push((base, batch));
                    base
                };
                respond(
                    &mut stream,
                    id,
                    S::ProduceResponse,
                    |b| {
                        let result = schema::ProducePartitionResult::create(
                            b,
                            &schema::ProducePartitionResultArgs {
                                base_offset: base,
                                ..Default::default()
                            },
                        );
                        let partitions = b.create_vector(&[result]);
                        let name = b.create_string("verify");
                        let topic = schema::ProduceTopicResult::create(
                            b,
                            &schema::ProduceTopicResultArgs {
                                name: Some(name),
                                partitions: Some(partitions),
                            },
                        );
                        let topics = b.create_vector(&[topic]);
                        schema::ProduceResponse::create(
                            b,
                            &schema::ProduceResponseArgs {
                                topics: Some(topics),
                            },
                        )
                        .as_union_value()
                    },
                    &[],
                );
            }
            R::FetchRequest => {
                let fetch = request.body_as_fetch_request().expect("fetch");
                let offset = fetch
                    .topics()
                    .expect("topics")
                    .get(0)
                    .partitions()
                    .expect("partitions")
                    .get(0)
                    .offset();
                if fetch.max_wait_ms() > 0 && offset >= state.lock().expect("state").next {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                let records = fetch_payload(&state.lock().expect("state"), offset, fault);
                respond(
                    &mut stream,
                    id,
                    S::FetchResponse,
                    |b| {
                        let slice = schema::PayloadSlice::new(0, records.len() as u32);
                        let result = schema::FetchPartitionResult::create(
                            b,
                            &schema::FetchPartitionResultArgs {
                                records: Some(&slice),
                                ..Default::default()
                            },
                        );
                        let partitions = b.create_vector(&[result]);
                        let name = b.create_string("verify");
                        let topic = schema::FetchTopicResult::create(
                            b,
                            &schema::FetchTopicResultArgs {
                                name: Some(name),
                                partitions: Some(partitions),
                            },
                        );
                        let topics = b.create_vector(&[topic]);
                        schema::FetchResponse::create(
                            b,
                            &schema::FetchResponseArgs {
                                topics: Some(topics),
                            },
                        )
                        .as_union_value()
                    },
                    &records,
                );
            }
            other => panic!("the stand-in broker does not serve {other:?}"),
        }
    }
}

/// Starts the stand-in broker; its partition lives as long as the test process.
fn start_broker(fault: Fault) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let state = Arc::new(Mutex::new(Partition::default()));
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let state = state.clone();
            std::thread::spawn(move || serve(stream, state, fault));
        }
    });
    address
}

fn run_against(fault: Fault) -> weir_loadgen::Report {
    weir_loadgen::run(config(start_broker(fault))).expect("loadgen ran")
}

fn config(address: String) -> Config {
    Config {
        brokers: address,
        protocol: weir_loadgen::Protocol::Native,
        topic: "verify".into(),
        topics: 1,
        partitions: 1,
        message_bytes: 100,
        message_bytes_max: None,
        acks: weir_loadgen::AcksArg::All,
        rate_mb_s: None,
        duration_s: 30.0,
        messages: Some(200),
        warmup_s: 0.0,
        producers: 1,
        consumers: 1,
        compression: "none".into(),
        batch_bytes: 1000,
        linger_ms: 1.0,
        in_flight: 1,
        key_cardinality: 0,
        threads: 1,
        drain_timeout_s: 2.0,
        json: false,
        quiet: true,
        topic_configs: vec![],
        from_beginning: false,
        no_read_back: false,
        idempotent: false,
        transaction_messages: None,
    }
}

#[test]
fn a_faithful_broker_passes() {
    let report = run_against(Fault::None);
    assert!(report.ok, "{}", report.table());
    assert_eq!((report.messages, report.consumed), (200, 200));
}

#[test]
fn a_dropped_batch_is_reported_lost() {
    let report = run_against(Fault::Drop);
    assert!(!report.ok && report.lost > 0, "{}", report.table());
}

#[test]
fn a_duplicated_batch_is_reported() {
    let report = run_against(Fault::Duplicate);
    assert!(!report.ok && report.duplicates > 0, "{}", report.table());
}

#[test]
fn reordered_batches_are_reported() {
    let report = run_against(Fault::Reorder);
    assert!(!report.ok && report.out_of_order > 0, "{}", report.table());
}

/// Without consumers, loadgen reads everything back after producing: a broker that lost
/// a batch is caught then, and a faithful one passes.
#[test]
fn without_consumers_the_read_back_verifies() {
    for (fault, ok) in [(Fault::None, true), (Fault::Drop, false)] {
        let report = weir_loadgen::run(Config {
            consumers: 0,
            ..config(start_broker(fault))
        })
        .expect("loadgen ran");
        assert!(report.verified, "{}", report.table());
        assert_eq!(report.ok, ok, "{fault:?}: {}", report.table());
        assert_eq!(report.lost > 0, !ok, "{}", report.table());
    }
}

/// A catch-up read of stored data (no producers) expects a message at every offset from
/// the earliest to the log end: a broker that skips a stored batch fails it.
#[test]
fn a_catch_up_read_that_skips_stored_batches_fails() {
    for (fault, ok) in [(Fault::None, true), (Fault::Drop, false)] {
        let address = start_broker(fault);
        let unverified = weir_loadgen::run(Config {
            consumers: 0,
            no_read_back: true,
            ..config(address.clone())
        })
        .expect("loadgen produced");
        assert!(unverified.ok && !unverified.verified);
        assert!(unverified.table().contains("NOT VERIFIED"));
        let report = weir_loadgen::run(Config {
            producers: 0,
            from_beginning: true,
            ..config(address)
        })
        .expect("loadgen read");
        assert_eq!(report.ok, ok, "{fault:?}: {}", report.table());
        assert!(report.consumed > 0, "{}", report.table());
    }
}
