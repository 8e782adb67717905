//! Compaction against a model: random keyed writes (some compressed, some tombstones,
//! some without keys), rolls, compaction passes, clean reopens and crashes. After every
//! pass, reading the whole log must give, for every key, exactly the model's latest
//! record (a tombstone may be gone once it expired), offsets strictly increasing, every
//! record one that was written at that offset; and below the active segment, which the
//! pass covered entirely, every key at most once.

use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;

use glommio::{LocalExecutorBuilder, Placement};
use quickcheck::{Arbitrary, Gen, QuickCheck};
use weir_wire::BatchBuilder;
use weir_wire::batch::{self, Compression};
use weir_wire::record::{self, RecordIter};

use super::swap_name;
use crate::{
    CleanupPolicy, Log, LogConfig, LogIdentity, ShardStorage, ShardStorageConfig, StorageError,
};

const KEYS: u8 = 12;
const DELETE_RETENTION_MS: i64 = 500;

fn run<F: Future<Output = ()>>(test: impl FnOnce() -> F) {
    LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .expect("glommio executor")
        .run(test());
}

#[derive(Debug, Clone)]
enum Op {
    /// Records of one batch: `(key, value length)`, key `None` for a keyless record and
    /// length `None` for a tombstone.
    Append {
        records: Vec<(Option<u8>, Option<u16>)>,
        codec: u8,
    },
    Roll,
    Compact,
    /// Everything written so far becomes compactable (a high watermark moving up).
    Commit,
    /// Cuts the log at this offset, but never below what may be compacted (replication
    /// only truncates above the high watermark).
    Truncate(u16),
    /// Time passes (milliseconds).
    Wait(u16),
    Reopen,
    Crash,
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Op {
        match u8::arbitrary(g) % 100 {
            0..55 => {
                let count = usize::arbitrary(g) % 6 + 1;
                let records = (0..count)
                    .map(|_| {
                        let key = (u8::arbitrary(g) % 20 != 0).then(|| u8::arbitrary(g) % KEYS);
                        let value = (u8::arbitrary(g) % 6 != 0).then(|| u16::arbitrary(g) % 900);
                        (key, value)
                    })
                    .collect();
                Op::Append {
                    records,
                    codec: u8::arbitrary(g),
                }
            }
            55..63 => Op::Roll,
            63..76 => Op::Compact,
            76..82 => Op::Commit,
            82..84 => Op::Truncate(u16::arbitrary(g)),
            84..90 => Op::Wait(u16::arbitrary(g) % 400),
            90..95 => Op::Reopen,
            _ => Op::Crash,
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    ops: Vec<Op>,
}

impl Arbitrary for Case {
    fn arbitrary(g: &mut Gen) -> Case {
        let len = usize::arbitrary(g) % 120 + 10;
        let mut ops: Vec<Op> = (0..len).map(|_| Op::arbitrary(g)).collect();
        ops.extend([Op::Commit, Op::Roll, Op::Compact]);
        Case { ops }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Case>> {
        Box::new(self.ops.shrink().map(|ops| Case { ops }))
    }
}

/// What was written at one offset.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    /// The newest timestamp of its batch: when a tombstone in it expires.
    batch_max_timestamp: i64,
}

fn value_bytes(offset: i64, len: u16) -> Vec<u8> {
    (0..len)
        .map(|i| (offset as u16).wrapping_mul(31).wrapping_add(i) as u8)
        .collect()
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 8 * 1024,
        batch_bytes_max: 8 * 1024,
        index_interval_bytes: 512,
        write_chunk_bytes: 4096,
        readahead_bytes: 4096,
        retention_ms: None,
        cleanup: CleanupPolicy::COMPACT,
        delete_retention_ms: DELETE_RETENTION_MS as u64,
        ..LogConfig::default()
    }
}

/// A compacted log on a shard whose batch cache holds about two segments: passes take
/// the newest batches from the cache and the rest from files, as on a busy broker.
async fn open(dir: &std::path::Path) -> Rc<Log> {
    open_on(dir, CACHE_BYTES, 0).await
}

const CACHE_BYTES: u64 = 16 * 1024;

/// A log on a shard without a batch cache (every pass reads files), whose compaction
/// I/O is limited to `bytes_per_second` (0: none).
async fn open_limited(dir: &std::path::Path, bytes_per_second: u64) -> Rc<Log> {
    open_on(dir, 0, bytes_per_second).await
}

async fn open_on(dir: &std::path::Path, cache_bytes: u64, bytes_per_second: u64) -> Rc<Log> {
    let shard = ShardStorage::new(ShardStorageConfig {
        cache_bytes,
        open_segments_max: 3,
        compaction_io_bytes_per_second: bytes_per_second,
        ..ShardStorageConfig::default()
    });
    let identity = LogIdentity {
        topic: "table".into(),
        partition: 0,
    };
    Log::open(dir, &identity, config(), shard)
        .await
        .expect("open log")
}

/// Every record the log returns, in order: (offset, key, value, batch max timestamp).
async fn read_records(log: &Log) -> Vec<(i64, Written)> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    loop {
        let batches = log.read(offset, 16 * 1024, i64::MAX).await.expect("read");
        let Some(last) = batches.last() else {
            return out;
        };
        offset = batch::BatchHeader::parse(last).unwrap().next_offset();
        for bytes in &batches {
            let header = batch::validate(bytes, usize::MAX).expect("a valid batch");
            let (_, section) = record::records_section(bytes, 1 << 20).unwrap();
            for r in RecordIter::over(header, &section) {
                let r = r.expect("a well-formed record");
                out.push((
                    r.offset,
                    Written {
                        key: r.key.map(<[u8]>::to_vec),
                        value: r.value.map(<[u8]>::to_vec),
                        batch_max_timestamp: header.max_timestamp,
                    },
                ));
            }
        }
    }
}

