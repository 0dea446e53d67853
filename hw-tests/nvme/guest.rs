//! `nvme-guest`: the user-space NVMe driver's checks, run as root inside the
//! VM against QEMU's emulated controller bound to vfio-pci (see
//! `hw-tests/nvme/guest/run.sh`, driven by `tests/nvme_vm.rs`).
//!
//!   nvme-guest CASE PCI-ADDRESS [ARGS]
//!
//! Cases: identify, io, queues, errors, timeout, model [SEED STEPS],
//! signal, exit, bench SECONDS [MODE]. Each prints `CHECK <what> ok` lines
//! and ends with `PASS <case>` (exit 0) or `FAIL <case>: <why>` (exit 1).

use ferrite_engine::bdev::nvme::{self, NvmeDevice, State};
use ferrite_engine::bdev::{self, Backend, BlockDevice, DmaBuf, IoOp};
use ferrite_engine::rt::{self, Config, PollMode, Runtime};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[allow(dead_code, unused_imports, clippy::all)]
mod model {
    include!(concat!(env!("OUT_DIR"), "/store_model.rs"));

    /// The store's model test (engine/tests/store_model.rs) on `devs`.
    pub fn run(devs: Vec<PathBuf>, seed: u64, steps: usize) {
        run_model(Backend::Nvme, devs, seed, steps, Placement::Logged)
    }
}

