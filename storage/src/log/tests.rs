//! Scenario tests of the partition log against real files, and a model-based property
//! test of every operation together.

use std::future::Future;
use std::path::Path;
use std::rc::Rc;

use bytes::BytesMut;
use glommio::{LocalExecutorBuilder, Placement};
use weir_wire::BatchBuilder;

use super::*;
use crate::ShardStorageConfig;

fn run<F: Future<Output = ()>>(test: impl FnOnce() -> F) {
    LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .expect("glommio executor")
        .run(test());
}

fn identity() -> LogIdentity {
    LogIdentity {
        topic: "events".into(),
        partition: 0,
    }
}

fn shard(cache_bytes: u64) -> Rc<ShardStorage> {
    ShardStorage::new(ShardStorageConfig {
        cache_bytes,
        open_segments_max: 4,
        ..ShardStorageConfig::default()
    })
}

/// A batch of `records` records whose values are `value_bytes` long and derived from
/// `seed`, with timestamps from `timestamp` on.
fn batch(seed: u64, records: usize, value_bytes: usize, timestamp: i64) -> BytesMut {
    let mut builder = BatchBuilder::new(timestamp);
    for i in 0..records {
        let value: Vec<u8> = (0..value_bytes)
            .map(|j| (seed as usize * 31 + i * 7 + j) as u8)
            .collect();
        let key = format!("key-{seed}-{i}");
        builder.append(
            timestamp + (i % 3) as i64,
            Some(key.as_bytes()),
            Some(&value),
            &[],
        );
    }
    builder.build()
}

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        batch_bytes_max: 32 * 1024,
        index_interval_bytes: 1024,
        write_chunk_bytes: 8 * 1024,
        readahead_bytes: 8 * 1024,
        retention_ms: None,
        ..LogConfig::default()
    }
}

async fn open(dir: &Path, config: LogConfig, cache_bytes: u64) -> Rc<Log> {
    Log::open(dir, &identity(), config, shard(cache_bytes))
        .await
        .expect("open log")
}

async fn read_all(log: &Log, from: i64) -> Vec<Bytes> {
    let mut offset = from;
    let mut all = Vec::new();
    loop {
        let batches = log.read(offset, 16 * 1024, i64::MAX).await.expect("read");
        let Some(last) = batches.last() else {
            return all;
        };
        offset = BatchHeader::parse(last).unwrap().next_offset();
        all.extend(batches);
    }
}

#[test]
fn appended_batches_read_back_identically_from_cache_pending_and_disk() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        for (cache_bytes, flush) in [
            (1 << 20, FlushPolicy::EveryBatch),
            (0, FlushPolicy::EveryBatch),
            (0, FlushPolicy::Never),
        ] {
            let path = dir.path().join(format!("{cache_bytes}-{flush}"));
            let log = open(
                &path,
                LogConfig {
                    flush,
                    ..small_config()
                },
                cache_bytes,
            )
            .await;
            let mut expected = Vec::new();
            for seed in 0..100u64 {
                let info = log
                    .append(batch(seed, 3, 200, 1000 + seed as i64), 5)
                    .await
                    .unwrap();
                assert_eq!(info.base_offset, seed as i64 * 3);
                expected.push(info);
            }
            assert_eq!(log.log_end_offset(), 300);
            let all = read_all(&log, 0).await;
            assert_eq!(all.len(), 100, "cache {cache_bytes}, {flush}");
            for (bytes, info) in all.iter().zip(&expected) {
                let header = batch::validate(bytes, usize::MAX).unwrap();
                assert_eq!(
                    (header.base_offset, header.partition_leader_epoch),
                    (info.base_offset, 5)
                );
            }
            // A read from the middle of a batch starts with the batch holding the offset.
            let from_middle = log.read(4, 1, i64::MAX).await.unwrap();
            assert_eq!(BatchHeader::parse(&from_middle[0]).unwrap().base_offset, 3);
            // Under write-behind, rolls happen as the background writer gets there.
            log.flush().await.unwrap();
            assert!(log.segment_count() > 1, "64 KiB segments must have rolled");
            log.close().await.unwrap();
        }
    });
}

#[test]
fn reads_respect_limits_and_range() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), small_config(), 0).await;
        for seed in 0..10 {
            log.append(batch(seed, 2, 100, 0), 0).await.unwrap();
        }
        let one = log.read(0, 1, i64::MAX).await.unwrap();
        assert_eq!(one.len(), 1, "at least one batch even over the byte limit");
        let size = one[0].len();
        // From disk (no cache here), within a limit that is never exceeded.
        let at_most = |bytes| log.read_within(0, ReadLimit::at_most(bytes), i64::MAX);
        assert!(
            at_most(size - 1).await.unwrap().is_empty(),
            "never over the limit"
        );
        assert_eq!(at_most(2 * size + 1).await.unwrap().len(), 2);
        assert!(at_most(0).await.unwrap().is_empty());
        let below_watermark = log.read(0, usize::MAX, 6).await.unwrap();
        assert_eq!(
            below_watermark.len(),
            3,
            "batches reaching the max offset are withheld"
        );
        assert!(
            log.read(20, 100, i64::MAX).await.unwrap().is_empty(),
            "reading at the end is empty"
        );
        assert!(matches!(
            log.read(21, 100, i64::MAX).await,
            Err(StorageError::OffsetOutOfRange { offset: 21, .. })
        ));
        assert!(matches!(
            log.read(-1, 100, i64::MAX).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
    });
}

#[test]
fn bad_batches_are_refused_and_change_nothing() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), small_config(), 1 << 20).await;
        let mut corrupt = batch(1, 1, 10, 0);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        assert!(matches!(
            log.append(corrupt, 0).await,
            Err(StorageError::InvalidBatch(
                weir_wire::WireError::CrcMismatch { .. }
            ))
        ));
        let too_big = batch(1, 20, 2000, 0);
        assert!(matches!(
            log.append(too_big, 0).await,
            Err(StorageError::InvalidBatch(
                weir_wire::WireError::BatchTooLarge { .. }
            ))
        ));
        let mut truncated = batch(1, 1, 10, 0);
        truncated.truncate(40);
        assert!(log.append(truncated, 0).await.is_err());
        assert_eq!(log.log_end_offset(), 0);
        assert_eq!(
            log.append(batch(2, 1, 10, 0), 0).await.unwrap().base_offset,
            0
        );
    });
}

