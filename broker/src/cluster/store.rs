//! The controller quorum's durable state, in `<data dir>/__cluster_metadata-0/`:
//!
//! - the Raft log as a partition log (`weir_storage::Log`, `every-batch`): the entry at
//!   index `i` is the one record of the batch at offset `i - 1`, whose value is the
//!   protobuf-encoded raft-rs `Entry` and whose leader epoch is the entry's term (the way
//!   Kafka's KRaft keeps its metadata log). Replacing a suffix is `truncate_to`;
//!   installing a snapshot restarts the log at the snapshot's index.
//! - `quorum-state`: the vote and term (raft-rs `HardState`) and the configuration
//!   (`ConfState`), replaced atomically whenever the term, the vote or the configuration
//!   changes. The commit index in it may lag: raft-rs re-learns it from the leader.
//! - `quorum-snapshot`: the last snapshot (its metadata and the image it holds).
//!
//! (`docs/FORMAT.md` has the bytes.)

use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::BytesMut;
use rkyv::{Archive, Deserialize, Serialize};
use weir_replication::eraftpb::{ConfState, Entry, HardState, Snapshot};
use weir_replication::metadata::{self, MetadataImage};
use weir_replication::{NodeId, QuorumStorage, quorum};
use weir_storage::{FlushPolicy, Log, LogConfig, LogIdentity, ShardStorage};
use weir_wire::{BatchBuilder, RecordIter};

use crate::error::{BrokerError, BrokerResult};
use crate::metadata::METADATA_TOPIC;

const STATE_FILE: &str = "quorum-state";
const STATE_MAGIC: [u8; 4] = *b"WQST";
const SNAPSHOT_FILE: &str = "quorum-snapshot";
const SNAPSHOT_MAGIC: [u8; 4] = *b"WQSN";
/// The metadata of a cluster of many thousands of partitions fits well within this.
const SNAPSHOT_BYTES_MAX: usize = 256 << 20;
const STATE_BYTES_MAX: usize = 64 << 10;
/// One entry is one proposal's records; none comes near this.
const ENTRY_BYTES_MAX: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
struct PersistedState {
    hard_state: Vec<u8>,
    conf_state: Vec<u8>,
}

/// What a restart finds.
#[derive(Debug)]
pub struct Recovered {
    pub storage: QuorumStorage,
    /// The image of the snapshot (or empty): entries after it are applied as raft-rs
    /// hands them over again.
    pub image: MetadataImage,
    pub snapshot_index: u64,
}

#[derive(Debug)]
pub struct QuorumStore {
    dir: PathBuf,
    log: Rc<Log>,
    /// What `quorum-state` holds now (term, vote, configuration; not the commit index).
    persisted: Option<(u64, u64, ConfState)>,
}

impl QuorumStore {
    /// Opens the store under `data_dir`; a new one starts a member of the cluster
    /// formed by `voters`.
    pub async fn open(
        data_dir: &Path,
        storage: Rc<ShardStorage>,
        voters: &[NodeId],
    ) -> BrokerResult<(QuorumStore, Recovered)> {
        let dir = data_dir.join(format!("{METADATA_TOPIC}-0"));
        let identity = LogIdentity {
            topic: METADATA_TOPIC.into(),
            partition: 0,
        };
        let config = LogConfig {
            flush: FlushPolicy::EveryBatch,
            retention_ms: None,
            retention_bytes: None,
            segment_bytes: 64 << 20,
            ..LogConfig::default()
        };
        let log = Log::open(&dir, &identity, config, storage).await?;
        let state =
            weir_storage::read_checked_file(&dir, STATE_FILE, STATE_MAGIC, STATE_BYTES_MAX).await?;
        let snapshot = weir_storage::read_checked_file(
            &dir,
            SNAPSHOT_FILE,
            SNAPSHOT_MAGIC,
            SNAPSHOT_BYTES_MAX,
        )
        .await?;
        let Some(state) = state else {
            if log.log_end_offset() > 0 {
                return Err(BrokerError::Internal(format!(
                    "{} holds metadata written by an older weir (before the controller quorum); \
                     this version cannot read it: start from an empty data directory",
                    dir.display()
                )));
            }
            let store = QuorumStore {
                dir,
                log,
                persisted: None,
            };
            let recovered = Recovered {
                storage: QuorumStorage::bootstrap(voters),
                image: MetadataImage::default(),
                snapshot_index: 0,
            };
            return Ok((store, recovered));
        };
        let state = decode_state(&dir, &state)?;
        let mut hard_state: HardState = decode(&dir, "hard state", &state.hard_state)?;
        let conf_state: ConfState = decode(&dir, "configuration", &state.conf_state)?;
        let (snapshot, image) = match snapshot {
            Some(bytes) => {
                let snapshot: Snapshot = decode(&dir, "snapshot", &bytes)?;
                let image = metadata::decode_snapshot(&snapshot.data).map_err(corrupt(&dir))?;
                (snapshot, MetadataImage::from_snapshot(image))
            }
            None => {
                let mut snapshot = Snapshot::default();
                snapshot.mut_metadata().set_conf_state(conf_state.clone());
                (snapshot, MetadataImage::default())
            }
        };
        let snapshot_index = snapshot.get_metadata().index;
        let entries = read_entries(&log, snapshot_index).await?;
        // The commit index is written only with the vote, so it may lag (or, after a
        // compaction, trail the snapshot): raft-rs needs it within the log it finds.
        let last_index = entries.last().map_or(snapshot_index, |e| e.index);
        hard_state.commit = hard_state.commit.clamp(snapshot_index, last_index);
        let persisted = Some((hard_state.term, hard_state.vote, conf_state.clone()));
        let storage = QuorumStorage::restore(snapshot, entries, hard_state, conf_state)
            .map_err(|e| BrokerError::Internal(format!("{}: {e}", dir.display())))?;
        Ok((
            QuorumStore {
                dir,
                log,
                persisted,
            },
            Recovered {
                storage,
                image,
                snapshot_index,
            },
        ))
    }