struct Model {
    written: HashMap<i64, Written>,
    /// Every key's latest offset.
    latest: HashMap<Vec<u8>, i64>,
}

/// Checks the log against the model; `compacted_below` is where the last pass that saw
/// everything below the active segment ended (every key at most once below it).
async fn agrees(log: &Log, model: &Model, now: i64, compacted_below: i64) -> Result<(), String> {
    let records = read_records(log).await;
    let mut last_offset = -1;
    let mut seen_below: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut last_of_key: HashMap<Vec<u8>, i64> = HashMap::new();
    for (offset, written) in &records {
        if *offset <= last_offset {
            return Err(format!("offset {offset} after {last_offset}"));
        }
        last_offset = *offset;
        if model.written.get(offset) != Some(written) {
            return Err(format!(
                "offset {offset} reads something else than was written there"
            ));
        }
        if let Some(key) = &written.key {
            last_of_key.insert(key.clone(), *offset);
            if *offset < compacted_below && seen_below.insert(key.clone(), *offset).is_some() {
                return Err(format!("key {key:?} twice below {compacted_below}"));
            }
        } else if *offset < compacted_below {
            return Err(format!("keyless record at {offset} survived compaction"));
        }
    }
    for (key, latest) in &model.latest {
        let written = &model.written[latest];
        match last_of_key.get(key) {
            Some(found) if found == latest => {}
            None if written.value.is_none()
                && written.batch_max_timestamp < now - DELETE_RETENTION_MS => {}
            found => {
                let offsets: Vec<i64> = records.iter().map(|(o, _)| *o).collect();
                return Err(format!(
                    "key {key:?}: latest is {latest} (tombstone: {}), the log's last is {found:?}; the log reads offsets {offsets:?}",
                    written.value.is_none()
                ));
            }
        }
    }
    Ok(())
}