#[test]
fn clean_close_and_crash_both_keep_every_durable_batch() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), small_config(), 1 << 20).await;
        for seed in 0..200 {
            log.append(batch(seed, 1, 300, seed as i64), seed as i32 / 50)
                .await
                .unwrap();
        }
        let before = read_all(&log, 0).await;
        log.close().await.unwrap();
        assert!(matches!(
            log.append(batch(0, 1, 1, 0), 0).await,
            Err(StorageError::Closed { .. })
        ));

        let log = open(dir.path(), small_config(), 1 << 20).await;
        assert_eq!(read_all(&log, 0).await, before, "after a clean close");
        assert_eq!(log.leader_epochs().latest_epoch(), Some(3));
        log.append(batch(500, 1, 300, 0), 4).await.unwrap();
        let with_one_more = read_all(&log, 0).await;
        drop(log); // a crash: nothing closed, nothing flushed beyond what appends synced

        let log = open(dir.path(), small_config(), 0).await;
        assert_eq!(read_all(&log, 0).await, with_one_more, "after a crash");
        assert_eq!(log.leader_epochs().latest_epoch(), Some(4));
        assert_eq!(log.verify().await.unwrap(), 201);
    });
}

#[test]
fn logs_keep_read_ahead_windows_only_within_the_shards_budget() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let shard = ShardStorage::new(ShardStorageConfig {
            cache_bytes: 0,
            readahead_windows_max: 2,
            ..ShardStorageConfig::default()
        });
        let mut logs = Vec::new();
        for i in 0..4 {
            let path = dir.path().join(format!("log-{i}"));
            let log = Log::open(&path, &identity(), small_config(), shard.clone())
                .await
                .unwrap();
            for seed in 0..8 {
                log.append(batch(seed, 1, 500, 0), 0).await.unwrap();
            }
            logs.push(log);
        }
        for log in &logs {
            assert_eq!(read_all(log, 0).await.len(), 8, "every batch, from disk");
        }
        assert_eq!(shard.readahead_windows(), 2, "two logs keep their windows");
        // A log that lets its window go (here, closing) makes room for another.
        logs.remove(0).close().await.unwrap();
        for log in &logs {
            assert_eq!(read_all(log, 0).await.len(), 8);
        }
        assert!(shard.readahead_windows() <= 2);
        drop(logs);
        assert_eq!(
            shard.readahead_windows(),
            0,
            "dropped logs give their windows back"
        );
    });
}

#[test]
fn concurrent_appenders_share_syncs() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), small_config(), 1 << 20).await;
        let writers: Vec<_> = (0..8)
            .map(|writer| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    for i in 0..25 {
                        log.append(batch(writer * 100 + i, 1, 100, 0), 0)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await;
        }
        let stats = log.stats();
        assert_eq!(stats.batches_appended, 200);
        assert_eq!(log.durable_offset(), 200);
        assert!(
            stats.syncs < 100,
            "8 writers should share syncs, got {} syncs for 200 batches",
            stats.syncs
        );
    });
}

#[test]
fn interval_and_never_policies_write_behind_and_sync_on_tick() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let interval = FlushPolicy::Interval { interval_ms: 20 };
        let log = open(
            &dir.path().join("interval"),
            LogConfig {
                flush: interval,
                ..small_config()
            },
            1 << 20,
        )
        .await;
        log.append(batch(0, 1, 100, 0), 0).await.unwrap();
        assert_eq!(
            (log.log_end_offset(), log.durable_offset()),
            (1, 0),
            "not synced on append"
        );
        log.tick().await.unwrap();
        assert_eq!(log.stats().syncs, 0, "not synced before the interval is up");
        glommio::timer::sleep(Duration::from_millis(25)).await;
        log.tick().await.unwrap();
        assert_eq!((log.durable_offset(), log.stats().syncs), (1, 1));

        let log = open(
            &dir.path().join("never"),
            LogConfig {
                flush: FlushPolicy::Never,
                ..small_config()
            },
            1 << 20,
        )
        .await;
        log.append(batch(0, 1, 100, 0), 0).await.unwrap();
        assert_eq!(
            log.stats().writes,
            0,
            "a small append waits for a write's worth"
        );
        log.tick().await.unwrap();
        assert_eq!(
            (log.stats().writes, log.stats().syncs, log.durable_offset()),
            (1, 0, 0)
        );
        // Past a write's worth, appends start writing in the background.
        for seed in 1..40 {
            log.append(batch(seed, 1, 1000, 0), 0).await.unwrap();
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
        assert!(log.stats().writes > 2, "{:?}", log.stats());
        log.close().await.unwrap();
    });
}

#[test]
fn segments_roll_by_size_by_age_and_on_request() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = open(
            dir.path(),
            LogConfig {
                segment_ms: 50,
                ..small_config()
            },
            1 << 20,
        )
        .await;
        log.append(batch(0, 1, 100, 0), 0).await.unwrap();
        log.roll().await.unwrap();
        assert_eq!(log.segment_base_offsets(), vec![0, 1]);
        log.roll().await.unwrap();
        assert_eq!(log.segment_count(), 2, "an empty segment is not rolled");
        log.append(batch(1, 1, 100, 0), 0).await.unwrap();
        glommio::timer::sleep(Duration::from_millis(60)).await;
        log.append(batch(2, 1, 100, 0), 0).await.unwrap();
        assert_eq!(log.segment_base_offsets(), vec![0, 1, 2], "rolled by age");
        for seed in 0..40 {
            log.append(batch(seed, 2, 1000, 0), 0).await.unwrap();
        }
        assert!(log.segment_count() >= 4, "rolled by size");
        for base in log.segment_base_offsets() {
            assert!(dir.path().join(format!("{base:020}.log")).exists());
        }
        // Sealing finishes in the background; verify waits for it.
        log.verify().await.unwrap();
        let sealed = &log.segment_base_offsets()[..log.segment_count() - 1];
        for base in sealed {
            let size = std::fs::metadata(dir.path().join(format!("{base:020}.log")))
                .unwrap()
                .len();
            assert!(size <= 64 * 1024, "sealed segment {base} is {size} bytes");
            assert!(dir.path().join(format!("{base:020}.index")).exists());
            assert!(dir.path().join(format!("{base:020}.timeindex")).exists());
        }
    });
}

