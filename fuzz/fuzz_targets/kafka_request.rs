//! Any bytes as one Kafka request frame (after the size prefix): decoding must return a
//! request or an error, never panic, and never allocate beyond a small multiple of the
//! frame (libFuzzer's -malloc_limit_mb catches that). The first four bytes double as a
//! size prefix for the frame-size check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_broker::kafka::codec;

fuzz_target!(|data: &[u8]| {
    if let Some(prefix) = data.first_chunk::<4>() {
        let _ = codec::frame_size(*prefix, 1 << 20);
    }
    let _ = codec::decode(bytes::Bytes::copy_from_slice(data));
});
