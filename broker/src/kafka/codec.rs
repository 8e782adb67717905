//! Kafka frames: `i32 size | request header | request body`, decoded and encoded with the
//! `kafka-protocol` crate (vendored with bounded allocations, see `vendor/README.md`).
//!
//! Decoding is the first thing hostile bytes meet, so it never panics and never
//! allocates from a count alone: the frame size is checked before the frame is read,
//! the header is read only from a frame long enough to hold one, and the decoder runs
//! under `catch_unwind` as a last line of defence (a panic there would stop the shard).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Encodable, StrBytes, decode_request_header_from_buffer};

use super::versions;

/// The `i32` size before every frame.
pub const SIZE_PREFIX_BYTES: usize = 4;

/// The fixed part of every request header: api key, api version, correlation id.
pub const HEADER_FIXED_BYTES: usize = 8;

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    pub header: RequestHeader,
    pub api: ApiKey,
    pub body: RequestKind,
    /// The whole frame, which the body's byte fields are slices of.
    pub frame: Bytes,
}

impl Request {
    pub fn version(&self) -> i16 {
        self.header.request_api_version
    }
}

/// Why a frame could not become a `Request`, and what the connection should do.
#[derive(Debug)]
pub enum DecodeError {
    /// Nothing trustworthy to answer to (no header, unknown API): close the connection.
    Fatal(String),
    /// A version this broker does not serve. ApiVersions is answered (with version 0
    /// and `UNSUPPORTED_VERSION`, as Kafka does, so the client can pick another
    /// version); for other APIs the connection is closed, as Kafka does.
    UnsupportedVersion { header: RequestHeader, api: ApiKey },
    /// A supported API and version whose body does not decode: close the connection.
    Malformed {
        header: RequestHeader,
        api: ApiKey,
        reason: String,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Fatal(reason) => write!(f, "{reason}"),
            DecodeError::UnsupportedVersion { header, api } => write!(
                f,
                "{api:?} version {} is not supported (supported: {})",
                header.request_api_version,
                versions::describe(*api)
            ),
            DecodeError::Malformed {
                header,
                api,
                reason,
            } => write!(
                f,
                "malformed {api:?} v{} request: {reason}",
                header.request_api_version
            ),
        }
    }
}

/// Checks a frame's size prefix before anything is read or allocated for the frame.
/// The size of a bare SASL token (after a version 0 SaslHandshake): no header, any size
/// up to `max_bytes`.
pub fn token_size(prefix: [u8; SIZE_PREFIX_BYTES], max_bytes: usize) -> Result<usize, String> {
    let size = i32::from_be_bytes(prefix);
    match usize::try_from(size) {
        Ok(size) if size <= max_bytes => Ok(size),
        _ => Err(format!(
            "SASL token of {size} bytes (the limit is {max_bytes})"
        )),
    }
}

pub fn frame_size(prefix: [u8; SIZE_PREFIX_BYTES], max_bytes: usize) -> Result<usize, String> {
    let size = i32::from_be_bytes(prefix);
    let size = usize::try_from(size).map_err(|_| format!("negative frame size {size}"))?;
    if size < HEADER_FIXED_BYTES {
        return Err(format!(
            "frame of {size} bytes cannot hold a request header"
        ));
    }
    if size > max_bytes {
        return Err(format!(
            "frame of {size} bytes exceeds the limit of {max_bytes} (frame_bytes_max)"
        ));
    }
    Ok(size)
}

/// Decodes one frame (without its size prefix). Record batches in a produce request stay
/// slices of `frame`.
pub fn decode(frame: Bytes) -> Result<Request, DecodeError> {
    if frame.len() < HEADER_FIXED_BYTES {
        return Err(DecodeError::Fatal(format!(
            "frame of {} bytes cannot hold a request header",
            frame.len()
        )));
    }
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let Ok(api) = ApiKey::try_from(api_key) else {
        return Err(DecodeError::Fatal(format!("unknown API key {api_key}")));
    };
    let whole = frame.clone();
    let guarded = std::panic::catch_unwind(move || {
        let mut buf = frame;
        let mut header = decode_request_header_from_buffer(&mut buf)
            .map_err(|e| DecodeError::Fatal(format!("malformed request header: {e}")))?;
        // The header outlives the body; owning its few bytes leaves the frame to the
        // body alone, so a produce request can cut its batches out without a copy.
        header.client_id = header
            .client_id
            .map(|id| StrBytes::from_string(id.as_str().to_string()));
        header.unknown_tagged_fields.clear();
        if !versions::supports(api, header.request_api_version) {
            return Err(DecodeError::UnsupportedVersion { header, api });
        }
        match RequestKind::decode(api, &mut buf, header.request_api_version) {
            Ok(body) => Ok(Request {
                header,
                api,
                body,
                frame: whole,
            }),
            Err(error) => Err(DecodeError::Malformed {
                header,
                api,
                reason: format!("{error:#}"),
            }),
        }
    });
    guarded.unwrap_or_else(|_| {
        Err(DecodeError::Fatal(format!(
            "the {api:?} decoder failed on this frame"
        )))
    })
}