#[test]
fn retention_deletes_whole_old_segments_by_size_time_and_start_offset() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            retention_bytes: Some(100 * 1024),
            retention_ms: Some(1000),
            ..small_config()
        };
        let log = open(dir.path(), config, 1 << 20).await;
        for seed in 0..100 {
            log.append(batch(seed, 1, 4000, 10_000 + seed as i64), 0)
                .await
                .unwrap();
        }
        let segments = log.segment_count();
        let deleted = log.apply_retention(0).await.unwrap();
        assert!(
            deleted > 0
                && log.size_bytes() >= 100 * 1024
                && log.size_bytes() < 100 * 1024 + 64 * 1024
        );
        assert_eq!(log.segment_count(), segments - deleted);
        let start = log.log_start_offset();
        assert_eq!(start, log.segment_base_offsets()[0]);
        assert!(matches!(
            log.read(start - 1, 1, i64::MAX).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert_eq!(read_all(&log, start).await.len() as i64, 100 - start);

        // By time: every sealed segment's newest record is older than now - 1000.
        log.apply_retention(20_000).await.unwrap();
        assert_eq!(log.segment_count(), 1, "only the active segment remains");
        // By start offset (DeleteRecords), persisted across a reopen.
        log.advance_log_start_offset(98).await.unwrap();
        assert_eq!(log.log_start_offset(), 98);
        log.close().await.unwrap();
        let log = open(dir.path(), small_config(), 1 << 20).await;
        assert_eq!(log.log_start_offset(), 98);
        assert_eq!(read_all(&log, 98).await.len(), 2);
    });
}

fn spare_files(dir: &Path) -> Vec<String> {
    names_ending(dir, ".recycled")
}

fn file_len(dir: &Path, base: i64) -> u64 {
    std::fs::metadata(dir.join(format!("{base:020}.log")))
        .unwrap()
        .len()
}

fn names_ending(dir: &Path, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(suffix))
        .collect();
    names.sort();
    names
}

/// Retention's deleted segments leave their names at once and their blocks through the
/// shard's trash; trash a crash left behind is freed by the next open.
#[test]
fn deleted_segments_go_through_the_trash_and_leftovers_go_at_open() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            retention_bytes: Some(100 * 1024),
            recycle_segments: false,
            ..small_config()
        };
        let storage = shard(0);
        let log = Log::open(dir.path(), &identity(), config, storage.clone())
            .await
            .unwrap();
        for seed in 0..60 {
            log.append(batch(seed, 1, 4000, 10_000 + seed as i64), 0)
                .await
                .unwrap();
        }
        let before = names_ending(dir.path(), ".log");
        let deleted = log.apply_retention(0).await.unwrap();
        assert!(deleted >= 1);
        let after = names_ending(dir.path(), ".log");
        assert_eq!(after.len(), before.len() - deleted, "{after:?}");
        storage.deletions_freed().await;
        assert!(names_ending(dir.path(), ".deleted").is_empty());
        assert!(storage.deleted_bytes_freed() >= deleted as u64 * 60 * 1024);
        assert_eq!(storage.delete_backlog_bytes(), 0);
        let expected = read_all(&log, log.log_start_offset()).await;
        drop(log);

        // A crash after the rename into the trash, before the blocks were freed.
        let leftover = dir.path().join("00000000000000000000.log.17.deleted");
        std::fs::write(&leftover, vec![1u8; 200_000]).unwrap();
        let storage = shard(0);
        let log = Log::open(dir.path(), &identity(), config, storage.clone())
            .await
            .unwrap();
        assert_eq!(read_all(&log, log.log_start_offset()).await, expected);
        storage.deletions_freed().await;
        assert!(!leftover.exists());
        assert_eq!(storage.deleted_bytes_freed(), 200_000);
    });
}

