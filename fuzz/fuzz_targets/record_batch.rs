//! Any bytes as a record batch from a client: validation, the client-batch checks and
//! walking the records must return errors, never panic or read out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = weir_wire::batch::validate(data, 1 << 20);
    let _ = weir_wire::check_client_batch(data);
    if let Ok(records) = weir_wire::RecordIter::new(data) {
        for record in records {
            if record.is_err() {
                break;
            }
        }
    }
    let _ = weir_wire::batch::split_batches(data, 1 << 20);
});
