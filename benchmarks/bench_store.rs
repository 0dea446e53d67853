//! `make bench-store`: the chunk store against the raw ceiling of the same
//! backing file, measured in the same run: fio's io_uring engine with
//! direct I/O (Debian's `fio`) first, then the store formatted over the
//! same file.
//!
//! Figures: 4 KiB random writes and reads at queue depth 32 (IOPS), 128 KiB
//! sequential writes and a 128 KiB sequential read of the randomly written
//! set at queue depth 32 (MB/s), and the store's write amplification
//! (device bytes written / user bytes written, measured after a checkpoint
//! so that deferred home writes and checkpoints are counted).
//!
//! Environment: `FERRITE_BENCH_FILE` (default: a file in the temp dir),
//! `FERRITE_BENCH_SIZE_MB` (default 3072), `FERRITE_BENCH_SECS` (per
//! phase, default 8), `FERRITE_BENCH_RELOCATE` (1, the default: home
//! writes relocated, and the bench leaves the store idle until its cleaner
//! settles, at most `FERRITE_BENCH_CLEAN_SECS` (default 120), then reads
//! the working set in order again; 0: in place); the store README lists
//! the others.

use ferrite_benchmarks::{median, result};
use ferrite_engine::bdev::{dma, Backend};
use ferrite_engine::rt::{Config, PollMode, Runtime};
use ferrite_engine::store::{ChunkStore, StoreOptions, StoreStats};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const K4: u64 = 4096;
const EXTENT: u64 = 256 << 20;
fn qd() -> usize {
    env_u64("FERRITE_BENCH_QD", 32) as usize
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs one fio job; returns (IOPS, bytes/s) of its reads or writes.
fn fio(file: &Path, name: &str, rw: &str, bs: &str, size_mb: u64, secs: u64) -> Option<(f64, f64)> {
    fio_with(file, name, rw, bs, size_mb, secs, &[])
}

/// [`fio`] with extra options.
fn fio_with(
    file: &Path,
    name: &str,
    rw: &str,
    bs: &str,
    size_mb: u64,
    secs: u64,
    extra: &[&str],
) -> Option<(f64, f64)> {
    let mut cmd = Command::new("fio");
    cmd.args(extra);
    cmd.args([
        "--output-format=json",
        &format!("--name={name}"),
        &format!("--filename={}", file.display()),
        "--ioengine=io_uring",
        "--direct=1",
        &format!("--rw={rw}"),
        &format!("--bs={bs}"),
        &format!("--iodepth={}", qd()),
        &format!("--size={size_mb}M"),
        "--randrepeat=0",
        "--norandommap",
        "--group_reporting",
    ]);
    if secs > 0 {
        cmd.args([&format!("--runtime={secs}"), "--time_based"]);
    }
    let out = cmd.output().ok()?;
    if !out.status.success() {
        eprintln!(
            "fio {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let job = &v["jobs"][0];
    let dir = if rw.contains("read") { "read" } else { "write" };
    Some((job[dir]["iops"].as_f64()?, job[dir]["bw_bytes"].as_f64()?))
}

struct Phase {
    ops: u64,
    bytes: u64,
    secs: f64,
    dev_written: u64,
    user_written: u64,
    batches: u64,
    flushes: u64,
    cpu: f64,
    /// Operations completed in each whole second of the phase: a cliff
    /// (a sustained load running out of something) shows as a drop.
    per_sec: Vec<u64>,
}

/// `QD` coroutines over both reactors, each running `op(i, rng)` until the
/// deadline or until `op` returns false.
fn run_qd(
    rt: &Runtime,
    store: &Arc<ChunkStore>,
    secs: u64,
    op: impl Fn(&ChunkStore, u64, &mut u64) -> Option<u64> + Send + Sync + 'static,
) -> Phase {
    let before = store.stats();
    let op = Arc::new(op);
    let ops = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let t0 = Instant::now();
    let cpu0 = ferrite_sys::process_cpu_time();
    let joins: Vec<_> = (0..qd())
        .map(|i| {
            let (s, op, ops, bytes) = (store.clone(), op.clone(), ops.clone(), bytes.clone());
            rt.spawn_on(i % rt.reactor_count(), move || {
                let mut rng =
                    0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                while Instant::now() < deadline {
                    match op(&s, i as u64, &mut rng) {
                        Some(n) => {
                            ops.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(n, Ordering::Relaxed);
                        }
                        None => break,
                    }
                }
            })
        })
        .collect();
    // Sampled from this thread while the coroutines run.
    let mut per_sec = Vec::new();
    let mut last = 0;
    let mut next_tick = t0 + Duration::from_secs(1);
    while !joins.iter().all(|j| j.is_finished()) {
        std::thread::sleep(Duration::from_millis(5));
        if Instant::now() >= next_tick {
            let now = ops.load(Ordering::Relaxed);
            per_sec.push(now - last);
            last = now;
            next_tick += Duration::from_secs(1);
        }
    }
    for j in joins {
        j.join().expect("benchmark coroutine");
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (ferrite_sys::process_cpu_time() - cpu0).as_secs_f64() / secs;
    let mid = store.stats();
    // Count deferred home writes and checkpoints in the figures.
    store.checkpoint().expect("checkpoint");
    let after = store.stats();
    Phase {
        ops: ops.load(Ordering::Relaxed),
        bytes: bytes.load(Ordering::Relaxed),
        secs,
        dev_written: after.device_bytes_written - before.device_bytes_written,
        user_written: after.user_bytes_written - before.user_bytes_written,
        batches: mid.batches - before.batches,
        flushes: mid.flushes - before.flushes,
        cpu,
        per_sec,
    }
}

fn next(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

fn main() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .try_init();
    let size_mb = env_u64("FERRITE_BENCH_SIZE_MB", 3072);
    let secs = env_u64("FERRITE_BENCH_SECS", 8);
    let file: PathBuf = std::env::var("FERRITE_BENCH_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("ferrite-bench-store.img"));
    // Random I/O working set and sequential write amount (MiB); smaller or
    // larger ones for profiling a single phase.
    let working_mb = env_u64("FERRITE_BENCH_WORKING_MB", 1024);
    let seq_mb = env_u64("FERRITE_BENCH_SEQ_MB", 1024);

    // The backing file, fully written once so that neither fio nor the
    // store pays for file-system block allocation.
    println!(
        "backing file {} ({size_mb} MiB), {secs} s per timed phase",
        file.display()
    );
    let have_fio = Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let fresh = std::fs::metadata(&file)
        .map(|m| m.len() != size_mb << 20)
        .unwrap_or(true);
    if fresh {
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(size_mb << 20))
            .expect("create the backing file");
        if have_fio {
            fio(&file, "fill", "write", "1M", size_mb, 0).expect("fio fill");
        } else {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .expect("open");
            let buf = vec![1u8; 1 << 20];
            for i in 0..size_mb {
                std::os::unix::fs::FileExt::write_all_at(&f, &buf, i << 20).expect("fill");
            }
            f.sync_all().expect("sync");
        }
    }

    // Each run measures the raw ceiling (fio) and then the store formatted
    // over the same file, so both see the machine in the same state; every
    // figure is the median of the runs.
    let runs = env_u64("FERRITE_BENCH_RUNS", 3).max(1);
    let no_raw = std::env::var("FERRITE_BENCH_NO_RAW").is_ok() || !have_fio;
    if !have_fio {
        eprintln!("fio not found (apt-get install fio): raw figures skipped");
    }
    dma::configure(256 << 20);
    let mut raw_runs: Vec<[f64; 6]> = Vec::new();
    let mut store_runs: Vec<[f64; 9]> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for run in 0..runs {
        if !no_raw {
            let rw = fio(&file, "randwrite", "randwrite", "4k", working_mb, secs)
                .map_or(f64::NAN, |v| v.0);
            let rr = fio(&file, "randread", "randread", "4k", working_mb, secs)
                .map_or(f64::NAN, |v| v.0);
            let sw = fio(&file, "seqwrite", "write", "128k", seq_mb, secs)
                .map_or(f64::NAN, |v| v.1 / 1e6);
            // For scale, not targets: the same random and sequential writes
            // with one fdatasync per 32 writes. fio does not wait for its
            // writes in flight before a sync, nor hold new ones back while
            // it runs, so this costs fio less than group commit costs the
            // store (which acknowledges nothing before its flush).
            let rw_sync = fio_with(
                &file,
                "randwrite-fdatasync32",
                "randwrite",
                "4k",
                working_mb,
                secs,
                &["--fdatasync=32"],
            )
            .map_or(f64::NAN, |v| v.0);
            let sw_sync = fio_with(
                &file,
                "seqwrite-fdatasync32",
                "write",
                "128k",
                seq_mb,
                secs,
                &["--fdatasync=32"],
            )
            .map_or(f64::NAN, |v| v.1 / 1e6);
            let sr = fio(&file, "seqread", "read", "128k", working_mb, 0)
                .map_or(f64::NAN, |v| v.1 / 1e6);
            raw_runs.push([rw, rr, sw, rw_sync, sr, sw_sync]);
        }
        let (rw, rr, sw, sr, clean, stats) = store_run(&file, secs, working_mb, seq_mb);
        let iops = |p: &Phase| p.ops as f64 / p.secs;
        let mbps = |p: &Phase| p.bytes as f64 / p.secs / 1e6;
        let wa = |p: &Phase| p.dev_written as f64 / p.user_written.max(1) as f64;
        let (sr2, clean_secs, clean_mib) =
            clean.as_ref().map_or((f64::NAN, f64::NAN, f64::NAN), |c| {
                (
                    mbps(&c.seqread),
                    c.secs,
                    (c.moved * K4) as f64 / (1 << 20) as f64,
                )
            });
        store_runs.push([
            iops(&rw),
            iops(&rr),
            mbps(&sw),
            wa(&rw),
            wa(&sw),
            mbps(&sr),
            sr2,
            clean_secs,
            clean_mib,
        ]);
        if let Some(c) = &clean {
            notes.push(format!(
                "run {run} store cleaner: idle {:.1} s until it settled, {} MiB moved, {} MiB written to the device, runs of the working set's blocks {} -> {}, empty 4 MiB segments {} -> {}",
                c.secs,
                (c.moved * K4) >> 20,
                c.dev_written >> 20,
                c.fragments.0,
                c.fragments.1,
                c.free_segments.0,
                c.free_segments.1
            ));
        }
        for (name, p) in [
            ("randwrite", &rw),
            ("randread", &rr),
            ("seqwrite", &sw),
            ("seqread", &sr),
        ]
        .into_iter()
        .chain(
            clean
                .as_ref()
                .map(|c| ("seqread after cleaning", &c.seqread)),
        ) {
            notes.push(format!(
                "run {run} store {name}: {} ops in {:.1} s, {} journal batches ({:.1} ops each), {} flushes, {:.0}% CPU (of 200%)",
                p.ops,
                p.secs,
                p.batches,
                p.ops as f64 / p.batches.max(1) as f64,
                p.flushes,
                100.0 * p.cpu
            ));
            if p.per_sec.len() >= 2 {
                notes.push(format!(
                    "run {run} store {name} ops per second: {:?}",
                    p.per_sec
                ));
            }
        }
        notes.push(format!(
            "run {run} store totals: {} held writes merged into {} streams, {} batches, {} flushes, {} checkpoints, journal {} MiB, home {} MiB ({} MiB relocated), direct {} MiB, checkpoints {} MiB, checksum errors {}",
            stats.held_writes,
            stats.merged_writes,
            stats.batches,
            stats.flushes,
            stats.checkpoints,
            stats.journal_bytes >> 20,
            stats.home_bytes >> 20,
            (stats.relocated_blocks * K4) >> 20,
            stats.direct_bytes >> 20,
            stats.checkpoint_bytes >> 20,
            stats.checksum_errors
        ));
        let pool = dma::pool_stats();
        notes.push(format!(
            "run {run} DMA pool: arena {} MiB ({}), {} MiB carved, {} buffers from the heap so far",
            pool.arena_bytes >> 20,
            if pool.hugepages {
                "hugepages"
            } else {
                "normal pages"
            },
            pool.carved_bytes >> 20,
            pool.heap_fallbacks
        ));
    }
    let med = |i: usize, v: &Vec<[f64; 9]>| median(v.iter().map(|r| r[i]).collect());
    let rawmed = |i: usize| -> Option<f64> {
        (!raw_runs.is_empty()).then(|| {
            median(
                raw_runs
                    .iter()
                    .map(|r| r[i])
                    .filter(|x| !x.is_nan())
                    .collect(),
            )
        })
    };
    let (s_rw, s_rr, s_sw, wa_rw, wa_sw, s_sr) = (
        med(0, &store_runs),
        med(1, &store_runs),
        med(2, &store_runs),
        med(3, &store_runs),
        med(4, &store_runs),
        med(5, &store_runs),
    );
    let (r_rw, r_rr, r_sw, r_rw_sync, r_sr, r_sw_sync) = (
        rawmed(0),
        rawmed(1),
        rawmed(2),
        rawmed(3),
        rawmed(4),
        rawmed(5),
    );
    let pct =
        |a: f64, b: Option<f64>| b.map_or("-".to_string(), |b| format!("{:.0}%", 100.0 * a / b));
    let show = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.0}"));
    println!();
    println!("median of {runs} runs; each run: fio on the file, then the store formatted over it");
    println!("| workload | store | raw fio (io_uring, direct) | store/raw | store WA |");
    println!("|---|---|---|---|---|");
    println!(
        "| 4k randwrite qd32 (IOPS) | {s_rw:.0} | {} | {} | {wa_rw:.2} |",
        show(r_rw),
        pct(s_rw, r_rw)
    );
    println!(
        "| 4k randread qd32 (IOPS) | {s_rr:.0} | {} | {} | |",
        show(r_rr),
        pct(s_rr, r_rr)
    );
    println!(
        "| 128k seqwrite qd32 (MB/s) | {s_sw:.0} | {} | {} | {wa_sw:.2} |",
        show(r_sw),
        pct(s_sw, r_sw)
    );
    println!(
        "| 4k randwrite qd32, fio with fdatasync every 32 writes (IOPS) | {s_rw:.0} | {} | {} | |",
        show(r_rw_sync),
        pct(s_rw, r_rw_sync)
    );
    println!(
        "| 128k seqwrite qd32, fio with fdatasync every 32 writes (MB/s) | {s_sw:.0} | {} | {} | |",
        show(r_sw_sync),
        pct(s_sw, r_sw_sync)
    );
    println!(
        "| 128k seqread qd32 of the randomly written working set (MB/s) | {s_sr:.0} | {} | {} | |",
        show(r_sr),
        pct(s_sr, r_sr)
    );
    let cleaned = store_runs.iter().all(|r| !r[6].is_nan());
    if cleaned {
        println!(
            "| 128k seqread qd32 of the working set after the cleaner settled (MB/s) | {:.0} | {} | {} | |",
            med(6, &store_runs),
            show(r_sr),
            pct(med(6, &store_runs), r_sr)
        );
    }
    for n in &notes {
        println!("{n}");
    }
    println!();
    result("store_randwrite_4k_qd32_iops", s_rw, "iops");
    if let Some(v) = r_rw {
        result("raw_randwrite_4k_qd32_iops", v, "iops");
    }
    result("store_randread_4k_qd32_iops", s_rr, "iops");
    if let Some(v) = r_rr {
        result("raw_randread_4k_qd32_iops", v, "iops");
    }
    result("store_seqwrite_128k_mbps", s_sw, "MB/s");
    if let Some(v) = r_sw {
        result("raw_seqwrite_128k_mbps", v, "MB/s");
    }
    if let Some(v) = r_rw_sync {
        result("raw_randwrite_4k_qd32_fdatasync32_iops", v, "iops");
    }
    if let Some(v) = r_sw_sync {
        result("raw_seqwrite_128k_qd32_fdatasync32_mbps", v, "MB/s");
    }
    result("store_seqread_128k_mbps", s_sr, "MB/s");
    if let Some(v) = r_sr {
        result("raw_seqread_128k_mbps", v, "MB/s");
    }
    if cleaned {
        result(
            "store_seqread_128k_after_clean_mbps",
            med(6, &store_runs),
            "MB/s",
        );
        result("store_clean_secs", med(7, &store_runs), "s");
        result("store_clean_moved_mib", med(8, &store_runs), "MiB");
    }
    result("wa_randwrite_4k", wa_rw, "ratio");
    result("wa_seqwrite_128k", wa_sw, "ratio");
}

/// What the cleaner did while the store sat idle (relocation only).
struct Clean {
    /// Idle time until it settled.
    secs: f64,
    moved: u64,
    dev_written: u64,
    /// Device runs of the working set's blocks, and empty segments, before
    /// and after.
    fragments: (u64, u64),
    free_segments: (u64, u64),
    /// The working set read in order afterwards.
    seqread: Phase,
}

/// Formats the store over `file`, lays out the random working set, and
/// measures random writes, random reads, a sequential read of the randomly
/// written working set (with relocation: again after the cleaner settled)
/// and sequential writes.
fn store_run(
    file: &Path,
    secs: u64,
    working_mb: u64,
    seq_mb: u64,
) -> (Phase, Phase, Phase, Phase, Option<Clean>, StoreStats) {
    // One reactor by default: on this 2-core machine the other core does the
    // kernel's share of the I/O (completions, file system), as it does for
    // fio's single job thread; FERRITE_BENCH_REACTORS=2 for two.
    let reactors = env_u64("FERRITE_BENCH_REACTORS", 1) as usize;
    // One worker (journal) per reactor, as ferrited opens its store;
    // FERRITE_BENCH_WORKERS to try others.
    let opts = StoreOptions {
        workers: env_u64("FERRITE_BENCH_WORKERS", reactors as u64) as usize,
        journal_size: 128 << 20,
        backend: Backend::Uring,
        wipe: true,
        merge_max: env_u64(
            "FERRITE_BENCH_MERGE_KB",
            StoreOptions::default().merge_max >> 10,
        ) << 10,
        // FERRITE_BENCH_RELOCATE=0: home writes in place instead of to new
        // blocks (relocation, the default).
        relocate_home: env_u64("FERRITE_BENCH_RELOCATE", 1) != 0,
        // FERRITE_BENCH_LOG=0: small writes journaled (written home later)
        // instead of written once to new blocks.
        log_small_writes: env_u64("FERRITE_BENCH_LOG", 1) != 0,
        // For experiments: the quarantine that forces a checkpoint, and the
        // smallest write that goes direct.
        quarantine_max: env_u64(
            "FERRITE_BENCH_QUARANTINE_MB",
            StoreOptions::default().quarantine_max >> 20,
        ) << 20,
        direct_write_min: env_u64(
            "FERRITE_BENCH_DIRECT_KB",
            StoreOptions::default().direct_write_min >> 10,
        ) << 10,
        // FERRITE_BENCH_PIECE_KB=0: a held stream goes to the device only
        // once it is complete.
        stream_piece: env_u64(
            "FERRITE_BENCH_PIECE_KB",
            StoreOptions::default().stream_piece >> 10,
        ) << 10,
        ..Default::default()
    };
    ChunkStore::format(&[file.to_path_buf()], &opts).expect("format");
    // Adaptive polling by default (2 cores shared with the kernel's I/O
    // work); FERRITE_BENCH_POLL=busy for production-style busy polling.
    let poll_mode = match std::env::var("FERRITE_BENCH_POLL").as_deref() {
        Ok("busy") => PollMode::Busy,
        _ => PollMode::Adaptive,
    };
    let spin_us = env_u64("FERRITE_BENCH_SPIN_US", 200);
    let rt = Runtime::new(Config {
        poll_mode,
        adaptive_spin: Duration::from_micros(spin_us),
        ..Config::for_tests(reactors)
    })
    .expect("runtime");
    let store = ChunkStore::open(&[file.to_path_buf()], &opts, &rt.handle()).expect("open");
    // Sizes need not be whole extents: the last extent of each region is
    // used in part.
    let (rand_bytes, seq_bytes) = ((working_mb << 20).max(K4), (seq_mb << 20).max(K4));
    let rand_ext = rand_bytes.div_ceil(EXTENT);
    let seq_ext = seq_bytes.div_ceil(EXTENT);
    for id in 0..rand_ext + seq_ext {
        store.create_extent(id, EXTENT).expect("create extent");
    }
    // Lay out the random working set (1 MiB writes, not measured).
    {
        let cursor = Arc::new(AtomicU64::new(0));
        let total = rand_bytes;
        run_qd(&rt, &store, 3600, move |s, _, _| {
            let at = cursor.fetch_add(1 << 20, Ordering::Relaxed);
            if at >= total {
                return None;
            }
            s.write(at / EXTENT, at % EXTENT, &vec![7u8; 1 << 20])
                .expect("layout write");
            Some(1 << 20)
        });
    }
    let blocks = rand_bytes / K4;
    let rw = run_qd(&rt, &store, secs, move |s, i, rng| {
        let b = next(rng) % blocks;
        let data = [(i as u8).wrapping_add(b as u8); K4 as usize];
        s.write(b * K4 / EXTENT, b * K4 % EXTENT, &data)
            .expect("random write");
        Some(K4)
    });
    let rr = run_qd(&rt, &store, secs, move |s, _, rng| {
        let b = next(rng) % blocks;
        let mut buf = [0u8; K4 as usize];
        s.read(b * K4 / EXTENT, b * K4 % EXTENT, &mut buf)
            .expect("random read");
        Some(K4)
    });
    // The random writes left the working set where the home writer put it
    // (relocated: scattered in the order it wrote them home); read it back
    // in order.
    let set = rand_bytes;
    let seqread = || {
        let cursor = Arc::new(AtomicU64::new(0));
        run_qd(&rt, &store, 3600, move |s, _, _| {
            let at = cursor.fetch_add(128 << 10, Ordering::Relaxed);
            if at >= set {
                return None;
            }
            let mut buf = vec![0u8; 128 << 10];
            s.read(at / EXTENT, at % EXTENT, &mut buf)
                .expect("sequential read");
            Some(128 << 10)
        })
    };
    let sr = seqread();
    let clean = opts.relocate_home.then(|| {
        let fragments = || -> u64 { (0..rand_ext).map(|id| store.fragments(id).unwrap()).sum() };
        let before = store.stats();
        let frag0 = fragments();
        let t0 = Instant::now();
        let limit = Duration::from_secs(env_u64("FERRITE_BENCH_CLEAN_SECS", 120));
        let (mut last, mut changed) = (before.cleaned_blocks, Instant::now());
        // Settled: nothing moved for 3 s.
        while changed.elapsed() < Duration::from_secs(3) && t0.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(100));
            let now = store.stats().cleaned_blocks;
            if now != last {
                (last, changed) = (now, Instant::now());
            }
        }
        let secs = (changed - t0).as_secs_f64();
        store.checkpoint().expect("checkpoint");
        let after = store.stats();
        Clean {
            secs,
            moved: after.cleaned_blocks - before.cleaned_blocks,
            dev_written: after.device_bytes_written - before.device_bytes_written,
            fragments: (frag0, fragments()),
            free_segments: (before.free_segments, after.free_segments),
            seqread: seqread(),
        }
    });
    let cursor = Arc::new(AtomicU64::new(0));
    let (base, total) = (rand_ext * EXTENT, seq_bytes);
    // Timed like the random phases: one pass over the region takes well
    // under a second here, too short a phase for a steady figure, so the
    // writers wrap around and overwrite it (sequentially, as a log would).
    let sw = run_qd(&rt, &store, secs, move |s, _, _| {
        let at = cursor.fetch_add(128 << 10, Ordering::Relaxed) % total;
        let pos = base + at;
        s.write(pos / EXTENT, pos % EXTENT, &[0x5a; 128 << 10])
            .expect("sequential write");
        Some(128 << 10)
    });
    let stats = store.stats();
    store.close().expect("close");
    drop(rt);
    (rw, rr, sw, sr, clean, stats)
}