#[test]
fn a_segment_retention_deletes_becomes_the_next_one_and_its_old_batches_never_return() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            retention_bytes: Some(100 * 1024),
            ..small_config()
        };
        let log = open(dir.path(), config, 0).await;
        // Batches of exactly a page: the new data then ends where an old batch begins, with
        // no zero padding between them, and only offsets tell them apart.
        let value_bytes = (3900..4096)
            .find(|v| batch(0, 1, *v, 0).len() == 4096)
            .unwrap();
        let mut seed = 0;
        let mut append = async |log: &Rc<Log>, count: u64| {
            for _ in 0..count {
                let page = batch(seed % 10, 1, value_bytes, 10_000 + seed as i64);
                assert_eq!(page.len(), 4096);
                log.append(page, 0).await.unwrap();
                seed += 1;
            }
        };
        append(&log, 90).await;
        assert!(log.rolled_since_retention());
        assert!(log.apply_retention(0).await.unwrap() >= 2);
        assert!(!log.rolled_since_retention());
        let spares = spare_files(dir.path());
        assert_eq!(spares.len(), 1, "one spare is kept: {spares:?}");
        let stale_below: i64 = spares[0].trim_end_matches(".recycled").parse().unwrap();
        assert!(stale_below <= log.log_start_offset());

        // The next roll reuses it: the new active segment's file is longer than its data.
        log.roll().await.unwrap();
        assert!(spare_files(dir.path()).is_empty());
        let active = *log.segment_base_offsets().last().unwrap();
        assert!(file_len(dir.path(), active) > 50 * 1024);
        append(&log, 3).await;
        let expected = read_all(&log, log.log_start_offset()).await;
        let end = log.log_end_offset();
        drop(log); // a crash: behind the new batches lie the old segment's

        let log = open(dir.path(), config, 0).await;
        assert_eq!(
            log.log_end_offset(),
            end,
            "recovery stops at the old batches"
        );
        assert_eq!(read_all(&log, log.log_start_offset()).await, expected);
        log.verify().await.unwrap();
        let data = log.size_bytes();

        // Again, with a roll of the recycled segment before the crash: the sealed segment
        // must be cut to its data at once.
        append(&log, 60).await;
        log.apply_retention(0).await.unwrap();
        assert_eq!(spare_files(dir.path()).len(), 1);
        log.roll().await.unwrap();
        append(&log, 2).await;
        log.roll().await.unwrap();
        let sealed = log.segment_base_offsets();
        let recycled = sealed[sealed.len() - 2];
        assert_eq!(
            file_len(dir.path(), recycled),
            2 * 4096,
            "cut to its two batches"
        );
        // And a truncation inside a recycled active segment.
        log.apply_retention(0).await.unwrap();
        log.roll().await.unwrap();
        append(&log, 4).await;
        let cut = log.log_end_offset() - 4;
        log.truncate_to(cut).await.unwrap();
        append(&log, 1).await;
        let expected = read_all(&log, log.log_start_offset()).await;
        let end = log.log_end_offset();
        drop(log);
        let log = open(dir.path(), config, 0).await;
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(read_all(&log, log.log_start_offset()).await, expected);
        assert!(data > 0);
        log.verify().await.unwrap();

        // Off, the spare goes at the next open and retention deletes files again.
        log.apply_retention(0).await.unwrap();
        log.close().await.unwrap();
        let off = LogConfig {
            recycle_segments: false,
            ..config
        };
        let log = open(dir.path(), off, 0).await;
        assert!(spare_files(dir.path()).is_empty());
        append(&log, 60).await;
        log.apply_retention(0).await.unwrap();
        assert!(spare_files(dir.path()).is_empty());
        log.close().await.unwrap();
    });
}

#[test]
fn truncation_cuts_at_batch_boundaries_in_active_and_sealed_segments() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), small_config(), 1 << 20).await;
        for seed in 0..60 {
            log.append(batch(seed, 2, 1500, 0), seed as i32 / 20)
                .await
                .unwrap();
        }
        let all = read_all(&log, 0).await;
        // In the middle of the active segment, mid-batch: the whole batch goes.
        log.truncate_to(117).await.unwrap();
        assert_eq!(log.log_end_offset(), 116);
        assert_eq!(read_all(&log, 0).await, all[..58]);
        // Into a sealed segment: later segments are deleted, that one is active again.
        let segments_before = log.segment_count();
        log.truncate_to(10).await.unwrap();
        assert_eq!(log.log_end_offset(), 10);
        assert!(log.segment_count() < segments_before);
        assert_eq!(read_all(&log, 0).await, all[..5]);
        assert_eq!(log.leader_epochs().latest_epoch(), Some(0));
        let info = log.append(batch(99, 1, 10, 0), 7).await.unwrap();
        assert_eq!(info.base_offset, 10);
        drop(log);
        let log = open(dir.path(), small_config(), 1 << 20).await;
        assert_eq!(log.log_end_offset(), 11);
        assert_eq!(log.leader_epochs().end_offset_for(0, 11), Some((0, 10)));
        // At the log start: emptied and restarted there.
        log.truncate_to(0).await.unwrap();
        assert_eq!(
            (
                log.log_start_offset(),
                log.log_end_offset(),
                log.segment_count()
            ),
            (0, 0, 1)
        );
        log.truncate_to(0).await.unwrap();
    });
}

#[test]
fn a_replica_appends_its_leaders_batches_as_they_are_and_resets_past_its_end() {
    run(|| async {
        let leader_dir = tempfile::tempdir().unwrap();
        let follower_dir = tempfile::tempdir().unwrap();
        let leader = open(leader_dir.path(), small_config(), 1 << 20).await;
        let follower = open(follower_dir.path(), small_config(), 1 << 20).await;
        for seed in 0..6 {
            leader
                .append(batch(seed, 3, 100, 0), 4 + seed as i32 / 3)
                .await
                .unwrap();
        }
        let batches = read_all(&leader, 0).await;
        for bytes in &batches {
            let info = follower
                .start_append_replica(BytesMut::from(&bytes[..]))
                .unwrap();
            follower.finish_append(&info).await.unwrap();
        }
        assert_eq!(read_all(&follower, 0).await, batches);
        assert_eq!(follower.latest_epoch(), Some(5));
        assert_eq!(follower.end_offset_for_epoch(4), Some((4, 9)));
        assert_eq!(follower.end_offset_for_epoch(3), None);
        // A batch that does not continue the log is refused, changing nothing.
        let gap = follower.start_append_replica(BytesMut::from(&batches[1][..]));
        assert!(matches!(
            gap,
            Err(StorageError::NotContiguous {
                base_offset: 3,
                log_end_offset: 18,
                ..
            })
        ));
        // The leader's log start passed ours: start again, empty, there.
        follower.reset_to(500).await.unwrap();
        assert_eq!(
            (follower.log_start_offset(), follower.log_end_offset()),
            (500, 500)
        );
        assert_eq!(follower.latest_epoch(), None);
        drop(follower);
        let follower = open(follower_dir.path(), small_config(), 1 << 20).await;
        assert_eq!(
            (follower.log_start_offset(), follower.log_end_offset()),
            (500, 500)
        );
    });
}

#[test]
fn timestamp_lookup_finds_the_first_record_at_or_after() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), small_config(), 0).await;
        // Batch i holds records at 1000 + 10 i, +1, +2.
        for seed in 0..80 {
            log.append(batch(seed, 3, 1000, 1000 + 10 * seed as i64), 0)
                .await
                .unwrap();
        }
        let cases = [
            (0, Some((0, 1000))),
            (1001, Some((1, 1001))),
            (1003, Some((3, 1010))),
            (1785, Some((237, 1790))),
            (1795, None),
        ];
        for (timestamp, expected) in cases {
            let found = log
                .offset_for_timestamp(timestamp)
                .await
                .unwrap()
                .map(|t| (t.offset, t.timestamp));
            assert_eq!(found, expected, "timestamp {timestamp}");
        }
    });
}

