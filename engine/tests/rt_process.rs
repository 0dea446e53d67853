//! Runtime behaviour that needs a process of its own: stack overflow
//! (aborts the process), thread clean-up, idle CPU use, and a stress run.

use ferrite_engine::rt::{self, Config, PollMode, Runtime};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When this test binary is re-run with FERRITE_OVERFLOW_CHILD=1, this
/// "test" overflows a coroutine's stack; otherwise it does nothing.
#[test]
fn overflow_child() {
    if std::env::var_os("FERRITE_OVERFLOW_CHILD").is_none() {
        return;
    }
    fn recurse(n: u64) -> u64 {
        let pad = std::hint::black_box([n; 64]);
        if n == 0 {
            return 0;
        }
        recurse(n - 1) + pad[3]
    }
    let rt = Runtime::new(Config::for_tests(1)).unwrap();
    rt.block_on(|| {
        rt::Builder::new()
            .name("deep-recursion")
            .spawn(|| recurse(u64::MAX))
            .unwrap()
            .join()
            .unwrap();
    });
}

#[test]
fn stack_overflow_is_reported_by_name_and_aborts() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([
            "--exact",
            "overflow_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FERRITE_OVERFLOW_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc_sigabrt()),
        "child should abort; status {:?}, stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("coroutine 'deep-recursion' overflowed its stack of 128 KiB"),
        "stderr was:\n{stderr}"
    );
}

fn libc_sigabrt() -> i32 {
    6
}

fn threads_named(prefix: &str) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) {
            let comm = comm.trim().to_string();
            if comm.starts_with(prefix) {
                v.push(comm);
            }
        }
    }
    v
}

#[test]
fn shutdown_leaves_no_thread_behind() {
    let cfg = Config {
        name: "leakchk".into(),
        workers: 2,
        ..Config::for_tests(2)
    };
    let rt = Runtime::new(cfg).unwrap();
    let h = rt.handle();
    // Busy state at shutdown: parked coroutines, sockets, sleepers, a migrated one.
    for r in 0..2 {
        h.spawn_on(r, || {
            let l = rt::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let _ = l.accept();
        });
        h.spawn_on(r, || rt::sleep(Duration::from_secs(3600)));
    }
    h.spawn_on(0, || {
        rt::migrate::run_on(rt::migrate::Target::Workers, || {
            std::thread::sleep(Duration::from_millis(50))
        })
    });
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        threads_named("leakchk").len(),
        4,
        "2 reactors + 2 workers: {:?}",
        threads_named("leakchk")
    );
    let start = Instant::now();
    rt.shutdown();
    assert!(
        threads_named("leakchk").is_empty(),
        "left behind: {:?}",
        threads_named("leakchk")
    );
    // Bounded: the grace period is 5 s; cancellation should need far less.
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// CPU time of one thread, from /proc (ns).
fn thread_cpu_ns(tid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).unwrap_or_default();
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn idle_adaptive_reactors_use_no_cpu_worth_measuring() {
    let cfg = Config {
        name: "idlechk".into(),
        poll_mode: PollMode::Adaptive,
        ..Config::for_tests(2)
    };
    let rt = Runtime::new(cfg).unwrap();
    let h = rt.handle();
    // One idle coroutine with a periodic timer, as a real node has.
    h.spawn_on(0, || loop {
        rt::sleep(Duration::from_millis(50));
    });
    std::thread::sleep(Duration::from_millis(50));
    let tids: Vec<i32> = h.reactors().iter().map(|r| r.tid()).collect();
    let before: Vec<u64> = tids.iter().map(|&t| thread_cpu_ns(t)).collect();
    let wall = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let wall = wall.elapsed().as_nanos() as u64;
    for (i, &t) in tids.iter().enumerate() {
        let used = thread_cpu_ns(t) - before[i];
        // Well under 2 % of a core (a busy-polling reactor uses 100 %).
        assert!(
            used * 50 < wall,
            "reactor {i} used {used} ns of CPU in {wall} ns idle"
        );
    }
}

#[test]
fn stress_100k_coroutines_ping_pong_and_futures() {
    let rt = Runtime::new(Config::for_tests(2)).unwrap();
    let h = rt.handle();
    let start = Instant::now();

    // 100k coroutines over two reactors, each yielding and being joined.
    let done = Arc::new(AtomicU64::new(0));
    let mut spawners = Vec::new();
    for r in 0..2 {
        let done = done.clone();
        spawners.push(h.spawn_on(r, move || {
            let mut hs = Vec::with_capacity(1000);
            for batch in 0..50 {
                for i in 0..1000u64 {
                    let done = done.clone();
                    hs.push(rt::spawn(move || {
                        rt::yield_now();
                        done.fetch_add(1, Ordering::Relaxed);
                        batch * 1000 + i
                    }));
                }
                for h in hs.drain(..) {
                    h.join().unwrap();
                }
            }
        }));
    }
    for s in spawners {
        s.join().unwrap();
    }
    assert_eq!(done.load(Ordering::Relaxed), 100_000);

    // Cross-reactor ping-pong: 20k round trips of call_on.
    let h2 = h.clone();
    let n = h
        .spawn_on(0, move || {
            let mut n = 0u64;
            for i in 0..20_000u64 {
                n += h2.call_on(1, move || i % 3);
            }
            n
        })
        .join()
        .unwrap();
    assert_eq!(n, (0..20_000u64).map(|i| i % 3).sum::<u64>());

    // Mixed: tasks awaiting coroutines awaiting tasks, across reactors.
    let h3 = h.clone();
    let total = h
        .spawn_on(1, move || {
            let mut tasks = Vec::new();
            for i in 0..2000u64 {
                let co = rt::spawn(move || i);
                tasks.push(rt::spawn_task(async move { co.await.unwrap() * 2 }));
                tasks.push(h3.spawn_task_on(0, async move { i }));
            }
            tasks.into_iter().map(rt::block_on).sum::<u64>()
        })
        .join()
        .unwrap();
    assert_eq!(total, (0..2000u64).map(|i| i * 3).sum::<u64>());
    eprintln!("stress run took {:?}", start.elapsed());
}
