//! The machine's own limits, measured with the same tools weir uses: O_DIRECT writes and
//! reads through glommio on the data directory's device, write+fdatasync latency, and
//! loopback TCP bandwidth and round trips.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use glommio::io::{DmaFile, OpenOptions};
use glommio::{LocalExecutorBuilder, Placement};
use serde::Serialize;

use crate::Percentiles;
use crate::percentiles::nanos_histogram;

/// What the data directory's device does with O_DIRECT.
#[derive(Debug, Clone, Serialize)]
pub struct DiskLimits {
    /// Sequential 1 MiB O_DIRECT writes appended to an empty file, one in flight, ended by
    /// one fdatasync: the best of three trials of 1 GiB.
    pub direct_write_mb_s: f64,
    /// Sequential 1 MiB O_DIRECT reads of that file, one in flight (best of three).
    pub direct_read_mb_s: f64,
    /// Each sample: one 16 KiB O_DIRECT write appended to the file, then fdatasync. (Into
    /// preallocated space this was slower on ext4, so the best pattern is the limit.)
    pub fdatasync_us: Percentiles,
}

#[derive(Debug, Clone, Copy)]
pub struct DiskOptions {
    pub bandwidth_bytes: u64,
    pub sync_samples: usize,
}

impl Default for DiskOptions {
    fn default() -> DiskOptions {
        DiskOptions {
            bandwidth_bytes: 1 << 30,
            sync_samples: 3000,
        }
    }
}

const BLOCK_BYTES: usize = 1 << 20;
const BANDWIDTH_TRIALS: usize = 3;
const SYNC_WRITE_BYTES: usize = 16 << 10;

/// Measures the disk under `dir` (a scratch file is created there and removed).
pub fn measure_disk(dir: &Path, options: DiskOptions) -> anyhow::Result<DiskLimits> {
    on_scratch_file(dir, ".weir-limits-scratch", |file| async move {
        // The device's bandwidth drifts by a quarter between runs; its limit is the best of
        // three trials.
        let mut direct_write_mb_s: f64 = 0.0;
        let mut direct_read_mb_s: f64 = 0.0;
        for _ in 0..BANDWIDTH_TRIALS {
            file.truncate(0).await.map_err(io)?;
            direct_write_mb_s =
                direct_write_mb_s.max(write_bandwidth(&file, options.bandwidth_bytes).await?);
            direct_read_mb_s =
                direct_read_mb_s.max(read_bandwidth(&file, options.bandwidth_bytes).await?);
        }
        let fdatasync_us = sync_latency(&file, options.sync_samples).await?;
        Ok(DiskLimits {
            direct_write_mb_s,
            direct_read_mb_s,
            fdatasync_us,
        })
    })
}

/// Runs `measure` on a fresh O_DIRECT scratch file `name` in `dir`, on a glommio executor
/// of its own, then closes and removes the file.
fn on_scratch_file<T, F, Fut>(dir: &Path, name: &str, measure: F) -> anyhow::Result<T>
where
    F: FnOnce(std::rc::Rc<DmaFile>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let path = dir.join(name);
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .map_err(std::io::Error::from)
        .context("starting glommio")?;
    let result = executor.run(async {
        weir_storage::probe_direct_io(dir).await?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(&path)
            .await
            .map_err(std::io::Error::from)
            .with_context(|| format!("creating {}", path.display()))?;
        let file = std::rc::Rc::new(file);
        let measured = measure(file.clone()).await;
        file.close_rc().await.map_err(std::io::Error::from)?;
        measured
    });
    let _ = std::fs::remove_file(&path);
    result
}

