//! The codecs of compressed record batches, as Kafka frames them: gzip, snappy (in the
//! xerial framing Java's producer writes; raw snappy is also read), LZ4 (the LZ4 frame
//! format) and zstd. The codecs themselves are the maintained crates'; this module adds
//! Kafka's framing and a bound on how much a batch may decompress to, so that a small
//! hostile batch cannot make a large allocation.

use std::io::{Read, Write};

use crate::WireError;
use crate::batch::Compression;

/// xerial's snappy stream header: magic, version 1, compatible version 1.
const XERIAL_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// Uncompressed bytes per xerial block, as Java's SnappyOutputStream writes them.
const XERIAL_BLOCK_BYTES: usize = 32 * 1024;

fn failed(codec: Compression, reason: impl std::fmt::Display) -> WireError {
    WireError::Codec {
        codec: codec.name(),
        reason: reason.to_string(),
    }
}

/// Decompresses a batch's records section, refusing output longer than `max_bytes`.
pub fn decompress(codec: Compression, data: &[u8], max_bytes: usize) -> Result<Vec<u8>, WireError> {
    let out = match codec {
        Compression::None => {
            if data.len() > max_bytes {
                return Err(too_large(codec, max_bytes));
            }
            return Ok(data.to_vec());
        }
        Compression::Gzip => read_bounded(codec, flate2::read::GzDecoder::new(data), max_bytes)?,
        Compression::Lz4 => {
            read_bounded(codec, lz4_flex::frame::FrameDecoder::new(data), max_bytes)?
        }
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(data).map_err(|e| failed(codec, e))?;
            read_bounded(codec, decoder, max_bytes)?
        }
        Compression::Snappy => snappy_decompress(data, max_bytes)?,
    };
    Ok(out)
}

/// Compresses a batch's records section with `codec`, at the codec's default level.
pub fn compress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, WireError> {
    let write_all = |mut writer: Box<dyn Write + '_>| -> std::io::Result<()> {
        writer.write_all(data)?;
        writer.flush()
    };
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(data).map_err(|e| failed(codec, e))?;
            encoder.finish().map_err(|e| failed(codec, e))
        }
        Compression::Lz4 => {
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut encoder = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
            write_all(Box::new(&mut encoder)).map_err(|e| failed(codec, e))?;
            encoder.finish().map_err(|e| failed(codec, e))
        }
        Compression::Zstd => zstd::bulk::compress(data, zstd::DEFAULT_COMPRESSION_LEVEL)
            .map_err(|e| failed(codec, e)),
        Compression::Snappy => {
            let mut out = XERIAL_HEADER.to_vec();
            let mut encoder = snap::raw::Encoder::new();
            for block in data.chunks(XERIAL_BLOCK_BYTES) {
                let compressed = encoder.compress_vec(block).map_err(|e| failed(codec, e))?;
                out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
                out.extend_from_slice(&compressed);
            }
            Ok(out)
        }
    }
}

fn too_large(codec: Compression, max_bytes: usize) -> WireError {
    failed(
        codec,
        format!("decompresses to more than {max_bytes} bytes"),
    )
}

/// Reads a decoder to its end, failing once it yields more than `max_bytes`.
fn read_bounded(
    codec: Compression,
    reader: impl Read,
    max_bytes: usize,
) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    reader
        .take(max_bytes as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| failed(codec, e))?;
    if out.len() > max_bytes {
        return Err(too_large(codec, max_bytes));
    }
    Ok(out)
}

/// Snappy as Kafka clients write it: xerial framing (header, then blocks each prefixed
/// with its big-endian compressed length), or raw snappy when the header is absent.
fn snappy_decompress(data: &[u8], max_bytes: usize) -> Result<Vec<u8>, WireError> {
    let codec = Compression::Snappy;
    let mut decoder = snap::raw::Decoder::new();
    let mut raw = |block: &[u8], out: &mut Vec<u8>| -> Result<(), WireError> {
        let len = snap::raw::decompress_len(block).map_err(|e| failed(codec, e))?;
        if out.len() + len > max_bytes {
            return Err(too_large(codec, max_bytes));
        }
        let start = out.len();
        out.resize(start + len, 0);
        decoder
            .decompress(block, &mut out[start..])
            .map_err(|e| failed(codec, e))?;
        Ok(())
    };
    let mut out = Vec::new();
    let Some(mut rest) = data.strip_prefix(XERIAL_HEADER.as_slice()) else {
        raw(data, &mut out)?;
        return Ok(out);
    };
    while !rest.is_empty() {
        let (len, after) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| failed(codec, "truncated xerial block length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let block = after
            .get(..len)
            .ok_or_else(|| failed(codec, "xerial block extends past the data"))?;
        raw(block, &mut out)?;
        rest = &after[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    const CODECS: [Compression; 5] = Compression::ALL;

    quickcheck! {
        fn every_codec_round_trips(data: Vec<u8>) -> bool {
            CODECS.iter().all(|codec| {
                let compressed = compress(*codec, &data).unwrap();
                decompress(*codec, &compressed, data.len()).unwrap() == data
            })
        }

        fn garbage_is_an_error_or_bounded(data: Vec<u8>) -> bool {
            CODECS.iter().all(|codec| match decompress(*codec, &data, 1024) {
                Ok(out) => out.len() <= 1024,
                Err(_) => true,
            })
        }
    }

    #[test]
    fn output_beyond_the_bound_is_refused() {
        let data = vec![7u8; 100_000];
        for codec in CODECS {
            let compressed = compress(codec, &data).unwrap();
            let error = decompress(codec, &compressed, 99_999).unwrap_err();
            assert!(
                error.to_string().contains("more than 99999"),
                "{codec:?}: {error}"
            );
            assert_eq!(decompress(codec, &compressed, 100_000).unwrap(), data);
        }
    }

    #[test]
    fn raw_snappy_without_xerial_framing_is_read() {
        let data = b"raw snappy as librdkafka may send it".repeat(10);
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(
            decompress(Compression::Snappy, &raw, 1 << 20).unwrap(),
            data
        );
    }
}
