//! weir's native protocol: frames, and the flatbuffers schema in `wire/schema/weir.fbs`.
//!
//! ```text
//! frame := length: u32 BE | header_length: u32 BE | header | payload
//! ```
//!
//! `length` counts every byte after itself. `header` is a flatbuffer whose root is
//! `Request` or `Response`; `payload` holds record batches that the header refers to with
//! `PayloadSlice`s. Record bytes stay outside the flatbuffer so that a receiver can hand
//! them to storage, and a sender can write them from storage, without copying them.

use std::ops::Range;

use crate::WireError;

#[allow(
    unsafe_code,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unused_imports,
    dead_code,
    missing_debug_implementations,
    non_camel_case_types,
    mismatched_lifetime_syntaxes,
    unsafe_op_in_unsafe_fn
)]
#[rustfmt::skip]
mod generated;

/// The generated flatbuffers types (`Request`, `ProduceRequest`, ...).
pub use generated::weir::protocol as schema;

/// The protocol version this code speaks (see the handshake).
pub const PROTOCOL_VERSION: u16 = 1;

/// Bytes before the header: `length` and `header_length`.
pub const FRAME_PREFIX_BYTES: usize = 8;

/// The most a header may take; record bytes belong in the payload.
pub const HEADER_BYTES_MAX: usize = 1 << 20;

/// The lengths a frame's prefix announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePrefix {
    /// Bytes after the 4-byte length field: header length field, header and payload.
    pub length: usize,
    pub header_length: usize,
}

impl FramePrefix {
    /// Bytes that follow the 8-byte prefix.
    pub fn remaining(&self) -> usize {
        self.length - 4
    }

    pub fn payload_length(&self) -> usize {
        self.length - 4 - self.header_length
    }
}

/// Checks a frame's prefix against the limits before anything is allocated for it.
pub fn decode_prefix(
    prefix: &[u8; FRAME_PREFIX_BYTES],
    frame_bytes_max: usize,
) -> Result<FramePrefix, WireError> {
    let length = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    let header_length = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]) as usize;
    if length > frame_bytes_max {
        return Err(WireError::FrameTooLarge {
            size: length,
            max: frame_bytes_max,
        });
    }
    if length < 4 || header_length > length - 4 {
        return Err(WireError::InvalidFrame {
            reason: "header length exceeds the frame",
        });
    }
    if header_length == 0 || header_length > HEADER_BYTES_MAX {
        return Err(WireError::InvalidFrame {
            reason: "header length is zero or over 1 MiB",
        });
    }
    Ok(FramePrefix {
        length,
        header_length,
    })
}

/// The prefix of a frame with a header of `header_length` and `payload_length` bytes of
/// payload.
pub fn encode_prefix(header_length: usize, payload_length: usize) -> [u8; FRAME_PREFIX_BYTES] {
    let length = (4 + header_length + payload_length) as u32;
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    prefix[..4].copy_from_slice(&length.to_be_bytes());
    prefix[4..].copy_from_slice(&(header_length as u32).to_be_bytes());
    prefix
}

fn verifier_options() -> flatbuffers::VerifierOptions {
    flatbuffers::VerifierOptions {
        max_depth: 16,
        max_tables: 1_000_000,
        max_apparent_size: HEADER_BYTES_MAX * 4,
        ignore_missing_null_terminator: false,
    }
}

/// Verifies and opens a request header. Hostile bytes get an error, never a panic.
pub fn parse_request(header: &[u8]) -> Result<schema::Request<'_>, WireError> {
    flatbuffers::root_with_opts::<schema::Request>(&verifier_options(), header).map_err(|error| {
        WireError::InvalidFlatbuffer {
            reason: error.to_string(),
        }
    })
}

/// Verifies and opens a response header.
pub fn parse_response(header: &[u8]) -> Result<schema::Response<'_>, WireError> {
    flatbuffers::root_with_opts::<schema::Response>(&verifier_options(), header).map_err(|error| {
        WireError::InvalidFlatbuffer {
            reason: error.to_string(),
        }
    })
}

