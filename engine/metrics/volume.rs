//! Per-volume I/O counters and a latency histogram, kept by a wrapper
//! around any [`BlockVolume`], so every front end is measured the same way.

use super::Sample;
use crate::bdev::DmaBuf;
use crate::volume::{AccessState, BlockVolume, IoError, VolumeInfo};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

/// Latency bucket upper bounds in microseconds (Prometheus `le` values).
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    10,
    20,
    50,
    100,
    200,
    500,
    1000,
    2000,
    5000,
    10_000,
    20_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    u64::MAX,
];

/// The counters of one volume on this node.
#[derive(Default, Debug)]
pub struct VolumeStats {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub other_ops: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub errors: AtomicU64,
    pub latency_us_sum: AtomicU64,
    /// Ops per latency bucket (not cumulative; made cumulative when rendered).
    pub latency_buckets: [AtomicU64; 16],
}

impl VolumeStats {
    fn record(&self, start: Instant) {
        let us = start.elapsed().as_micros() as u64;
        self.latency_us_sum.fetch_add(us, Relaxed);
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len() - 1);
        self.latency_buckets[i].fetch_add(1, Relaxed);
    }

    /// Appends this volume's samples.
    pub fn samples(&self, volume: &str, out: &mut Vec<Sample>) {
        let l = || vec![("volume", volume.to_string())];
        let lo = |op: &str| vec![("volume", volume.to_string()), ("op", op.to_string())];
        out.push(Sample::counter(
            "ferrite_volume_ops_total",
            "I/O operations completed on the volume",
            lo("read"),
            self.reads.load(Relaxed) as f64,
        ));
        out.push(Sample::counter(
            "ferrite_volume_ops_total",
            "I/O operations completed on the volume",
            lo("write"),
            self.writes.load(Relaxed) as f64,
        ));
        out.push(Sample::counter(
            "ferrite_volume_ops_total",
            "I/O operations completed on the volume",
            lo("other"),
            self.other_ops.load(Relaxed) as f64,
        ));
        out.push(Sample::counter(
            "ferrite_volume_bytes_total",
            "Bytes read or written",
            lo("read"),
            self.read_bytes.load(Relaxed) as f64,
        ));
        out.push(Sample::counter(
            "ferrite_volume_bytes_total",
            "Bytes read or written",
            lo("write"),
            self.write_bytes.load(Relaxed) as f64,
        ));
        out.push(Sample::counter(
            "ferrite_volume_errors_total",
            "I/O operations that failed",
            l(),
            self.errors.load(Relaxed) as f64,
        ));
        let mut cum = 0u64;
        for (i, b) in LATENCY_BUCKETS_US.iter().enumerate() {
            cum += self.latency_buckets[i].load(Relaxed);
            let le = if *b == u64::MAX {
                "+Inf".to_string()
            } else {
                format!("{}", *b as f64 / 1e6)
            };
            out.push(Sample::counter(
                "ferrite_volume_latency_seconds_bucket",
                "I/O latency histogram",
                vec![("volume", volume.to_string()), ("le", le)],
                cum as f64,
            ));
        }
        out.push(Sample::counter(
            "ferrite_volume_latency_seconds_sum",
            "Sum of I/O latencies",
            l(),
            self.latency_us_sum.load(Relaxed) as f64 / 1e6,
        ));
        out.push(Sample::counter(
            "ferrite_volume_latency_seconds_count",
            "Number of I/O latencies recorded",
            l(),
            cum as f64,
        ));
    }
}

/// A volume whose every call is counted and timed.
pub struct MeteredVolume {
    inner: Arc<dyn BlockVolume>,
    stats: Arc<VolumeStats>,
}

impl MeteredVolume {
    pub fn new(inner: Arc<dyn BlockVolume>, stats: Arc<VolumeStats>) -> Arc<Self> {
        Arc::new(Self { inner, stats })
    }

    fn done<T>(&self, start: Instant, r: Result<T, IoError>) -> Result<T, IoError> {
        self.stats.record(start);
        if r.is_err() {
            self.stats.errors.fetch_add(1, Relaxed);
        }
        r
    }

    /// [`Self::done`] for a write of `len` bytes, counted if it succeeded.
    fn write_done(
        &self,
        start: Instant,
        len: usize,
        r: Result<(), IoError>,
    ) -> Result<(), IoError> {
        if r.is_ok() {
            self.stats.writes.fetch_add(1, Relaxed);
            self.stats.write_bytes.fetch_add(len as u64, Relaxed);
        }
        self.done(start, r)
    }
}

impl BlockVolume for MeteredVolume {
    fn info(&self) -> VolumeInfo {
        self.inner.info()
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let t = Instant::now();
        let r = self.inner.read(offset, buf);
        if r.is_ok() {
            self.stats.reads.fetch_add(1, Relaxed);
            self.stats.read_bytes.fetch_add(buf.len() as u64, Relaxed);
        }
        self.done(t, r)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        let t = Instant::now();
        let r = self.inner.write(offset, data);
        self.write_done(t, data.len(), r)
    }

    fn write_shared(&self, offset: u64, data: Arc<DmaBuf>) -> Result<(), IoError> {
        let t = Instant::now();
        let len = data.len();
        let r = self.inner.write_shared(offset, data);
        self.write_done(t, len, r)
    }

    fn flush(&self) -> Result<(), IoError> {
        let t = Instant::now();
        self.stats.other_ops.fetch_add(1, Relaxed);
        let r = self.inner.flush();
        self.done(t, r)
    }

    fn write_zeroes(&self, offset: u64, len: u64, deallocate: bool) -> Result<(), IoError> {
        let t = Instant::now();
        self.stats.other_ops.fetch_add(1, Relaxed);
        let r = self.inner.write_zeroes(offset, len, deallocate);
        self.done(t, r)
    }

    fn unmap(&self, offset: u64, len: u64) -> Result<(), IoError> {
        let t = Instant::now();
        self.stats.other_ops.fetch_add(1, Relaxed);
        let r = self.inner.unmap(offset, len);
        self.done(t, r)
    }

    fn compare_and_write(&self, offset: u64, compare: &[u8], write: &[u8]) -> Result<(), IoError> {
        let t = Instant::now();
        let r = self.inner.compare_and_write(offset, compare, write);
        if r.is_ok() {
            self.stats.writes.fetch_add(1, Relaxed);
            self.stats
                .write_bytes
                .fetch_add(write.len() as u64, Relaxed);
        }
        self.done(t, r)
    }

    fn access_state(&self) -> AccessState {
        self.inner.access_state()
    }
}