type R = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn check(what: &str) {
    println!("CHECK {what} ok");
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn write_read(dev: &dyn BlockDevice, off: u64, len: usize, seed: u64) -> R {
    let data = pattern(seed, len);
    dev.write(off, Arc::new(DmaBuf::copy_from(&data)))
        .map_err(|e| format!("write {len} at {off}: {e}"))?;
    let (buf, r) = dev.read(off, DmaBuf::zeroed(len));
    r.map_err(|e| format!("read {len} at {off}: {e}"))?;
    ensure!(
        buf.as_slice() == &data[..],
        "data read at {off} ({len} bytes) differs from what was written"
    );
    Ok(())
}

fn open(bdf: &str, settings: &str) -> Result<Arc<NvmeDevice>, String> {
    let spec = format!("nvme://{bdf}/1{settings}");
    nvme::open(&spec).map_err(|e| format!("open {spec}: {e}"))
}

fn identify(bdf: &str) -> R {
    let dev = open(bdf, "")?;
    let c = dev.controller();
    println!(
        "IDENTIFY model='{}' serial='{}' firmware='{}' mode={:?} io_queues={} nn={} max_transfer_kib={} sgl={} dsm={} write_zeroes={} vwc={} interrupts={} ns_blocks={} lba={} size_mib={}",
        c.ident.model,
        c.ident.serial,
        c.ident.firmware,
        c.iommu_mode(),
        c.io_queues(),
        c.ident.nn,
        c.ident.mdts_bytes.unwrap_or(0) >> 10,
        c.ident.supports_sgl(),
        c.ident.supports_dsm(),
        c.ident.supports_write_zeroes(),
        c.ident.vwc,
        c.has_interrupts(),
        dev.namespace().blocks,
        dev.namespace().lba_size,
        dev.info().size >> 20
    );
    ensure!(
        c.io_queues() >= 2,
        "only {} I/O queues granted",
        c.io_queues()
    );
    ensure!(dev.info().size > 0, "empty namespace");
    check("identify controller and namespace");
    // The same device through the generic bdev entry point.
    let d2 = bdev::open(Path::new(&format!("nvme://{bdf}/1")), Backend::Nvme)
        .map_err(|e| format!("bdev::open: {e}"))?;
    ensure!(d2.info().backend == "nvme", "backend {}", d2.info().backend);
    check("bdev::open(nvme://...) shares the attached controller");
    Ok(())
}

/// Everything the block interface offers, on a reactor and off it.
fn io_case(bdf: &str) -> R {
    let dev = open(bdf, "")?;
    // A plain thread: the shared queue pair, polled by the caller.
    write_read(&*dev, 0, 4096, 1)?;
    write_read(&*dev, 1 << 20, 256 << 10, 2)?;
    check("read/write from a plain thread (shared queue)");

    let runtime = Runtime::new(Config::for_tests(2)).map_err(|e| e.to_string())?;
    let d = dev.clone();
    runtime.block_on(move || -> R {
        let dev = &*d;
        write_read(dev, 40960, 4096, 3)?;
        dev.flush().map_err(|e| format!("flush: {e}"))?;
        check("4k write, read back, flush on a reactor");
        let (p0, l0, _, _) = dev.controller().data_pointer_counts();
        write_read(dev, 2 << 20, 1 << 20, 4)?;
        write_read(dev, 4 << 20, 4 << 20, 5)?;
        let (p1, l1, _, _) = dev.controller().data_pointer_counts();
        ensure!(l1 > l0, "large I/O did not use PRP lists ({l0} -> {l1})");
        check(&format!(
            "1 MiB and 4 MiB I/O across PRP lists (split at {} KiB; {} PRP-list commands, {} plain)",
            dev.controller().ident.mdts_bytes.unwrap_or(0) >> 10,
            l1 - l0,
            p1 - p0
        ));
        // FUA write.
        let data = pattern(6, 8192);
        let r = dev.submit(vec![IoOp::Write {
            offset: 9 << 20,
            buf: Arc::new(DmaBuf::copy_from(&data)),
            fua: true,
        }]);
        r[0].result.as_ref().map_err(|e| format!("FUA write: {e}"))?;
        let (b, r) = dev.read(9 << 20, DmaBuf::zeroed(8192));
        r.map_err(|e| e.to_string())?;
        ensure!(b.as_slice() == &data[..], "FUA write read back differs");
        check("FUA write");
        // Vectored I/O, several buffers in one request.
        let parts = [pattern(7, 4096), pattern(8, 8192), pattern(9, 65536)];
        let all: Vec<u8> = parts.concat();
        dev.writev(10 << 20, parts.iter().map(|p| Arc::new(DmaBuf::copy_from(p))).collect())
            .map_err(|e| format!("writev: {e}"))?;
        let (bufs, r) = dev.readv(10 << 20, vec![DmaBuf::zeroed(16384), DmaBuf::zeroed(61440)]);
        r.map_err(|e| format!("readv: {e}"))?;
        let got: Vec<u8> = bufs.iter().flat_map(|b| b.as_slice().to_vec()).collect();
        ensure!(got == all, "readv differs from writev");
        check("writev/readv (3 and 2 buffers, one request each)");
        // Pieces PRPs cannot describe (2 KiB + 6 KiB): SGL or bounce.
        let (_, _, s0, b0) = dev.controller().data_pointer_counts();
        let odd = [pattern(10, 2048), pattern(11, 6144)];
        dev.writev(11 << 20, odd.iter().map(|p| Arc::new(DmaBuf::copy_from(p))).collect())
            .map_err(|e| format!("odd writev: {e}"))?;
        let (b, r) = dev.read(11 << 20, DmaBuf::zeroed(8192));
        r.map_err(|e| e.to_string())?;
        ensure!(b.as_slice() == &odd.concat()[..], "odd-sized writev read back differs");
        let (_, _, s1, b1) = dev.controller().data_pointer_counts();
        check(&format!(
            "buffers of 2 KiB + 6 KiB in one write ({} by SGL, {} bounced)",
            s1 - s0,
            b1 - b0
        ));
        // A buffer outside the DMA arena (heap): bounced, split.
        let (_, _, _, b0) = dev.controller().data_pointer_counts();
        write_read(dev, 16 << 20, 9 << 20, 12)?;
        let (_, _, _, b1) = dev.controller().data_pointer_counts();
        ensure!(b1 > b0, "a 9 MiB heap buffer was not bounced");
        check(&format!("9 MiB heap buffer through bounce buffers ({} commands)", b1 - b0));
        // Write zeroes and deallocate.
        write_read(dev, 30 << 20, 65536, 13)?;
        dev.write_zeroes(30 << 20, 65536)
            .map_err(|e| format!("write zeroes: {e}"))?;
        let (b, r) = dev.read(30 << 20, DmaBuf::new(65536));
        r.map_err(|e| e.to_string())?;
        ensure!(b.as_slice().iter().all(|&x| x == 0), "write zeroes left data");
        check("write zeroes");
        dev.unmap(31 << 20, 1 << 20).map_err(|e| format!("unmap: {e}"))?;
        check("dataset management (deallocate)");
        // Many coroutines at once on this reactor and the other.
        let h = rt::current_handle().expect("on a runtime");
        let mut js = Vec::new();
        for i in 0..64u64 {
            let d = d.clone();
            js.push(h.spawn_on((i % 2) as usize, move || {
                write_read(&*d, (40 << 20) + i * 8192, 8192, 100 + i)
            }));
        }
        for j in js {
            j.join().map_err(|e| e.to_string())??;
        }
        check("64 concurrent coroutines on 2 reactors, read back");
        Ok(())
    })?;
    let s = dev.stats().snapshot();
    ensure!(s.errors == 0, "{} errors counted", s.errors);
    println!("STATS {s:?}");
    drop(runtime);
    Ok(())
}

/// Queue pairs: one per reactor, back-pressure, running out, release.
fn queues_case(bdf: &str) -> R {
    {
        // 4 I/O queues of 8 commands: the shared one and three reactors.
        let dev = open(bdf, "?queues=4&depth=8")?;
        ensure!(
            dev.controller().io_queues() == 4,
            "granted {}",
            dev.controller().io_queues()
        );
        write_read(&*dev, 0, 4096, 1)?; // the shared queue takes one id
        let runtime = Runtime::new(Config::for_tests(3)).map_err(|e| e.to_string())?;
        let h = runtime.handle();
        let mut js = Vec::new();
        for r in 0..3usize {
            for k in 0..24u64 {
                let d = dev.clone();
                js.push(h.spawn_on(r, move || {
                    write_read(&*d, ((r as u64 * 24 + k) * 3) << 12, 4096, 1000 + k)
                }));
            }
        }
        for j in js {
            j.join().map_err(|e| e.to_string())??;
        }
        check("3 reactors x 24 coroutines on queues of depth 8 (queue-full back-pressure)");
        drop(runtime);
        // The queues were deleted with their reactors: 4 reactors now want
        // 4 queues plus the shared one; the last one gets a clear error.
        let runtime = Runtime::new(Config::for_tests(4)).map_err(|e| e.to_string())?;
        let mut errs = Vec::new();
        for r in 0..4usize {
            let d = dev.clone();
            let res = runtime
                .spawn_on(r, move || d.read(0, DmaBuf::new(4096)).1)
                .join()
                .map_err(|e| e.to_string())?;
            if let Err(e) = res {
                errs.push(e.to_string());
            }
        }
        ensure!(
            errs.len() == 1,
            "expected one reactor without a queue, got {errs:?}"
        );
        ensure!(
            errs[0].contains("no I/O queue left"),
            "unclear error: {}",
            errs[0]
        );
        println!("ERROR-TEXT {}", errs[0]);
        check("queues released at reactor exit; running out is a clear error");
        drop(runtime);
    }
    // All users gone: the controller was shut down and is attached afresh
    // with the default settings: 8 reactors, 8 queues.
    let dev = open(bdf, "")?;
    let runtime = Runtime::new(Config::for_tests(8)).map_err(|e| e.to_string())?;
    let mut js = Vec::new();
    for r in 0..8usize {
        let d = dev.clone();
        js.push(runtime.spawn_on(r, move || {
            for k in 0..8u64 {
                write_read(
                    &*d,
                    (((r as u64) * 8 + k) * 16) << 12,
                    16384,
                    r as u64 * 100 + k,
                )?;
            }
            Ok::<(), String>(())
        }));
    }
    for j in js {
        j.join().map_err(|e| e.to_string())??;
    }
    check(&format!(
        "8 reactors, one I/O queue pair each (controller grants {})",
        dev.controller().io_queues()
    ));
    Ok(())
}

fn expect_err(spec: &str, want: &str) -> R {
    match nvme::open(spec) {
        Ok(_) => Err(format!("{spec} opened")),
        Err(e) => {
            let t = e.to_string();
            println!("ERROR-TEXT {t}");
            ensure!(
                t.contains(want),
                "{spec}: error '{t}' does not say '{want}'"
            );
            check(&format!("{spec} refused: {want}"));
            Ok(())
        }
    }
}

fn errors_case(bdf: &str, other: Option<&str>) -> R {
    let dev = open(bdf, "")?;
    expect_err(&format!("nvme://{bdf}/0"), "not a namespace id")?;
    expect_err(&format!("nvme://{bdf}/2"), "not active")?;
    expect_err(&format!("nvme://{bdf}/100000"), "out of range")?;
    expect_err(&format!("nvme://{bdf}"), "no namespace")?;
    expect_err(&format!("nvme://{bdf}/1?depth=x"), "not a number")?;
    expect_err("nvme://0000:00:1f.6/1", "no such PCI function")?;
    if let Some(o) = other {
        expect_err(&format!("nvme://{o}/1"), "not vfio-pci")?;
    }
    let size = dev.info().size;
    let runtime = Runtime::new(Config::for_tests(1)).map_err(|e| e.to_string())?;
    let d = dev.clone();
    runtime.block_on(move || -> R {
        for (off, len) in [
            (size, 4096usize),
            (size - 4096, 8192),
            (u64::MAX - 4095, 4096),
        ] {
            let (_, r) = d.read(off, DmaBuf::new(len));
            let e = r
                .err()
                .ok_or(format!("read past the end at {off} succeeded"))?;
            println!("ERROR-TEXT {e}");
            ensure!(e.to_string().contains("past the end"), "unclear: {e}");
        }
        let (_, r) = d.read(size - 4096, DmaBuf::new(4096));
        r.map_err(|e| format!("last block: {e}"))?;
        Ok(())
    })?;
    check("I/O past the end refused with a clear error; the last block reads");
    Ok(())
}

/// A controller that stops answering: bus mastering off, so it can fetch
/// no command and post no completion (QEMU sets fatal status). The driver
/// times out, resets the controller (which turns bus mastering back on),
/// and the next I/O works.
fn timeout_case(bdf: &str) -> R {
    let dev = open(bdf, "?io_timeout_ms=1000&admin_timeout_ms=2000")?;
    let ctrl = dev.controller().clone();
    let mute = |on: bool| -> R {
        let c = ctrl.pci_command().map_err(|e| e.to_string())?;
        let v = if on {
            c & !ferrite_sys::pci::PCI_COMMAND_MASTER
        } else {
            c | ferrite_sys::pci::PCI_COMMAND_MASTER
        };
        ctrl.set_pci_command(v).map_err(|e| e.to_string())
    };
    let runtime = Runtime::new(Config::for_tests(3)).map_err(|e| e.to_string())?;
    write_read(&*dev, 0, 4096, 1)?;
    // Both reactors' queues exist before the controller goes mute.
    for r in 0..2u64 {
        let d = dev.clone();
        runtime
            .spawn_on(r as usize, move || write_read(&*d, 4096 * (r + 1), 4096, 1))
            .join()
            .map_err(|e| e.to_string())??;
    }
    let d = dev.clone();
    mute(true)?;
    let t = Instant::now();
    let r = runtime.block_on(move || d.read(0, DmaBuf::new(4096)).1);
    let took = t.elapsed();
    let e = r.err().ok_or("a read on a mute controller succeeded")?;
    println!("ERROR-TEXT {e} (after {took:?})");
    ensure!(e.kind() == io::ErrorKind::TimedOut, "not a timeout: {e}");
    ensure!(
        took >= Duration::from_millis(900),
        "timed out too early: {took:?}"
    );
    ensure!(ctrl.reset_count() >= 1, "no controller reset");
    ensure!(
        ctrl.state() == State::Ready,
        "controller {:?} after reset",
        ctrl.state()
    );
    check(&format!(
        "reactor read on a mute controller: timeout after {took:?}, controller reset"
    ));
    let d = dev.clone();
    runtime.block_on(move || write_read(&*d, 8192, 65536, 2))?;
    check("I/O on the reactor works again after the reset (queue re-created)");
    // Other queues lost nothing they had not started: the second reactor's
    // queue is re-created on its next use too.
    let d = dev.clone();
    runtime
        .spawn_on(1, move || write_read(&*d, 1 << 20, 4096, 3))
        .join()
        .map_err(|e| e.to_string())??;
    check("the other reactor's queue works after the reset");
    // The same on the shared queue of plain threads (re-created after the
    // reset by this first I/O).
    write_read(&*dev, 5 << 20, 4096, 6)?;
    mute(true)?;
    let t = Instant::now();
    let (_, r) = dev.read(4096, DmaBuf::new(4096));
    let e = r
        .err()
        .ok_or("a read on a mute controller succeeded (shared queue)")?;
    println!("ERROR-TEXT {e} (after {:?})", t.elapsed());
    ensure!(e.kind() == io::ErrorKind::TimedOut, "not a timeout: {e}");
    ensure!(ctrl.reset_count() >= 2, "no second reset");
    write_read(&*dev, 2 << 20, 4096, 4)?;
    check("shared queue: timeout, reset, then I/O works");
    // A queue created while the controller is in fatal status (reactor 2
    // had none yet): the failed Create I/O CQ leads to a reset, then works.
    mute(true)?;
    let before = ctrl.reset_count();
    let d = dev.clone();
    runtime
        .spawn_on(2, move || write_read(&*d, 3 << 20, 4096, 5))
        .join()
        .map_err(|e| e.to_string())??;
    ensure!(
        ctrl.reset_count() > before,
        "no reset for a fatal status at queue creation"
    );
    check("queue creation on a controller in fatal status: reset, then the I/O works");
    // A controller given up on: every request fails at once, clearly.
    ctrl.mark_dead("test: given up on purpose");
    let d = dev.clone();
    let r = runtime.block_on(move || d.read(0, DmaBuf::new(4096)).1);
    let e = r.err().ok_or("I/O on a dead controller succeeded")?;
    println!("ERROR-TEXT {e}");
    ensure!(e.to_string().contains("controller is dead"), "unclear: {e}");
    let (_, r) = dev.read(0, DmaBuf::new(4096));
    ensure!(
        r.is_err(),
        "shared-queue I/O on a dead controller succeeded"
    );
    check("a dead controller fails every request with a clear error");
    drop(runtime);
    Ok(())
}

fn model_case(bdf: &str, seed: u64, steps: usize) -> R {
    let t = Instant::now();
    model::run(vec![PathBuf::from(format!("nvme://{bdf}/1"))], seed, steps);
    check(&format!(
        "store model test, seed {seed}, {steps} steps, in {:?}",
        t.elapsed()
    ));
    Ok(())
}

/// ferrited's way of stopping: termination signals blocked in every thread,
/// the main thread waits for one, then stops the node (its devices and
/// reactors go away): the controller must get its shutdown notification.
fn signal_case(bdf: &str) -> R {
    ferrite_sys::signals::block_termination_signals().map_err(|e| e.to_string())?;
    let dev = open(bdf, "")?;
    let runtime = Runtime::new(Config::for_tests(2)).map_err(|e| e.to_string())?;
    let d = dev.clone();
    runtime.block_on(move || write_read(&*d, 0, 4096, 1))?;
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(100));
        ferrite_sys::signals::raise_termination();
    });
    let sig = ferrite_sys::signals::wait_termination_signal();
    println!("SIGNAL {sig}");
    let ctrl = Arc::downgrade(dev.controller());
    drop(dev);
    runtime.shutdown();
    ensure!(
        ctrl.upgrade().is_none(),
        "the controller outlived its devices and reactors"
    );
    check("on SIGTERM: devices and reactors stopped, controller shut down (see log)");
    Ok(())
}