    /// Makes one round of raft work durable, in the order a crash needs: the snapshot,
    /// then the entries, then the vote (an entry we acknowledge must outlive a crash, and
    /// so must a vote we cast).
    pub async fn persist(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        conf_state: &ConfState,
    ) -> BrokerResult<()> {
        if let Some(snapshot) = snapshot {
            self.save_snapshot(snapshot).await?;
            self.log
                .reset_to(snapshot.get_metadata().index as i64)
                .await?;
        }
        if let Some(first) = entries.first() {
            let offset = first.index as i64 - 1;
            if offset < self.log.log_end_offset() {
                self.log.truncate_to(offset).await?;
            }
            if offset != self.log.log_end_offset() {
                return Err(BrokerError::Internal(format!(
                    "raft entry {} does not follow the metadata log's end {}",
                    first.index,
                    self.log.log_end_offset()
                )));
            }
            let mut last = None;
            for entry in entries {
                let value = quorum::encode(entry);
                let mut builder = BatchBuilder::new(crate::metadata::now_ms());
                builder.append(crate::metadata::now_ms(), None, Some(&value), &[]);
                let batch: BytesMut = builder.build();
                last = Some(self.log.start_append(batch, entry.term as i32)?);
            }
            if let Some(last) = last {
                self.log.finish_append(&last).await?;
            }
        }
        let (term, vote) = match (hard_state, &self.persisted) {
            (Some(hs), _) => (hs.term, hs.vote),
            (None, Some((term, vote, _))) => (*term, *vote),
            (None, None) => (0, 0),
        };
        let wanted = (term, vote, conf_state.clone());
        if self.persisted.as_ref() != Some(&wanted) {
            let mut hs = hard_state.cloned().unwrap_or_default();
            hs.term = term;
            hs.vote = vote;
            let state = PersistedState {
                hard_state: quorum::encode(&hs),
                conf_state: quorum::encode(conf_state),
            };
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&state)
                .map_err(|e| BrokerError::Internal(e.to_string()))?;
            weir_storage::write_checked_file(&self.dir, STATE_FILE, STATE_MAGIC, &bytes).await?;
            self.persisted = Some(wanted);
        }
        Ok(())
    }

    /// A snapshot this node took: saved, then the entries it covers dropped from the log.
    pub async fn compact(&mut self, snapshot: &Snapshot) -> BrokerResult<()> {
        self.save_snapshot(snapshot).await?;
        let index = snapshot.get_metadata().index as i64;
        if index <= self.log.log_end_offset() {
            self.log.advance_log_start_offset(index).await?;
        }
        Ok(())
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> BrokerResult<()> {
        let bytes = quorum::encode(snapshot);
        weir_storage::write_checked_file(&self.dir, SNAPSHOT_FILE, SNAPSHOT_MAGIC, &bytes).await?;
        Ok(())
    }

    pub async fn close(&self) -> BrokerResult<()> {
        Ok(self.log.close().await?)
    }
}

/// The entries after `snapshot_index`, each checked to sit at its index.
async fn read_entries(log: &Rc<Log>, snapshot_index: u64) -> BrokerResult<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut offset = (snapshot_index as i64).max(log.log_start_offset());
    loop {
        let batches = log.read(offset, 1 << 20, i64::MAX).await?;
        let Some(last) = batches.last() else { break };
        offset = weir_wire::BatchHeader::parse(last)?.next_offset();
        for batch in &batches {
            let header = weir_wire::BatchHeader::parse(batch)?;
            for (position, record) in RecordIter::new(batch)?.enumerate() {
                let value = record?.value.ok_or_else(|| {
                    BrokerError::Internal("metadata log: a record without a value".into())
                })?;
                if value.len() > ENTRY_BYTES_MAX {
                    return Err(BrokerError::Internal(format!(
                        "metadata log: an entry of {} bytes",
                        value.len()
                    )));
                }
                let entry: Entry = quorum::decode("raft entry", value)
                    .map_err(|e| BrokerError::Internal(format!("metadata log: {e}")))?;
                let at = header.base_offset + position as i64 + 1;
                if entry.index as i64 != at {
                    return Err(BrokerError::Internal(format!(
                        "metadata log: entry {} stored at index {at}",
                        entry.index
                    )));
                }
                if entry.index > snapshot_index {
                    entries.push(entry);
                }
            }
        }
    }
    Ok(entries)
}

fn decode_state(dir: &Path, bytes: &[u8]) -> BrokerResult<PersistedState> {
    let aligned = {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        aligned
    };
    rkyv::from_bytes::<PersistedState, rkyv::rancor::Error>(&aligned)
        .map_err(|e| BrokerError::Internal(format!("{}: corrupt {STATE_FILE}: {e}", dir.display())))
}

fn decode<M: quorum::ProtoMessage>(
    dir: &Path,
    what: &'static str,
    bytes: &[u8],
) -> BrokerResult<M> {
    quorum::decode(what, bytes).map_err(corrupt(dir))
}

fn corrupt(dir: &Path) -> impl Fn(weir_replication::ReplicationError) -> BrokerError + '_ {
    move |error| BrokerError::Internal(format!("{}: {error}", dir.display()))
}