fn flip_byte(path: &Path, position: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, position).unwrap();
    file.write_all_at(&[byte[0] ^ 0x5a], position).unwrap();
    file.sync_all().unwrap();
}

#[test]
fn a_flipped_byte_in_the_active_tail_is_cut_off_on_recovery() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let durable = LogConfig {
            flush: FlushPolicy::EveryBatch,
            ..small_config()
        };
        let log = open(dir.path(), durable, 1 << 20).await;
        let mut sizes = Vec::new();
        // Seven batches acknowledged as durable ...
        for seed in 0..7 {
            let bytes = batch(seed, 1, 500, 0);
            sizes.push(bytes.len() as u64);
            log.append(bytes, 0).await.unwrap();
        }
        // ... and three more written but never acknowledged: the crash came first.
        let mut unacknowledged = Vec::new();
        for seed in 7..10 {
            let bytes = batch(seed, 1, 500, 0);
            sizes.push(bytes.len() as u64);
            unacknowledged.push(log.start_append(bytes, 0).unwrap());
        }
        let end = log.log_end_offset();
        log.wait_until(end, Reach::Written, 0).await.unwrap();
        let before = read_all(&log, 0).await;
        assert_eq!(before.len(), 10);
        drop(log);
        // Damage batch 8, one of the unacknowledged: 8 and 9 are cut, the rest stays.
        let position: u64 = sizes[..8].iter().sum::<u64>() + 100;
        flip_byte(&dir.path().join(format!("{:020}.log", 0)), position);
        let log = open(dir.path(), durable, 1 << 20).await;
        assert_eq!(log.log_end_offset(), 8);
        assert_eq!(read_all(&log, 0).await, before[..8]);
        assert_eq!(
            log.append(batch(8, 1, 500, 0), 0)
                .await
                .unwrap()
                .base_offset,
            8
        );
        assert_eq!(log.verify().await.unwrap(), 9);
    });
}

/// An append waiting to be durable whose batch a truncation cuts (a follower catching
/// up with a new leader) fails: it must never be acknowledged, even once new batches
/// fill the same offsets.
#[test]
fn a_truncation_fails_the_appends_it_cuts() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            flush: FlushPolicy::EveryBatch,
            ..small_config()
        };
        let log = open(dir.path(), config, 1 << 20).await;
        for seed in 0..3 {
            log.append(batch(seed, 1, 100, 0), 0).await.unwrap();
        }
        let cut = log.start_append(batch(3, 1, 100, 0), 0).unwrap();
        let later = log.start_append(batch(4, 1, 100, 0), 0).unwrap();
        assert_eq!((cut.base_offset, later.base_offset), (3, 4));
        // Both are written, not synced, then cut.
        log.truncate_to(3).await.unwrap();
        // New batches take offsets 3 and 4 again, and become durable.
        log.append(batch(5, 1, 100, 1), 1).await.unwrap();
        log.append(batch(6, 1, 100, 1), 1).await.unwrap();
        let error = log.finish_append(&cut).await.unwrap_err();
        assert!(
            matches!(error, StorageError::Truncated { offset: 3, .. }),
            "{error}"
        );
        let error = log.finish_append(&later).await.unwrap_err();
        assert!(matches!(error, StorageError::Truncated { .. }), "{error}");
        // A wait that began after the truncation is not affected by it.
        log.wait_durable(5).await.unwrap();
    });
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_is_a_clear_error() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), small_config(), 0).await;
        for seed in 0..100 {
            log.append(batch(seed, 1, 1000, 0), 0).await.unwrap();
        }
        log.close().await.unwrap();
        let first = dir.path().join(format!("{:020}.log", 0));
        flip_byte(&first, 5000);
        let log = open(dir.path(), small_config(), 0).await;
        let error = read_all_result(&log).await.unwrap_err();
        let StorageError::Corrupt {
            path,
            position,
            reason,
        } = &error
        else {
            panic!("expected corruption, got {error}")
        };
        assert_eq!(path, &first);
        assert!(*position <= 5000 && reason.contains("CRC"), "{error}");
        let message = log.verify().await.unwrap_err().to_string();
        assert!(
            message.contains("00000000000000000000.log") && message.contains("CRC"),
            "{message}"
        );
        // With its index gone, the segment is rescanned on open, which finds it too.
        std::fs::remove_file(dir.path().join(format!("{:020}.index", 0))).unwrap();
        drop(log);
        let error = Log::open(dir.path(), &identity(), small_config(), shard(0))
            .await
            .unwrap_err();
        assert!(matches!(error, StorageError::Corrupt { .. }), "{error}");
    });
}

async fn read_all_result(log: &Log) -> Result<usize> {
    let mut offset = 0;
    let mut count = 0;
    loop {
        let batches = log.read(offset, 1 << 20, i64::MAX).await?;
        let Some(last) = batches.last() else {
            return Ok(count);
        };
        offset = BatchHeader::parse(last)?.next_offset();
        count += batches.len();
    }
}

