//! Reading a partition's log batch by batch, as what the broker keeps beside a log
//! (committed offsets, transaction state, idempotent producers) is rebuilt from it.

use bytes::Bytes;
use weir_storage::Log;
use weir_wire::BatchHeader;

use crate::error::BrokerResult;

/// Bytes read per step.
const STEP_BYTES: usize = 1 << 20;

/// Calls `visit` with every batch of `log` from `from` to its end, in offset order;
/// returns the offset after the last one.
pub async fn replay(
    log: &Log,
    from: i64,
    mut visit: impl FnMut(&Bytes, &BatchHeader) -> BrokerResult<()>,
) -> BrokerResult<i64> {
    let mut offset = from;
    loop {
        let batches = log.read(offset, STEP_BYTES, i64::MAX).await?;
        let Some(last) = batches.last() else {
            return Ok(offset);
        };
        offset = BatchHeader::parse(last)?.next_offset();
        for batch in &batches {
            visit(batch, &BatchHeader::parse(batch)?)?;
        }
    }
}