fn io(error: glommio::GlommioError<()>) -> anyhow::Error {
    std::io::Error::from(error).into()
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

async fn write_bandwidth(file: &DmaFile, bytes: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut position = 0;
    while position < bytes {
        let mut buffer = file.alloc_dma_buffer(BLOCK_BYTES);
        buffer.as_bytes_mut().fill((position >> 20) as u8 | 1);
        position += file.write_at(buffer, position).await.map_err(io)? as u64;
    }
    file.fdatasync().await.map_err(io)?;
    Ok(mb_per_s(bytes, started.elapsed()))
}

async fn read_bandwidth(file: &DmaFile, bytes: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut position = 0;
    while position < bytes {
        let read = file
            .read_at_aligned(position, BLOCK_BYTES)
            .await
            .map_err(io)?;
        anyhow::ensure!(!read.is_empty(), "short read at {position}");
        position += read.len() as u64;
    }
    Ok(mb_per_s(bytes, started.elapsed()))
}

async fn sync_latency(file: &DmaFile, samples: usize) -> anyhow::Result<Percentiles> {
    file.truncate(0).await.map_err(io)?;
    let mut sampler = SyncSampler { file, position: 0 };
    let mut histogram = nanos_histogram();
    for _ in 0..samples {
        sampler.sample(&mut histogram).await?;
    }
    Ok(Percentiles::from_nanos(&histogram))
}

/// Takes write+fdatasync samples on a scratch file: one 16 KiB O_DIRECT write appended,
/// then fdatasync, timed together. Benchmarks interleave these samples with their own, so
/// that the limit and the figure see the same moment of a drifting device.
#[derive(Debug)]
pub struct SyncSampler<'a> {
    file: &'a DmaFile,
    position: u64,
}