#[test]
fn a_seal_cut_short_by_a_crash_is_finished_on_open_and_garbage_is_not() {
    run(|| async {
        for garbage in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let log = open(dir.path(), small_config(), 0).await;
            for seed in 0..200 {
                log.append(batch(seed, 1, 1000, 0), 0).await.unwrap();
            }
            let before = read_all(&log, 0).await;
            log.close().await.unwrap();
            // What a crash between roll and seal leaves: no index files, a padded tail.
            assert!(log.segment_count() > 2);
            let base = log.segment_base_offsets()[1];
            for extension in ["index", "timeindex"] {
                std::fs::remove_file(dir.path().join(format!("{base:020}.{extension}"))).unwrap();
            }
            let segment = dir.path().join(format!("{base:020}.log"));
            let size = std::fs::metadata(&segment).unwrap().len();
            let mut tail = vec![0u8; 3000];
            if garbage {
                tail[1500] = 7;
            }
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(&segment)
                .unwrap()
                .write_all(&tail)
                .unwrap();
            let reopened = Log::open(dir.path(), &identity(), small_config(), shard(0)).await;
            if garbage {
                let error = reopened.unwrap_err();
                assert!(
                    matches!(error, StorageError::Corrupt { position, .. } if position == size + 1500),
                    "{error}"
                );
                continue;
            }
            let log = reopened.unwrap();
            assert_eq!(read_all(&log, 0).await, before);
            assert_eq!(
                std::fs::metadata(&segment).unwrap().len(),
                size,
                "the padding is cut off again"
            );
            assert!(dir.path().join(format!("{base:020}.index")).exists());
        }
    });
}

#[test]
fn damaged_or_missing_indexes_are_rebuilt() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), small_config(), 0).await;
        for seed in 0..200 {
            log.append(batch(seed, 1, 1000, seed as i64), 0)
                .await
                .unwrap();
        }
        let before = read_all(&log, 0).await;
        log.close().await.unwrap();
        let bases = log.segment_base_offsets();
        std::fs::remove_file(dir.path().join(format!("{:020}.index", bases[0]))).unwrap();
        flip_byte(&dir.path().join(format!("{:020}.index", bases[1])), 70);
        std::fs::write(
            dir.path().join(format!("{:020}.timeindex", bases[2])),
            b"garbage",
        )
        .unwrap();
        let log = open(dir.path(), small_config(), 0).await;
        assert_eq!(read_all(&log, 0).await, before);
        assert_eq!(
            log.offset_for_timestamp(50)
                .await
                .unwrap()
                .map(|t| t.offset),
            Some(50)
        );
        assert!(dir.path().join(format!("{:020}.index", bases[0])).exists());
    });
}

/// Kafka's ListOffsets by time answers with the record, not its batch: inside compressed
/// batches too.
#[test]
fn timestamp_lookup_finds_the_record_inside_compressed_batches() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), small_config(), 0).await;
        let mut bases = Vec::new();
        for (k, codec) in weir_wire::Compression::ALL.into_iter().enumerate() {
            let time = 1000 * (k as i64 + 1);
            let mut builder = BatchBuilder::new(time);
            builder.compression(codec);
            for i in 0..10 {
                builder.append(time + i * 10, None, Some(b"value"), &[]);
            }
            bases.push((
                codec,
                time,
                log.append(builder.build(), 0).await.unwrap().base_offset,
            ));
        }
        log.close().await.unwrap();
        // Reopened without a cache, so the batches come from disk.
        let log = open(dir.path(), small_config(), 0).await;
        let newest = 1000 * weir_wire::Compression::ALL.len() as i64 + 90;
        assert_eq!(log.max_timestamp(), Some(newest));
        let found = log.offset_for_timestamp(newest).await.unwrap().unwrap();
        assert_eq!(found.offset, log.log_end_offset() - 1);
        for (codec, time, base) in bases {
            let found = log
                .offset_for_timestamp(time + 35)
                .await
                .unwrap()
                .expect("a record at or after it");
            assert_eq!(
                (found.offset, found.timestamp),
                (base + 4, time + 40),
                "{codec:?}"
            );
        }
    });
}

#[test]
fn a_directory_of_another_partition_is_refused() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path(), small_config(), 0)
            .await
            .close()
            .await
            .unwrap();
        let other = LogIdentity {
            topic: "events".into(),
            partition: 1,
        };
        let error = Log::open(dir.path(), &other, small_config(), shard(0))
            .await
            .unwrap_err();
        assert!(matches!(error, StorageError::WrongLog { .. }), "{error}");
    });
}

#[test]
fn the_open_segment_budget_is_kept() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let shard = shard(0);
        let log = Log::open(dir.path(), &identity(), small_config(), shard.clone())
            .await
            .unwrap();
        for seed in 0..200 {
            log.append(batch(seed, 1, 3000, 0), 0).await.unwrap();
        }
        assert!(log.segment_count() > 8);
        read_all(&log, 0).await;
        assert!(shard.open_segments() <= 4, "{} open", shard.open_segments());
    });
}

mod model {
    //! The log against a plain in-memory model: random sequences of append, read, roll,
    //! truncate, retention, record deletion, timestamp lookup, clean reopen and crash.

    use super::*;
    use quickcheck::{Arbitrary, Gen, QuickCheck};

    #[derive(Debug, Clone)]
    enum Op {
        Append {
            records: u8,
            value_bytes: u16,
            timestamp: u16,
        },
        Read {
            at: u16,
            max_bytes: u16,
        },
        Roll,
        Truncate {
            at: u16,
        },
        Retention {
            now: u16,
        },
        DeleteRecords {
            at: u16,
        },
        TimestampLookup {
            timestamp: u16,
        },
        Reopen,
        Crash,
    }

    impl Arbitrary for Op {
        fn arbitrary(g: &mut Gen) -> Op {
            let pick = u8::arbitrary(g) % 100;
            match pick {
                0..45 => Op::Append {
                    records: u8::arbitrary(g) % 5 + 1,
                    value_bytes: u16::arbitrary(g) % 3000,
                    timestamp: u16::arbitrary(g) % 2000,
                },
                45..65 => Op::Read {
                    at: u16::arbitrary(g),
                    max_bytes: u16::arbitrary(g) % 20_000,
                },
                65..70 => Op::Roll,
                70..75 => Op::Truncate {
                    at: u16::arbitrary(g),
                },
                75..80 => Op::Retention {
                    now: u16::arbitrary(g) % 4000,
                },
                80..84 => Op::DeleteRecords {
                    at: u16::arbitrary(g),
                },
                84..90 => Op::TimestampLookup {
                    timestamp: u16::arbitrary(g) % 2100,
                },
                90..95 => Op::Reopen,
                _ => Op::Crash,
            }
        }
    }