/// Encodes a whole response frame: size prefix, header, body.
pub fn encode(
    correlation_id: i32,
    api: ApiKey,
    version: i16,
    body: &ResponseKind,
) -> anyhow::Result<BytesMut> {
    let mut out = BytesMut::with_capacity(256);
    out.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header.encode(&mut out, api.response_header_version(version))?;
    body.encode(&mut out, version)?;
    let size = i32::try_from(out.len() - SIZE_PREFIX_BYTES)?;
    out[..SIZE_PREFIX_BYTES].copy_from_slice(&size.to_be_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::ProduceRequest;
    use kafka_protocol::protocol::encode_request_header_into_buffer;

    fn frame(api: ApiKey, version: i16, body: &impl Encodable) -> Bytes {
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(7);
        let mut out = BytesMut::new();
        encode_request_header_into_buffer(&mut out, &header).unwrap();
        body.encode(&mut out, version).unwrap();
        out.freeze()
    }

    #[test]
    fn short_and_oversized_frames_are_refused_before_reading() {
        assert!(frame_size(4i32.to_be_bytes(), 1 << 20).is_err());
        assert!(frame_size((-1i32).to_be_bytes(), 1 << 20).is_err());
        assert!(frame_size((2i32 << 20).to_be_bytes(), 1 << 20).is_err());
        assert_eq!(frame_size(100i32.to_be_bytes(), 1 << 20), Ok(100));
    }

    #[test]
    fn a_produce_request_decodes_with_its_header() {
        let request = decode(frame(ApiKey::Produce, 9, &ProduceRequest::default())).unwrap();
        assert_eq!((request.api, request.version()), (ApiKey::Produce, 9));
        assert_eq!(request.header.correlation_id, 7);
    }

    #[test]
    fn unknown_keys_and_versions_are_told_apart() {
        let mut unknown =
            BytesMut::from(&frame(ApiKey::Produce, 9, &ProduceRequest::default())[..]);
        unknown[..2].copy_from_slice(&999i16.to_be_bytes());
        assert!(matches!(
            decode(unknown.freeze()),
            Err(DecodeError::Fatal(_))
        ));
        let old = frame(ApiKey::Produce, 9, &ProduceRequest::default());
        let mut old = BytesMut::from(&old[..]);
        old[2..4].copy_from_slice(&1i16.to_be_bytes());
        assert!(matches!(
            decode(old.freeze()),
            Err(DecodeError::UnsupportedVersion { .. })
        ));
    }

    /// The frame that made the unpatched decoder reserve tens of gigabytes: a produce
    /// request whose topic array claims 2^31 - 1 entries.
    #[test]
    fn huge_counts_in_tiny_frames_are_errors() {
        let mut out = BytesMut::new();
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Produce as i16)
            .with_request_api_version(3)
            .with_correlation_id(1);
        encode_request_header_into_buffer(&mut out, &header).unwrap();
        out.put_i16(-1); // transactional id
        out.put_i16(1); // acks
        out.put_i32(1000); // timeout
        out.put_i32(i32::MAX); // topic count
        assert!(matches!(
            decode(out.freeze()),
            Err(DecodeError::Malformed { .. })
        ));
    }

    quickcheck::quickcheck! {
        fn random_frames_never_panic(api: i16, version: i16, body: Vec<u8>) -> bool {
            let mut out = BytesMut::new();
            out.put_i16(api.rem_euclid(80));
            out.put_i16(version.rem_euclid(20));
            out.put_i32(1);
            out.put_slice(&body);
            let _ = decode(out.freeze());
            true
        }
    }
}