fn check(case: Case) -> bool {
    let mut verdict = Ok(());
    run(|| async {
        verdict = check_case(case).await;
    });
    if let Err(reason) = &verdict {
        eprintln!("{reason}");
    }
    verdict.is_ok()
}

async fn check_case(case: Case) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).await;
    let mut model = Model {
        written: HashMap::new(),
        latest: HashMap::new(),
    };
    let mut now: i64 = 10_000;
    let mut compacted_below = 0;
    let mut stable = 0;
    for op in case.ops {
        match op {
            Op::Append { records, codec } => {
                let codecs = Compression::ALL;
                let mut builder = BatchBuilder::new(now);
                builder.compression(codecs[codec as usize % codecs.len()]);
                let base = log.log_end_offset();
                let mut pending = Vec::new();
                for (i, (key, len)) in records.iter().enumerate() {
                    let offset = base + i as i64;
                    let key = key.map(|k| vec![b'k', k]);
                    let value = len.map(|len| value_bytes(offset, len));
                    builder.append(now, key.as_deref(), value.as_deref(), &[]);
                    pending.push((offset, key, value));
                }
                let info = log
                    .append(builder.build(), 0)
                    .await
                    .map_err(|e| e.to_string())?;
                assert_eq!(info.base_offset, base);
                for (offset, key, value) in pending {
                    if let Some(key) = &key {
                        model.latest.insert(key.clone(), offset);
                    }
                    model.written.insert(
                        offset,
                        Written {
                            key,
                            value,
                            batch_max_timestamp: now,
                        },
                    );
                }
            }
            Op::Roll => log.roll().await.map_err(|e| e.to_string())?,
            Op::Compact => {
                let stats = log
                    .compact(now, stable, 1 << 20)
                    .await
                    .map_err(|e| e.to_string())?;
                FROM_CACHE.fetch_add(
                    stats.bytes_read_from_cache,
                    std::sync::atomic::Ordering::Relaxed,
                );
                let active_base = *log.segment_base_offsets().last().unwrap();
                if stats.end_offset == active_base {
                    compacted_below = active_base;
                }
                agrees(&log, &model, now, compacted_below).await?;
            }
            Op::Commit => stable = log.log_end_offset(),
            Op::Truncate(at) => {
                let at = i64::from(at).max(stable);
                log.truncate_to(at).await.map_err(|e| e.to_string())?;
                let end = log.log_end_offset();
                model.written.retain(|offset, _| *offset < end);
                model.latest.clear();
                for (offset, written) in &model.written {
                    if let Some(key) = &written.key {
                        let latest = model.latest.entry(key.clone()).or_insert(*offset);
                        *latest = (*latest).max(*offset);
                    }
                }
                compacted_below = compacted_below.min(end);
            }
            Op::Wait(ms) => now += i64::from(ms),
            Op::Reopen => {
                log.close().await.map_err(|e| e.to_string())?;
                drop(log);
                log = open(dir.path()).await;
            }
            Op::Crash => {
                // Appends are durable (every-batch): dropping the log loses nothing.
                drop(log);
                log = open(dir.path()).await;
            }
        }
    }
    agrees(&log, &model, now, compacted_below).await
}

/// Bytes the model cases' passes took from the batch cache.
static FROM_CACHE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[test]
fn compaction_agrees_with_model() {
    QuickCheck::new()
        .tests(60)
        .max_tests(200)
        .quickcheck(check as fn(Case) -> bool);
    assert!(
        FROM_CACHE.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "no pass took a batch from the cache: the cases test files only"
    );
}

/// A batch of one keyed record (`None`: a tombstone) at `ts`.
fn keyed(key: &[u8], value: Option<&[u8]>, ts: i64) -> bytes::BytesMut {
    let mut builder = BatchBuilder::new(ts);
    builder.append(ts, Some(key), value, &[]);
    builder.build()
}