    #[derive(Debug, Clone)]
    struct Case {
        ops: Vec<Op>,
        flush: FlushPolicy,
        cache_bytes: u64,
        retention_bytes: Option<u64>,
        retention_ms: Option<u64>,
    }

    impl Arbitrary for Case {
        fn arbitrary(g: &mut Gen) -> Case {
            let flush = *g
                .choose(&[
                    FlushPolicy::EveryBatch,
                    FlushPolicy::Never,
                    FlushPolicy::Interval { interval_ms: 1 },
                ])
                .unwrap();
            Case {
                ops: Vec::arbitrary(g),
                flush,
                cache_bytes: *g.choose(&[0, 20_000, 1 << 20]).unwrap(),
                retention_bytes: *g.choose(&[None, Some(40_000), Some(150_000)]).unwrap(),
                retention_ms: *g.choose(&[None, Some(500)]).unwrap(),
            }
        }

        fn shrink(&self) -> Box<dyn Iterator<Item = Case>> {
            let base = self.clone();
            Box::new(self.ops.shrink().map(move |ops| Case {
                ops,
                ..base.clone()
            }))
        }
    }

    #[derive(Debug, Clone)]
    struct ModelBatch {
        bytes: Bytes,
        segment: i64,
        timestamps: Vec<i64>,
    }

    impl ModelBatch {
        fn header(&self) -> BatchHeader {
            BatchHeader::parse(&self.bytes).unwrap()
        }
    }

    /// What the log must hold: its batches, which segment each is in, and the log start.
    #[derive(Debug, Default)]
    struct Model {
        batches: Vec<ModelBatch>,
        /// Segment base offsets; the last is the active segment.
        segments: Vec<i64>,
        log_start: i64,
        next: i64,
    }

    impl Model {
        fn segment_bytes(&self, base: i64) -> u64 {
            self.batches
                .iter()
                .filter(|b| b.segment == base)
                .map(|b| b.bytes.len() as u64)
                .sum()
        }

        fn active_bytes(&self) -> u64 {
            self.segment_bytes(*self.segments.last().unwrap())
        }

        fn append(&mut self, mut bytes: BytesMut, timestamps: Vec<i64>, config: &LogConfig) {
            let header = BatchHeader::parse(&bytes).unwrap();
            let active = self.active_bytes();
            if active > 0 && active + bytes.len() as u64 > config.segment_bytes {
                self.segments.push(self.next);
            }
            batch::assign_offset_and_epoch(&mut bytes, self.next, 1);
            self.next += i64::from(header.last_offset_delta) + 1;
            let segment = *self.segments.last().unwrap();
            self.batches.push(ModelBatch {
                bytes: bytes.freeze(),
                segment,
                timestamps,
            });
        }

        fn roll(&mut self) {
            if self.active_bytes() > 0 {
                self.segments.push(self.next);
            }
        }

        fn truncate(&mut self, offset: i64) {
            if offset >= self.next {
                return;
            }
            if offset <= self.log_start {
                *self = Model {
                    segments: vec![offset],
                    log_start: offset,
                    next: offset,
                    ..Model::default()
                };
                return;
            }
            let cut = self
                .batches
                .iter()
                .find(|b| b.header().last_offset() >= offset);
            if let Some(cut) = cut.map(|b| b.header().base_offset) {
                self.next = cut;
            }
            self.batches.retain(|b| b.header().last_offset() < offset);
            self.segments.retain(|base| *base < offset);
            if self.next < self.log_start {
                let log_start = self.log_start;
                *self = Model {
                    segments: vec![log_start],
                    log_start,
                    next: log_start,
                    ..Model::default()
                };
            }
        }

        /// Deletes segments below the log start and, with `now`, by the retention settings.
        fn retention(&mut self, now: Option<i64>, config: &LogConfig) {
            let total: u64 = self.batches.iter().map(|b| b.bytes.len() as u64).sum();
            let retention_bytes = config.retention_bytes.filter(|_| now.is_some());
            let mut excess = retention_bytes.map_or(0, |limit| total.saturating_sub(limit));
            let expired_before =
                now.and_then(|now| config.retention_ms.map(|ms| now.saturating_sub(ms as i64)));
            let mut doomed = 0;
            for (i, base) in self.segments[..self.segments.len() - 1].iter().enumerate() {
                let in_segment: Vec<&ModelBatch> =
                    self.batches.iter().filter(|b| b.segment == *base).collect();
                let size: u64 = in_segment.iter().map(|b| b.bytes.len() as u64).sum();
                let next_offset = in_segment
                    .last()
                    .map_or(*base, |b| b.header().next_offset());
                let max_timestamp = in_segment
                    .iter()
                    .map(|b| b.header().max_timestamp)
                    .max()
                    .unwrap_or(-1);
                let below_start = next_offset <= self.log_start;
                let expired =
                    expired_before.is_some_and(|limit| max_timestamp >= 0 && max_timestamp < limit);
                let too_big = excess >= size && excess > 0;
                if !(below_start || expired || too_big) {
                    break;
                }
                excess = excess.saturating_sub(size);
                doomed = i + 1;
            }
            if doomed > 0 {
                let new_base = self.segments[doomed];
                self.log_start = self.log_start.max(new_base);
                let removed: Vec<i64> = self.segments.drain(..doomed).collect();
                self.batches.retain(|b| !removed.contains(&b.segment));
            }
        }

        /// Batches from the one holding `offset`.
        fn from(&self, offset: i64) -> Vec<Bytes> {
            self.batches
                .iter()
                .filter(|b| b.header().next_offset() > offset)
                .map(|b| b.bytes.clone())
                .collect()
        }

        fn timestamp_lookup(&self, timestamp: i64) -> Option<(i64, i64)> {
            self.batches.iter().find_map(|b| {
                let base = b.header().base_offset;
                b.timestamps
                    .iter()
                    .enumerate()
                    .map(|(i, ts)| (base + i as i64, *ts))
                    .find(|(offset, ts)| *ts >= timestamp && *offset >= self.log_start)
            })
        }

