//! `make bench-rt`: the runtime's costs, with glibc's swapcontext and OS
//! thread ping-pong measured in the same run for scale.

use ferrite_benchmarks::{median, result};
use ferrite_engine::rt::{self, migrate, Config, CoreSet, PollMode, Runtime};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

const RUNS: usize = 5;

fn main() {
    // The peers first, while no reactor busy-polls the two cores.
    let swapctx = median(
        (0..RUNS)
            .map(|_| ferrite_sys::ucontext::swapcontext_switch(500_000).as_nanos() as f64)
            .collect(),
    );
    let thread = median((0..RUNS).map(|_| thread_switch(100_000)).collect());
    let cores = ferrite_sys::affinity::allowed_cpus().expect("read the allowed CPU set");
    let two: Vec<usize> = cores.iter().copied().take(2).collect();
    let rt = Runtime::new(Config {
        cores: CoreSet::from_list(two.clone()),
        pin: true,
        poll_mode: PollMode::Busy,
        workers: 1,
        ..Config::default()
    })
    .expect("start the runtime");
    let h = rt.handle();
    println!("Ferrite runtime micro-benchmarks ({} reactors on cores {:?}, busy polling; median of {RUNS} runs)", h.reactor_count(), two);

    // `bench-rt create` (etc.) runs one measure alone, for profiling.
    let only = std::env::args().nth(1);
    if let Some(m) = only.as_deref() {
        let v = match m {
            "switch" => rt.block_on(|| coro_switch(20_000_000)),
            "create" => rt.block_on(|| create_destroy(10_000_000)),
            "xreactor" => {
                let hx = h.clone();
                rt.block_on(move || xreactor(&hx, 2_000_000))
            }
            "migrate" => rt.block_on(|| migrate_roundtrip(200_000)),
            other => panic!("unknown measure '{other}': switch, create, xreactor, migrate"),
        };
        println!("{m}: {v:.1} ns");
        return;
    }
    let switch = median(
        (0..RUNS)
            .map(|_| rt.block_on(|| coro_switch(2_000_000)))
            .collect(),
    );
    let create = median(
        (0..RUNS)
            .map(|_| rt.block_on(|| create_destroy(1_000_000)))
            .collect(),
    );
    let hx = h.clone();
    let xr = median(
        (0..RUNS)
            .map(|_| {
                let hx = hx.clone();
                rt.block_on(move || xreactor(&hx, 200_000))
            })
            .collect(),
    );
    let mig = median(
        (0..RUNS)
            .map(|_| rt.block_on(|| migrate_roundtrip(50_000)))
            .collect(),
    );
    drop(rt);

    println!();
    println!("{:<28} {:>12}", "measure", "ns");
    println!("{:<28} {:>12.1}", "coroutine switch in+out", switch);
    println!("{:<28} {:>12.1}", "coroutine create+destroy", create);
    println!("{:<28} {:>12.1}", "swapcontext switch in+out", swapctx);
    println!("{:<28} {:>12.1}", "OS thread ping-pong", thread);
    println!("{:<28} {:>12.1}", "cross-reactor round trip", xr);
    println!("{:<28} {:>12.1}", "migrate to workers and back", mig);
    println!(
        "switch vs swapcontext: {:.1}x faster; ZBS reference: 67 ns switch, 131 ns create+destroy",
        swapctx / switch
    );
    println!();
    result("coro_switch_ns", switch, "ns");
    result("coro_create_destroy_ns", create, "ns");
    result("swapcontext_switch_ns", swapctx, "ns");
    result("thread_switch_ns", thread, "ns");
    result("xreactor_roundtrip_ns", xr, "ns");
    result("migrate_roundtrip_ns", mig, "ns");
    result("swapcontext_over_coro_switch", swapctx / switch, "ratio");
}

/// Two coroutines yield to each other; one "in and out" is a round trip.
fn coro_switch(iters: u64) -> f64 {
    let other = rt::spawn(move || {
        for _ in 0..iters {
            rt::yield_now();
        }
    });
    rt::yield_now(); // let it start
    let start = Instant::now();
    for _ in 0..iters {
        rt::yield_now();
    }
    let d = start.elapsed();
    other.join().unwrap();
    d.as_nanos() as f64 / iters as f64
}

/// Spawn from the pool, run to completion, join, stack back to the pool.
fn create_destroy(iters: u64) -> f64 {
    for _ in 0..1000 {
        rt::spawn(|| ()).join().unwrap();
    }
    let start = Instant::now();
    for i in 0..iters {
        std::hint::black_box(rt::spawn(move || i).join().unwrap());
    }
    start.elapsed().as_nanos() as f64 / iters as f64
}

/// Two OS threads hand a token back and forth over a futex (std park/unpark).
fn thread_switch(iters: u32) -> f64 {
    let turn = Arc::new(AtomicU32::new(0));
    let main = std::thread::current();
    let t2 = turn.clone();
    let peer = std::thread::spawn(move || {
        for i in 0..iters {
            while t2.load(Ordering::Acquire) != 2 * i + 1 {
                std::thread::park();
            }
            t2.store(2 * i + 2, Ordering::Release);
            main.unpark();
        }
    });
    let pt = peer.thread().clone();
    let start = Instant::now();
    for i in 0..iters {
        turn.store(2 * i + 1, Ordering::Release);
        pt.unpark();
        while turn.load(Ordering::Acquire) != 2 * i + 2 {
            std::thread::park();
        }
    }
    let d = start.elapsed();
    peer.join().unwrap();
    d.as_nanos() as f64 / iters as f64
}

/// A closure to reactor 1 and its result back to the waiting coroutine.
fn xreactor(h: &rt::Handle, iters: u64) -> f64 {
    let start = Instant::now();
    for i in 0..iters {
        std::hint::black_box(h.call_on(1, move || i));
    }
    start.elapsed().as_nanos() as f64 / iters as f64
}

fn migrate_roundtrip(iters: u64) -> f64 {
    let start = Instant::now();
    for i in 0..iters {
        std::hint::black_box(migrate::run_on(migrate::Target::Workers, move || i));
    }
    start.elapsed().as_nanos() as f64 / iters as f64
}