/// Tombstones stay for delete.retention.ms, then go with every older record of the key.
#[test]
fn tombstones_are_kept_until_they_expire() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path()).await;
        log.append(keyed(b"a", Some(b"1"), 1000), 0).await.unwrap();
        log.append(keyed(b"b", Some(b"1"), 1000), 0).await.unwrap();
        log.append(keyed(b"a", None, 1000), 0).await.unwrap();
        log.roll().await.unwrap();
        log.append(keyed(b"c", Some(b"1"), 1000), 0).await.unwrap();
        let keys = |records: Vec<(i64, Written)>| -> Vec<(i64, Vec<u8>, bool)> {
            records
                .into_iter()
                .map(|(o, w)| (o, w.key.unwrap(), w.value.is_some()))
                .collect()
        };
        log.compact(1000 + DELETE_RETENTION_MS - 1, i64::MAX, 1 << 20)
            .await
            .unwrap();
        assert_eq!(
            keys(read_records(&log).await),
            vec![
                (1, b"b".to_vec(), true),
                (2, b"a".to_vec(), false),
                (3, b"c".to_vec(), true)
            ]
        );
        log.roll().await.unwrap();
        log.compact(1000 + DELETE_RETENTION_MS + 1, i64::MAX, 1 << 20)
            .await
            .unwrap();
        assert_eq!(
            keys(read_records(&log).await),
            vec![(1, b"b".to_vec(), true), (3, b"c".to_vec(), true)]
        );
        // Offsets never change: reading from a removed offset continues at the next one.
        let from_gap = log.read(0, 1 << 20, i64::MAX).await.unwrap();
        assert_eq!(
            batch::BatchHeader::parse(&from_gap[0]).unwrap().base_offset,
            1
        );
        let from_gap = log.read(2, 1 << 20, i64::MAX).await.unwrap();
        assert_eq!(
            batch::BatchHeader::parse(&from_gap[0]).unwrap().base_offset,
            3
        );
        assert_eq!(log.log_start_offset(), 0);
    });
}

/// Every record the log holds: offset, key and value.
async fn kept_records(log: &Rc<Log>) -> Vec<(i64, Option<Vec<u8>>, Option<Vec<u8>>)> {
    read_records(log)
        .await
        .into_iter()
        .map(|(offset, w)| (offset, w.key, w.value))
        .collect()
}

/// 100 updates of 1,000 bytes over 10 keys (~100 KB), in a sealed segment.
async fn append_updates_and_roll(log: &Rc<Log>) {
    for i in 0..100u8 {
        let value = vec![i; 1000];
        log.append(keyed(&[i % 10], Some(&value), 1000), 0)
            .await
            .unwrap();
    }
    log.roll().await.unwrap();
}