        fn offset_at(&self, at: u16) -> i64 {
            // Mostly inside the log, sometimes just outside it.
            let span = self.next - self.log_start + 3;
            self.log_start - 1 + i64::from(at) % span
        }
    }

    fn model_batch(
        seed: u64,
        records: u8,
        value_bytes: u16,
        timestamp: u16,
    ) -> (BytesMut, Vec<i64>) {
        let bytes = batch(
            seed,
            usize::from(records),
            usize::from(value_bytes),
            i64::from(timestamp),
        );
        let timestamps = (0..i64::from(records))
            .map(|i| i64::from(timestamp) + i % 3)
            .collect();
        (bytes, timestamps)
    }

    fn check(case: Case) -> bool {
        let mut ok = true;
        run(|| async {
            ok = check_case(case).await;
        });
        ok
    }

    async fn check_case(case: Case) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            flush: case.flush,
            retention_bytes: case.retention_bytes,
            retention_ms: case.retention_ms,
            write_chunk_bytes: 4096,
            ..small_config()
        };
        let shard = shard(case.cache_bytes);
        let mut log = Log::open(dir.path(), &identity(), config, shard.clone())
            .await
            .unwrap();
        let mut model = Model {
            segments: vec![0],
            ..Model::default()
        };
        for (seed, op) in case.ops.iter().enumerate() {
            match op {
                Op::Append {
                    records,
                    value_bytes,
                    timestamp,
                } => {
                    let (bytes, timestamps) =
                        model_batch(seed as u64, *records, *value_bytes, *timestamp);
                    let info = log.append(bytes.clone(), 1).await.unwrap();
                    assert_eq!(info.base_offset, model.next, "{op:?}");
                    model.append(bytes, timestamps, &config);
                }
                Op::Read { at, max_bytes } => {
                    let offset = model.offset_at(*at);
                    let result = log.read(offset, usize::from(*max_bytes), i64::MAX).await;
                    if offset < model.log_start || offset > model.next {
                        assert!(
                            matches!(result, Err(StorageError::OffsetOutOfRange { .. })),
                            "{op:?}: {result:?}"
                        );
                        continue;
                    }
                    let found = result.unwrap();
                    let expected = model.from(offset);
                    assert_eq!(found.is_empty(), expected.is_empty(), "{op:?} at {offset}");
                    assert!(
                        found.len() <= expected.len() && found[..] == expected[..found.len()],
                        "{op:?}: not a prefix"
                    );
                    let total: usize = found.iter().map(Bytes::len).sum();
                    assert!(
                        found.len() <= 1 || total <= usize::from(*max_bytes),
                        "{op:?}: over the byte limit"
                    );
                }
                Op::Roll => {
                    log.roll().await.unwrap();
                    // Under write-behind, pending batches are written after the roll.
                    if case.flush == FlushPolicy::EveryBatch {
                        model.roll();
                    } else {
                        log.flush().await.unwrap();
                        resync_segments(&log, &mut model);
                    }
                }
                Op::Truncate { at } => {
                    let offset = model.offset_at(*at).max(0);
                    log.truncate_to(offset).await.unwrap();
                    model.truncate(offset);
                }
                Op::Retention { now } => {
                    log.flush().await.unwrap();
                    resync_segments(&log, &mut model);
                    log.apply_retention(i64::from(*now)).await.unwrap();
                    model.retention(Some(i64::from(*now)), &config);
                }
                Op::DeleteRecords { at } => {
                    let offset = model.offset_at(*at).clamp(0, model.next);
                    log.flush().await.unwrap();
                    resync_segments(&log, &mut model);
                    log.advance_log_start_offset(offset).await.unwrap();
                    model.log_start = model.log_start.max(offset);
                    model.retention(None, &config);
                }
                Op::TimestampLookup { timestamp } => {
                    let found = log
                        .offset_for_timestamp(i64::from(*timestamp))
                        .await
                        .unwrap();
                    let expected = model.timestamp_lookup(i64::from(*timestamp));
                    assert_eq!(found.map(|t| (t.offset, t.timestamp)), expected, "{op:?}");
                }
                Op::Reopen | Op::Crash => {
                    if matches!(op, Op::Reopen) || case.flush != FlushPolicy::EveryBatch {
                        log.close().await.unwrap();
                    }
                    drop(log);
                    log = Log::open(dir.path(), &identity(), config, shard.clone())
                        .await
                        .unwrap();
                    // Opening removes segments wholly before the log start.
                    resync_segments(&log, &mut model);
                    model.retention(None, &config);
                }
            }
            assert_eq!(log.log_end_offset(), model.next, "after {op:?}");
            assert_eq!(log.log_start_offset(), model.log_start, "after {op:?}");
            if case.flush == FlushPolicy::EveryBatch {
                assert_eq!(log.segment_base_offsets(), model.segments, "after {op:?}");
            }
        }
        let all = read_all(&log, model.log_start).await;
        assert_eq!(all, model.from(model.log_start));
        // Closing waits for background writes, which must not outlive the directory.
        log.close().await.unwrap();
        true
    }

    /// Under write-behind, which segment a batch lands in depends on when it was written;
    /// once everything is written, the model takes the log's segment boundaries.
    fn resync_segments(log: &Log, model: &mut Model) {
        model.segments = log.segment_base_offsets();
        let segments = model.segments.clone();
        // Batches before the first segment went with segments deleted below the log start.
        let log_start = model.log_start;
        model.batches.retain(|b| {
            let kept = b.header().base_offset >= segments[0];
            assert!(
                kept || b.header().next_offset() <= log_start,
                "a readable batch was deleted"
            );
            kept
        });
        for batch in &mut model.batches {
            let base = batch.header().base_offset;
            batch.segment = *segments.iter().rev().find(|s| **s <= base).unwrap();
        }
    }

    #[test]
    fn log_agrees_with_model() {
        QuickCheck::new()
            .tests(60)
            .max_tests(200)
            .quickcheck(check as fn(Case) -> bool);
    }
}