impl<'a> SyncSampler<'a> {
    /// `file` is an empty scratch file opened with `glommio::io::OpenOptions::dma_open`.
    pub fn new(file: &'a DmaFile) -> SyncSampler<'a> {
        SyncSampler { file, position: 0 }
    }

    pub async fn sample(
        &mut self,
        histogram: &mut hdrhistogram::Histogram<u64>,
    ) -> anyhow::Result<()> {
        let mut buffer = self.file.alloc_dma_buffer(SYNC_WRITE_BYTES);
        buffer.as_bytes_mut().fill((self.position >> 14) as u8 | 1);
        let started = Instant::now();
        self.file
            .write_at(buffer, self.position)
            .await
            .map_err(io)?;
        self.file.fdatasync().await.map_err(io)?;
        histogram.saturating_record(started.elapsed().as_nanos() as u64);
        self.position += SYNC_WRITE_BYTES as u64;
        Ok(())
    }
}

/// An ideal durable stream on the device: messages of `message_bytes` arrive at
/// `rate_mb_s`; one writer appends everything that has arrived as one O_DIRECT write and
/// fdatasyncs it, again and again (perfect group commit, nothing else to do). Each
/// message's latency runs from its arrival to the end of the sync that covered it, so
/// the device's stalls under sustained load count as they do for a broker. This is the
/// floor for a durable produce at that rate.
///
/// With `overwrite`, 256 MiB of the file are written first and the stream goes round them,
/// writing over blocks the file already has (as a log reusing a deleted segment's file
/// does): no fdatasync then writes file metadata, it only flushes the device.
pub fn measure_durable_stream(
    dir: &Path,
    rate_mb_s: f64,
    message_bytes: usize,
    duration: Duration,
    overwrite: bool,
) -> anyhow::Result<Percentiles> {
    on_scratch_file(dir, ".weir-limits-stream", |file| async move {
        let wrap_at = if overwrite {
            prewrite(&file, OVERWRITTEN_BYTES).await?;
            OVERWRITTEN_BYTES
        } else {
            u64::MAX
        };
        durable_stream(&file, rate_mb_s, message_bytes, duration, wrap_at).await
    })
}

const OVERWRITTEN_BYTES: u64 = 256 << 20;

/// Writes `bytes` of the file, syncs it, and lets the device settle.
async fn prewrite(file: &DmaFile, bytes: u64) -> anyhow::Result<()> {
    const CHUNK: usize = 1 << 20;
    let mut position = 0;
    while position < bytes {
        let mut buffer = file.alloc_dma_buffer(CHUNK);
        buffer.as_bytes_mut().fill(0);
        file.write_at(buffer, position).await.map_err(io)?;
        position += CHUNK as u64;
    }
    file.fdatasync().await.map_err(io)?;
    // The device may still be taking it in; its stalls would be the stream's.
    glommio::timer::sleep(Duration::from_secs(2)).await;
    Ok(())
}

async fn durable_stream(
    file: &DmaFile,
    rate_mb_s: f64,
    message_bytes: usize,
    duration: Duration,
    wrap_at: u64,
) -> anyhow::Result<Percentiles> {
    /// The first second is not counted.
    const WARMUP_NS: u64 = 1_000_000_000;
    const WRITE_BYTES_MAX: usize = 4 << 20;
    let interval_ns = (message_bytes as f64 * 1e9 / (rate_mb_s * 1e6)).max(1.0);
    let per_write = (WRITE_BYTES_MAX / message_bytes.max(1)).max(1) as u64;
    let mut histogram = nanos_histogram();
    let (mut taken, mut position) = (0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < duration {
        let now = started.elapsed().as_nanos() as u64;
        let arrived = (now as f64 / interval_ns) as u64 + 1;
        if arrived == taken {
            glommio::timer::sleep(Duration::from_nanos(
                (taken as f64 * interval_ns) as u64 - now,
            ))
            .await;
            continue;
        }
        let upto = arrived.min(taken + per_write);
        let bytes = ((upto - taken) as usize * message_bytes).div_ceil(4096) * 4096;
        if position + bytes as u64 > wrap_at {
            position = 0;
        }
        let mut buffer = file.alloc_dma_buffer(bytes);
        buffer.as_bytes_mut().fill(7);
        file.write_at(buffer, position).await.map_err(io)?;
        file.fdatasync().await.map_err(io)?;
        let done = started.elapsed().as_nanos() as u64;
        for message in taken..upto {
            let arrival = (message as f64 * interval_ns) as u64;
            if arrival >= WARMUP_NS {
                histogram.saturating_record(done - arrival);
            }
        }
        position += bytes as u64;
        taken = upto;
    }
    Ok(Percentiles::from_nanos(&histogram))
}

/// What one loopback TCP connection carries.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkLimits {
    /// One stream, 64 KiB writes, as a producer streams batches.
    pub loopback_tcp_mb_s: f64,
    /// 64-byte request, 64-byte answer, one at a time, TCP_NODELAY.
    pub loopback_rtt_us: Percentiles,
}

#[derive(Debug, Clone, Copy)]
pub struct NetworkOptions {
    pub bandwidth_duration: Duration,
    pub round_trips: usize,
}

impl Default for NetworkOptions {
    fn default() -> NetworkOptions {
        NetworkOptions {
            bandwidth_duration: Duration::from_secs(2),
            round_trips: 20_000,
        }
    }
}

pub fn measure_network(options: NetworkOptions) -> anyhow::Result<NetworkLimits> {
    Ok(NetworkLimits {
        loopback_tcp_mb_s: tcp_bandwidth(options.bandwidth_duration)?,
        loopback_rtt_us: tcp_round_trips(options.round_trips)?,
    })
}

fn tcp_bandwidth(duration: Duration) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let receiver = std::thread::spawn(move || -> std::io::Result<(u64, Duration)> {
        let (mut stream, _) = listener.accept()?;
        let mut buffer = vec![0u8; 1 << 20];
        let mut total = 0u64;
        let mut started = None;
        loop {
            let read = stream.read(&mut buffer)?;
            started.get_or_insert_with(Instant::now);
            if read == 0 {
                return Ok((total, started.map_or(Duration::ZERO, |s| s.elapsed())));
            }
            total += read as u64;
        }
    });
    let mut stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    let chunk = vec![7u8; 64 << 10];
    let started = Instant::now();
    while started.elapsed() < duration {
        stream.write_all(&chunk)?;
    }
    drop(stream);
    let (bytes, elapsed) = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    Ok(mb_per_s(bytes, elapsed))
}

fn tcp_round_trips(count: usize) -> anyhow::Result<Percentiles> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut message = [0u8; 64];
        loop {
            match stream.read_exact(&mut message) {
                Ok(()) => stream.write_all(&message)?,
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(error) => return Err(error),
            }
        }
    });
    let mut stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    let mut histogram = nanos_histogram();
    let mut message = [1u8; 64];
    for _ in 0..count {
        let started = Instant::now();
        stream.write_all(&message)?;
        stream.read_exact(&mut message)?;
        histogram.saturating_record(started.elapsed().as_nanos() as u64);
    }
    drop(stream);
    echo.join()
        .map_err(|_| anyhow::anyhow!("echo panicked"))??;
    Ok(Percentiles::from_nanos(&histogram))
}