/// A pass under an I/O rate limit waits for it and ends with the same log as one without.
#[test]
fn a_rate_limited_pass_waits_and_keeps_the_same_records() {
    run(|| async {
        let (free_dir, limited_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let free = open_limited(free_dir.path(), 0).await;
        // ~100 KB read twice (the map, then the rewrite): about 0.2 s at 1 MB/s.
        let limited = open_limited(limited_dir.path(), 1_000_000).await;
        for log in [&free, &limited] {
            append_updates_and_roll(log).await;
            log.compact(2000, i64::MAX, 1 << 20).await.unwrap();
        }
        let kept = kept_records(&free).await;
        assert_eq!(kept.len(), 10, "one record per key");
        assert_eq!(kept, kept_records(&limited).await);
        assert_eq!(
            free.shard.compaction_throttled(),
            std::time::Duration::ZERO,
            "no limit, no wait"
        );
        assert!(
            limited.shard.compaction_throttled() > std::time::Duration::ZERO,
            "the limited pass never waited"
        );
    });
}

/// A pass takes the batches the shard's cache still holds from it, not from the files
/// (so not under the I/O limit), and ends with the same records as a pass that reads
/// every file.
#[test]
fn recent_batches_come_from_the_cache() {
    run(|| async {
        let (cached_dir, files_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cached = open_on(cached_dir.path(), 1 << 20, 0).await;
        let files = open_limited(files_dir.path(), 0).await;
        for log in [&cached, &files] {
            append_updates_and_roll(log).await;
            log.compact(2000, i64::MAX, 1 << 20).await.unwrap();
            // A second round over what the first pass left, now in a file only.
            append_updates_and_roll(log).await;
            log.compact(2000, i64::MAX, 1 << 20).await.unwrap();
        }
        let kept = kept_records(&files).await;
        assert_eq!(kept.len(), 10, "one record per key");
        assert_eq!(kept, kept_records(&cached).await);
        let (read, from_cache) = (
            cached.shard.compaction_bytes_read(),
            cached.shard.compaction_bytes_read_from_cache(),
        );
        assert!(from_cache > 0, "nothing came from the cache");
        assert!(
            from_cache < read,
            "the second pass's cleaned segment is not cached: {from_cache} of {read} bytes"
        );
        assert_eq!(files.shard.compaction_bytes_read_from_cache(), 0);
    });
}

/// Closing a log (its partition deleted) stops a pass that is waiting for the I/O limit
/// at its next batch, instead of reading on for seconds files that are going away.
#[test]
fn closing_the_log_stops_a_rate_limited_pass() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        // ~200 KB read and written at 100 KB/s: two seconds unless it stops.
        let log = open_limited(dir.path(), 100_000).await;
        append_updates_and_roll(&log).await;
        let pass = glommio::spawn_local({
            let log = log.clone();
            async move { log.compact(2000, i64::MAX, 1 << 20).await }
        });
        glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
        log.close().await.unwrap();
        let ended = pass.await;
        assert!(
            matches!(ended, Err(StorageError::Closed { .. })),
            "the pass ended {ended:?}"
        );
        // Without the stop, the map alone reads the whole segment (~100 KB) before the
        // rewrite sees the log closed; 100 ms at the limit is ~10 KB.
        let read = log.shard.compaction_bytes_read();
        assert!(read < 50_000, "the pass read {read} bytes of a closed log");
    });
}

/// A segment compaction empties (every record in it an expired tombstone or superseded)
/// stays where it is: it does not move the log start, so a consumer at offset 0 is not
/// told its offset is out of range; it reads on from the next surviving record.
#[test]
fn an_emptied_first_segment_keeps_the_log_start() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path()).await;
        log.append(keyed(b"a", Some(b"1"), 1000), 0).await.unwrap();
        log.append(keyed(b"a", None, 1000), 0).await.unwrap();
        log.roll().await.unwrap();
        log.append(keyed(b"b", Some(b"1"), 1000), 0).await.unwrap();
        log.roll().await.unwrap();
        log.append(keyed(b"c", Some(b"1"), 1000), 0).await.unwrap();
        // The stable offset (the high watermark) ends the pass after the first segment,
        // so it is cleaned alone, to nothing.
        log.compact(1000 + DELETE_RETENTION_MS + 1, 2, 1 << 20)
            .await
            .unwrap();
        log.apply_retention(1000 + DELETE_RETENTION_MS + 1)
            .await
            .unwrap();
        assert_eq!(log.segment_count(), 3, "the emptied segment stays");
        for reopened in [false, true] {
            let log = if reopened {
                log.close().await.unwrap();
                let log = open(dir.path()).await;
                log.apply_retention(1000 + DELETE_RETENTION_MS + 1)
                    .await
                    .unwrap();
                log
            } else {
                log.clone()
            };
            assert_eq!(log.log_start_offset(), 0, "reopened: {reopened}");
            let from_start = log.read(0, 1 << 20, i64::MAX).await.unwrap();
            assert_eq!(
                batch::BatchHeader::parse(&from_start[0])
                    .unwrap()
                    .base_offset,
                2
            );
        }
    });
}