/// Exit with the device still open: the atexit handler shuts it down.
fn exit_case(bdf: &str) -> R {
    let dev = open(bdf, "")?;
    write_read(&*dev, 0, 4096, 1)?;
    println!("PASS exit (the shutdown line must follow)");
    std::mem::forget(dev);
    std::process::exit(0);
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// 4k random reads and writes at QD1 and QD32, one reactor.
fn bench_case(bdf: &str, secs: u64, mode: &str) -> R {
    let dev = open(bdf, "")?;
    let span = dev.info().size.min(1 << 30) / 4096;
    let poll = if mode == "busy" {
        PollMode::Busy
    } else {
        PollMode::Adaptive
    };
    for rw in ["randread", "randwrite"] {
        for qd in [1u64, 32] {
            let cfg = Config {
                poll_mode: poll,
                ..Config::for_tests(1)
            };
            let runtime = Runtime::new(cfg).map_err(|e| e.to_string())?;
            let h = runtime.handle();
            let d = dev.clone();
            // Warm up: the queue pair and buffers exist before timing.
            runtime.block_on(move || d.read(0, DmaBuf::new(4096)).1.map_err(|e| e.to_string()))?;
            let cpu0 = ferrite_sys::process_cpu_time();
            let t0 = Instant::now();
            let end = t0 + Duration::from_secs(secs);
            let mut js = Vec::new();
            for k in 0..qd {
                let d = dev.clone();
                let write = rw == "randwrite";
                js.push(h.spawn_on(0, move || {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (k + 1));
                    let wbuf = Arc::new(DmaBuf::copy_from(&pattern(k, 4096)));
                    let mut rbuf = Some(DmaBuf::new(4096));
                    let mut n = 0u64;
                    while Instant::now() < end {
                        let off = rng.next() % span * 4096;
                        let r = if write {
                            d.write(off, wbuf.clone())
                        } else {
                            let (b, r) = d.read(off, rbuf.take().expect("buffer"));
                            rbuf = Some(b);
                            r
                        };
                        r.map_err(|e| e.to_string())?;
                        n += 1;
                    }
                    Ok::<u64, String>(n)
                }));
            }
            let mut ios = 0;
            for j in js {
                ios += j.join().map_err(|e| e.to_string())??;
            }
            let wall = t0.elapsed().as_secs_f64();
            let cpu = (ferrite_sys::process_cpu_time() - cpu0).as_secs_f64();
            drop(runtime);
            println!(
                "BENCH engine=ferrite-{mode} rw={rw} qd={qd} ios={ios} secs={wall:.3} iops={:.0} cpu_s={cpu:.3} cpu_us_per_io={:.1}",
                ios as f64 / wall,
                cpu * 1e6 / ios.max(1) as f64
            );
        }
    }
    Ok(())
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: nvme-guest CASE PCI-ADDRESS [ARGS] (cases: identify io queues errors timeout model signal exit bench)");
        std::process::exit(2);
    }
    let (case, bdf) = (args[1].as_str(), args[2].as_str());
    let arg = |i: usize| args.get(i).map(|s| s.as_str());
    let r = match case {
        "identify" => identify(bdf),
        "io" => io_case(bdf),
        "queues" => queues_case(bdf),
        "errors" => errors_case(bdf, arg(3)),
        "timeout" => timeout_case(bdf),
        "model" => model_case(
            bdf,
            arg(3).and_then(|s| s.parse().ok()).unwrap_or(1),
            arg(4).and_then(|s| s.parse().ok()).unwrap_or(300),
        ),
        "signal" => signal_case(bdf),
        "exit" => exit_case(bdf),
        "bench" => bench_case(
            bdf,
            arg(3).and_then(|s| s.parse().ok()).unwrap_or(5),
            arg(4).unwrap_or("adaptive"),
        ),
        _ => Err(format!("unknown case '{case}'")),
    };
    match r {
        Ok(()) => println!("PASS {case}"),
        Err(e) => {
            println!("FAIL {case}: {e}");
            std::process::exit(1);
        }
    }
}
