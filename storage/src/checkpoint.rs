//! Small files that only weir reads: the partition metadata and the leader-epoch
//! checkpoint. Each is an rkyv archive behind a checked header, replaced atomically.
//!
//! ```text
//! magic (4 bytes, names the kind) | version u16 LE | length u32 LE | crc32c u32 LE | archive
//! ```
//!
//! The archive is validated with bytecheck before use: a disk can hand back garbage.

use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::epoch::LeaderEpochCache;

const HEADER_BYTES: usize = 14;
const VERSION: u16 = 1;
/// No checkpoint weir writes comes near this; a larger one is corrupt.
pub(crate) const CHECKPOINT_BYTES_MAX: usize = 1 << 20;

pub(crate) const PARTITION_METADATA_MAGIC: [u8; 4] = *b"WPMD";
pub(crate) const EPOCH_CHECKPOINT_MAGIC: [u8; 4] = *b"WLEC";

/// What a partition directory says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct PartitionMetadata {
    pub topic: String,
    pub partition: i32,
    /// The first offset readers may see; retention and record deletion move it forward.
    pub log_start_offset: i64,
}

/// Frames an rkyv archive with the checked header.
fn seal(magic: [u8; 4], archive: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + archive.len());
    out.extend_from_slice(&magic);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(archive.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(archive).to_le_bytes());
    out.extend_from_slice(archive);
    out
}

/// Checks the header and returns the archive, aligned for rkyv's validation.
fn unseal(magic: [u8; 4], bytes: &[u8]) -> Result<AlignedVec, String> {
    let header = bytes.get(..HEADER_BYTES).ok_or("shorter than its header")?;
    if header[..4] != magic {
        return Err("bad magic".into());
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != VERSION {
        return Err(format!("unknown version {version}"));
    }
    let length = u32::from_le_bytes([header[6], header[7], header[8], header[9]]) as usize;
    let crc = u32::from_le_bytes([header[10], header[11], header[12], header[13]]);
    let archive = &bytes[HEADER_BYTES..];
    if archive.len() != length {
        return Err(format!(
            "length {} does not match header {length}",
            archive.len()
        ));
    }
    if crc32c::crc32c(archive) != crc {
        return Err("CRC mismatch".into());
    }
    let mut aligned = AlignedVec::with_capacity(archive.len());
    aligned.extend_from_slice(archive);
    Ok(aligned)
}

/// Serializing plain owned data into memory cannot fail; a failure is a bug.
fn archive_failed(error: rancor::Error) -> ! {
    unreachable!("serializing a checkpoint failed: {error}")
}

pub(crate) fn encode_partition_metadata(value: &PartitionMetadata) -> Vec<u8> {
    let archive = rkyv::to_bytes::<rancor::Error>(value).unwrap_or_else(|e| archive_failed(e));
    seal(PARTITION_METADATA_MAGIC, &archive)
}

pub(crate) fn decode_partition_metadata(bytes: &[u8]) -> Result<PartitionMetadata, String> {
    let archive = unseal(PARTITION_METADATA_MAGIC, bytes)?;
    rkyv::from_bytes::<PartitionMetadata, rancor::Error>(&archive)
        .map_err(|e| format!("invalid archive: {e}"))
}

pub(crate) fn encode_epochs(value: &LeaderEpochCache) -> Vec<u8> {
    let archive = rkyv::to_bytes::<rancor::Error>(value).unwrap_or_else(|e| archive_failed(e));
    seal(EPOCH_CHECKPOINT_MAGIC, &archive)
}

pub(crate) fn decode_epochs(bytes: &[u8]) -> Result<LeaderEpochCache, String> {
    let archive = unseal(EPOCH_CHECKPOINT_MAGIC, bytes)?;
    rkyv::from_bytes::<LeaderEpochCache, rancor::Error>(&archive)
        .map_err(|e| format!("invalid archive: {e}"))
}

/// Replaces `dir/name` with `contents` behind the checked header (`magic` names the
/// kind of file), synced: after a crash the file holds the old contents or the new ones.
/// For small state that others than the partition log keep (the controller quorum's
/// vote and snapshot).
pub async fn write_checked_file(
    dir: &std::path::Path,
    name: &str,
    magic: [u8; 4],
    contents: &[u8],
) -> crate::Result<()> {
    crate::io::write_file_atomically(
        dir,
        name,
        &seal(magic, contents),
        crate::io::Durability::Synced,
    )
    .await
}

/// The contents `write_checked_file` wrote, `None` when there is no such file. A file that
/// fails its header check, or is larger than `bytes_max`, is reported as corrupt.
pub async fn read_checked_file(
    dir: &std::path::Path,
    name: &str,
    magic: [u8; 4],
    bytes_max: usize,
) -> crate::Result<Option<Vec<u8>>> {
    let path = dir.join(name);
    let Some(bytes) = crate::io::read_small_file(&path, bytes_max + HEADER_BYTES).await? else {
        return Ok(None);
    };
    unseal(magic, &bytes)
        .map(|archive| Some(archive.to_vec()))
        .map_err(|reason| crate::StorageError::Corrupt {
            path,
            position: 0,
            reason,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    #[test]
    fn partition_metadata_round_trips() {
        let metadata = PartitionMetadata {
            topic: "orders".into(),
            partition: 3,
            log_start_offset: 42,
        };
        let bytes = encode_partition_metadata(&metadata);
        assert_eq!(decode_partition_metadata(&bytes), Ok(metadata));
        assert!(decode_epochs(&bytes).is_err());
    }

    quickcheck! {
        fn epoch_checkpoints_round_trip(epochs: Vec<(u16, u32)>) -> bool {
            let mut cache = LeaderEpochCache::default();
            let mut offset = 0i64;
            for (epoch, gap) in epochs {
                offset += i64::from(gap);
                cache.assign(i32::from(epoch), offset);
            }
            let bytes = encode_epochs(&cache);
            decode_epochs(&bytes) == Ok(cache)
        }

        fn damaged_checkpoints_are_refused(position: usize, bit: u8) -> bool {
            let metadata = PartitionMetadata { topic: "t".into(), partition: 0, log_start_offset: 7 };
            let mut bytes = encode_partition_metadata(&metadata);
            let at = position % bytes.len();
            bytes[at] ^= 1 << (bit % 8);
            decode_partition_metadata(&bytes).is_err()
        }
    }
}