/// When a log is due: records younger than min.compaction.lag.ms are not cleanable yet;
/// the dirty ratio measures what a pass would clean against everything cleanable; a
/// dirty record older than max.compaction.lag.ms makes the log overdue whatever its ratio.
#[test]
fn compaction_lags_and_the_dirty_ratio_decide_when_a_log_is_due() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path()).await;
        log.set_config(LogConfig {
            min_compaction_lag_ms: 1000,
            max_compaction_lag_ms: 5000,
            ..config()
        })
        .unwrap();
        for i in 0..4u8 {
            log.append(keyed(&[i], Some(b"first"), 1000), 0)
                .await
                .unwrap();
        }
        log.roll().await.unwrap();
        log.append(keyed(b"tail", Some(b"1"), 1000), 0)
            .await
            .unwrap();
        assert!(
            log.compaction_candidate(1500, i64::MAX).is_none(),
            "younger than min.compaction.lag.ms"
        );
        let due = log.compaction_candidate(2500, i64::MAX).expect("cleanable");
        assert!(!due.overdue);
        assert_eq!(due.dirty_ratio(), 1.0);
        log.compact(2500, i64::MAX, 1 << 20).await.unwrap();
        assert!(
            log.compaction_candidate(2500, i64::MAX).is_none(),
            "all clean"
        );
        // One key rewritten: a small dirty part against the clean segment.
        log.append(keyed(&[0], Some(b"second"), 3000), 0)
            .await
            .unwrap();
        log.roll().await.unwrap();
        let due = log.compaction_candidate(4500, i64::MAX).expect("cleanable");
        assert!(!due.overdue);
        assert!(
            due.dirty_ratio() > 0.0 && due.dirty_ratio() < 1.0,
            "{}",
            due.dirty_ratio()
        );
        // Past max.compaction.lag.ms of the dirty records' time: overdue.
        let overdue = log.compaction_candidate(9000, i64::MAX).expect("cleanable");
        assert!(overdue.overdue);
    });
}

/// A crash after a swap's commit point leaves `<base>.<end>.swap` next to the segments it
/// replaces (all of them, or some, depending on how far the deletions got): opening the
/// log finishes the swap.
#[test]
fn recovery_finishes_a_committed_swap() {
    run(|| async {
        for deleted_before_crash in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let log = open(dir.path()).await;
            let mut expected = Vec::new();
            for segment in 0..3u8 {
                for i in 0..3u8 {
                    let mut builder = BatchBuilder::new(1000);
                    builder.append(1000, Some(&[segment, i]), Some(b"value"), &[]);
                    log.append(builder.build(), 0).await.unwrap();
                    expected.push(i64::from(segment * 3 + i));
                }
                log.roll().await.unwrap();
            }
            assert_eq!(log.segment_base_offsets(), vec![0, 3, 6, 9]);
            log.close().await.unwrap();
            drop(log);
            // The swap file replacing segments 0 and 3 holds both of their batches.
            let path = |name: &str| dir.path().join(name);
            let mut merged = std::fs::read(path("00000000000000000000.log")).unwrap();
            merged.extend(std::fs::read(path("00000000000000000003.log")).unwrap());
            std::fs::write(path(&swap_name(0, 6)), merged).unwrap();
            if deleted_before_crash {
                std::fs::remove_file(path("00000000000000000003.log")).unwrap();
            }
            std::fs::write(path("00000000000000000006.cleaned"), b"half written").unwrap();
            let log = open(dir.path()).await;
            assert_eq!(log.segment_base_offsets(), vec![0, 6, 9]);
            let offsets: Vec<i64> = read_records(&log).await.iter().map(|(o, _)| *o).collect();
            assert_eq!(offsets, expected);
            log.verify().await.unwrap();
            let names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(
                !names
                    .iter()
                    .any(|n| n.ends_with(".swap") || n.ends_with(".cleaned")),
                "{names:?}"
            );
        }
    });
}