/// The byte range of `slice` within a payload of `payload_length` bytes.
pub fn payload_range(
    slice: &schema::PayloadSlice,
    payload_length: usize,
) -> Result<Range<usize>, WireError> {
    let start = slice.offset() as usize;
    let end = start + slice.length() as usize;
    if end > payload_length {
        return Err(WireError::InvalidFrame {
            reason: "payload slice outside the payload",
        });
    }
    Ok(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    #[test]
    fn prefixes_round_trip_and_limits_hold() {
        let prefix = encode_prefix(100, 4000);
        let decoded = decode_prefix(&prefix, 1 << 20).unwrap();
        assert_eq!(
            decoded,
            FramePrefix {
                length: 4104,
                header_length: 100
            }
        );
        assert_eq!(
            (decoded.remaining(), decoded.payload_length()),
            (4100, 4000)
        );
        assert!(matches!(
            decode_prefix(&prefix, 4000),
            Err(WireError::FrameTooLarge {
                size: 4104,
                max: 4000
            })
        ));
        assert!(decode_prefix(&encode_prefix(0, 10), 1 << 20).is_err());
        let mut lying = encode_prefix(100, 0);
        lying[4..].copy_from_slice(&200u32.to_be_bytes());
        assert!(decode_prefix(&lying, 1 << 20).is_err());
    }

    #[test]
    fn a_built_request_parses() {
        let mut builder = flatbuffers::FlatBufferBuilder::new();
        let name = builder.create_string("orders");
        let body = schema::CreateTopicRequest::create(
            &mut builder,
            &schema::CreateTopicRequestArgs {
                name: Some(name),
                partitions: 3,
                configs: None,
                replication_factor: -1,
            },
        );
        let request = schema::Request::create(
            &mut builder,
            &schema::RequestArgs {
                request_id: 7,
                body_type: schema::RequestBody::CreateTopicRequest,
                body: Some(body.as_union_value()),
            },
        );
        builder.finish(request, Some("WEIR"));
        let parsed = parse_request(builder.finished_data()).unwrap();
        assert_eq!(parsed.request_id(), 7);
        let create = parsed.body_as_create_topic_request().unwrap();
        assert_eq!((create.name(), create.partitions()), ("orders", 3));
    }

    /// The config requests appended to version 1 keep their union codes and Kafka's
    /// ConfigSource codes (docs/PROTOCOL.md states them), and round trip.
    #[test]
    fn config_requests_keep_their_codes_and_parse() {
        let codes = [
            (schema::RequestBody::DescribeTopicConfigsRequest.0, 11),
            (schema::RequestBody::AlterTopicConfigsRequest.0, 12),
            (schema::ResponseBody::DescribeTopicConfigsResponse.0, 11),
            (schema::ResponseBody::AlterTopicConfigsResponse.0, 12),
            (schema::ConfigSource::Unknown.0 as u8, 0),
            (schema::ConfigSource::Topic.0 as u8, 1),
            (schema::ConfigSource::Broker.0 as u8, 4),
            (schema::ConfigSource::Default.0 as u8, 5),
        ];
        for (code, expected) in codes {
            assert_eq!(code, expected);
        }
        let mut builder = flatbuffers::FlatBufferBuilder::new();
        let (key, value) = (
            builder.create_string("retention.ms"),
            builder.create_string("1000"),
        );
        let entry = schema::ConfigEntry::create(
            &mut builder,
            &schema::ConfigEntryArgs {
                key: Some(key),
                value: Some(value),
                source: schema::ConfigSource::Unknown,
            },
        );
        let set = builder.create_vector(&[entry]);
        let deleted = builder.create_string("segment.ms");
        let delete = builder.create_vector(&[deleted]);
        let name = builder.create_string("orders");
        let body = schema::AlterTopicConfigsRequest::create(
            &mut builder,
            &schema::AlterTopicConfigsRequestArgs {
                name: Some(name),
                set: Some(set),
                delete: Some(delete),
                validate_only: true,
            },
        );
        let request = schema::Request::create(
            &mut builder,
            &schema::RequestArgs {
                request_id: 9,
                body_type: schema::RequestBody::AlterTopicConfigsRequest,
                body: Some(body.as_union_value()),
            },
        );
        builder.finish(request, Some("WEIR"));
        let parsed = parse_request(builder.finished_data()).unwrap();
        let alter = parsed.body_as_alter_topic_configs_request().unwrap();
        let set: Vec<_> = alter
            .set()
            .unwrap()
            .iter()
            .map(|e| (e.key(), e.value(), e.source()))
            .collect();
        assert_eq!(
            (alter.name(), set, alter.validate_only()),
            (
                "orders",
                vec![("retention.ms", "1000", schema::ConfigSource::Unknown)],
                true
            )
        );
        assert_eq!(
            alter.delete().unwrap().iter().collect::<Vec<_>>(),
            ["segment.ms"]
        );
    }

    quickcheck! {
        fn random_headers_never_panic(bytes: Vec<u8>) -> bool {
            if let Ok(request) = parse_request(&bytes) {
                let _ = request.request_id();
                let _ = request.body_type();
            }
            let _ = parse_response(&bytes);
            true
        }

        fn random_prefixes_never_panic(bytes: (u64, u32)) -> bool {
            let mut prefix = [0u8; 8];
            prefix.copy_from_slice(&bytes.0.to_be_bytes());
            let _ = decode_prefix(&prefix, bytes.1 as usize);
            true
        }
    }
}