/// Records younger than min.compaction.lag.ms are left alone; the stable offset bounds a
/// pass too (open transactions, or a high watermark).
#[test]
fn young_and_unstable_records_are_not_compacted() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path()).await;
        log.set_config(LogConfig {
            min_compaction_lag_ms: 1000,
            ..config()
        })
        .unwrap();
        for _ in 0..4 {
            let mut builder = BatchBuilder::new(1000);
            builder.append(1000, Some(b"k"), Some(b"v"), &[]);
            log.append(builder.build(), 0).await.unwrap();
            log.roll().await.unwrap();
        }
        let count = |log: Rc<Log>| async move { read_records(&log).await.len() };
        let stats = log.compact(1500, i64::MAX, 1 << 20).await.unwrap();
        assert_eq!((stats.records_removed, count(log.clone()).await), (0, 4));
        assert!(log.compaction_candidate(1500, i64::MAX).is_none());
        // Old enough now, but only the first three segments are below the stable offset.
        let stats = log.compact(2500, 3, 1 << 20).await.unwrap();
        assert_eq!((stats.records_removed, count(log.clone()).await), (2, 2));
        let candidate = log.compaction_candidate(2500, i64::MAX).unwrap();
        assert!(candidate.dirty_bytes > 0 && candidate.dirty_ratio() < 1.0);
        let stats = log.compact(2500, i64::MAX, 1 << 20).await.unwrap();
        assert_eq!((stats.records_removed, count(log.clone()).await), (1, 1));
    });
}

/// An aborted transaction's record never shadows its key's committed value: with the
/// aborted batches named, compaction drops them and keeps the older committed record.
#[test]
fn aborted_records_are_dropped_and_shadow_nothing() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path()).await;
        let transactional = |producer: i64, value: &[u8]| {
            let mut builder = BatchBuilder::new(1000);
            builder.producer(producer, 0, 0);
            builder.transactional();
            builder.append(1000, Some(b"k"), Some(value), &[]);
            builder.build()
        };
        log.append(keyed(b"k", Some(b"committed"), 1000), 0)
            .await
            .unwrap();
        // Offset 1: producer 7's transaction, later aborted (its marker at 2).
        log.append(transactional(7, b"aborted"), 0).await.unwrap();
        let marker = weir_wire::control_batch(1000, 7, 0, weir_wire::ControlType::Abort, 0);
        log.append(marker, 0).await.unwrap();
        log.append(keyed(b"other", Some(b"v"), 1000), 0)
            .await
            .unwrap();
        log.roll().await.unwrap();
        let aborted = |header: &batch::BatchHeader| {
            header.producer_id == 7
                && header.attributes.is_transactional()
                && header.base_offset == 1
        };
        let stats = log
            .compact_transactional(i64::MAX / 2, i64::MAX, 1 << 20, &aborted)
            .await
            .unwrap();
        assert_eq!(stats.records_removed, 1);
        let records: Vec<(i64, Option<Vec<u8>>)> = read_records(&log)
            .await
            .into_iter()
            .filter(|(_, w)| w.key.as_deref() == Some(b"k"))
            .map(|(offset, w)| (offset, w.value))
            .collect();
        assert_eq!(records, vec![(0, Some(b"committed".to_vec()))]);
        // Without the aborted batches named, the aborted value would have won.
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path()).await;
        log.append(keyed(b"k", Some(b"committed"), 1000), 0)
            .await
            .unwrap();
        log.append(transactional(7, b"aborted"), 0).await.unwrap();
        log.roll().await.unwrap();
        log.compact(i64::MAX / 2, i64::MAX, 1 << 20).await.unwrap();
        let values: Vec<Option<Vec<u8>>> = read_records(&log)
            .await
            .into_iter()
            .map(|(_, w)| w.value)
            .collect();
        assert_eq!(values, vec![Some(b"aborted".to_vec())]);
    });
}
