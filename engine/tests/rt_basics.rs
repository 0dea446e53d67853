//! The runtime's primitives, each on a real two-reactor runtime.

use ferrite_engine::rt::{self, migrate, sync, Config, Runtime};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn runtime() -> Runtime {
    Runtime::new(Config::for_tests(2)).expect("start a 2-reactor runtime")
}

#[test]
fn spawn_join_and_values() {
    let rt = runtime();
    let v = rt.block_on(|| {
        let hs: Vec<_> = (0..100).map(|i| rt::spawn(move || i * 2)).collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum::<i32>()
    });
    assert_eq!(v, (0..100).map(|i| i * 2).sum::<i32>());
}

#[test]
fn yield_interleaves_coroutines() {
    let rt = runtime();
    let order = rt.block_on(|| {
        let log = Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut hs = Vec::new();
        for id in 0..3 {
            let log = log.clone();
            hs.push(rt::spawn(move || {
                for step in 0..3 {
                    log.borrow_mut().push((id, step));
                    rt::yield_now();
                }
            }));
        }
        for h in hs {
            h.join().unwrap();
        }
        let v = log.borrow().clone();
        v
    });
    // Round robin: every coroutine's step 0 before any step 1.
    let firsts: Vec<_> = order.iter().take(3).map(|x| x.1).collect();
    assert_eq!(firsts, vec![0, 0, 0], "order was {order:?}");
    assert_eq!(order.len(), 9);
}

#[test]
fn panic_is_contained_in_its_coroutine() {
    let rt = runtime();
    let (msg, after) = rt.block_on(|| {
        let h = rt::spawn(|| -> u32 { panic!("boom in a coroutine") });
        let err = h.join().unwrap_err();
        // The reactor goes on: another coroutine still runs.
        let after = rt::spawn(|| 7).join().unwrap();
        (err.message(), after)
    });
    assert_eq!(msg, "boom in a coroutine");
    assert_eq!(after, 7);
}

#[test]
fn panic_in_block_on_reaches_the_caller() {
    let rt = runtime();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(|| panic!("top-level"))
    }));
    assert!(r.is_err());
    // And the runtime still works.
    assert_eq!(rt.block_on(|| 1 + 1), 2);
}

#[test]
fn sleep_parks_without_blocking_the_reactor() {
    let rt = runtime();
    let (slept, ticks) = rt.block_on(|| {
        let ticks = Rc::new(Cell::new(0u32));
        let t2 = ticks.clone();
        let ticker = rt::spawn(move || {
            for _ in 0..10 {
                t2.set(t2.get() + 1);
                rt::sleep(Duration::from_millis(1));
            }
        });
        let start = Instant::now();
        rt::sleep(Duration::from_millis(30));
        let slept = start.elapsed();
        ticker.join().unwrap();
        (slept, ticks.get())
    });
    assert!(slept >= Duration::from_millis(30), "woke early: {slept:?}");
    assert_eq!(ticks, 10);
}

#[test]
fn mutex_serialises_across_parks_and_reactors() {
    let rt = runtime();
    let h = rt.handle();
    let counter = Arc::new(sync::Mutex::new(0u64));
    let mut joins = Vec::new();
    for r in 0..2 {
        for _ in 0..20 {
            let c = counter.clone();
            joins.push(h.spawn_on(r, move || {
                for _ in 0..50 {
                    let mut g = c.lock();
                    let v = *g;
                    rt::yield_now(); // hold the lock across a switch
                    *g = v + 1;
                }
            }));
        }
    }
    for j in joins {
        j.join().unwrap();
    }
    assert_eq!(*counter.lock(), 2 * 20 * 50);
}

#[test]
fn semaphore_bounds_concurrency() {
    let rt = runtime();
    let peak = rt.block_on(|| {
        let sem = Arc::new(sync::Semaphore::new(3));
        let inside = Rc::new(Cell::new(0));
        let peak = Rc::new(Cell::new(0));
        let hs: Vec<_> = (0..20)
            .map(|_| {
                let (sem, inside, peak) = (sem.clone(), inside.clone(), peak.clone());
                rt::spawn(move || {
                    let _p = sem.acquire(1);
                    inside.set(inside.get() + 1);
                    peak.set(peak.get().max(inside.get()));
                    rt::sleep(Duration::from_millis(1));
                    inside.set(inside.get() - 1);
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        peak.get()
    });
    assert_eq!(peak, 3);
}

#[test]
fn event_wakes_every_waiter_and_times_out() {
    let rt = runtime();
    let (woken, timed_out) = rt.block_on(|| {
        let ev = Arc::new(sync::Event::new());
        let n = Rc::new(Cell::new(0));
        let hs: Vec<_> = (0..5)
            .map(|_| {
                let (ev, n) = (ev.clone(), n.clone());
                rt::spawn(move || {
                    ev.wait();
                    n.set(n.get() + 1);
                })
            })
            .collect();
        rt::yield_now();
        assert_eq!(n.get(), 0);
        ev.set();
        for h in hs {
            h.join().unwrap();
        }
        let other = sync::Event::new();
        let t = other.wait_until(Instant::now() + Duration::from_millis(5));
        (n.get(), !t)
    });
    assert_eq!(woken, 5);
    assert!(timed_out);
}

#[test]
fn bounded_channel_applies_backpressure_across_reactors() {
    let rt = runtime();
    let h = rt.handle();
    let (tx, rx) = sync::channel::<u64>(4);
    let max_len = Arc::new(AtomicUsize::new(0));
    let ml = max_len.clone();
    let consumer = h.spawn_on(1, move || {
        let mut sum = 0;
        while let Ok(v) = rx.recv() {
            ml.fetch_max(rx.len(), Ordering::Relaxed);
            sum += v;
        }
        sum
    });
    let producer = h.spawn_on(0, move || {
        for i in 0..10_000u64 {
            tx.send(i).unwrap();
        }
    });
    producer.join().unwrap();
    assert_eq!(consumer.join().unwrap(), (0..10_000u64).sum::<u64>());
    assert!(max_len.load(Ordering::Relaxed) <= 4);
}

#[test]
fn channel_reports_closed_ends() {
    let rt = runtime();
    rt.block_on(|| {
        let (tx, rx) = sync::channel::<u8>(1);
        drop(rx);
        assert!(tx.send(1).is_err());
        let (tx, rx) = sync::channel::<u8>(1);
        tx.send(9).unwrap();
        drop(tx);
        assert_eq!(rx.recv(), Ok(9));
        assert_eq!(rx.recv(), Err(sync::RecvError));
    });
}

#[test]
fn cross_reactor_call_returns_a_value() {
    let rt = runtime();
    let h = rt.handle();
    let (here, there) = rt.block_on(move || {
        let here = rt::current_reactor().unwrap();
        let there = h.call_on(1, || rt::current_reactor().unwrap());
        (here, there)
    });
    assert_eq!((here, there), (0, 1));
    // From a plain thread too.
    assert_eq!(rt.handle().call_on(1, rt::current_reactor), Some(1));
}

#[test]
fn migrate_moves_the_coroutine_and_brings_it_back() {
    let rt = runtime();
    let report = rt.block_on(|| {
        let before = (rt::current_reactor(), std::thread::current().id());
        let on_worker = migrate::run_on(migrate::Target::Workers, || {
            (
                rt::current_reactor(),
                std::thread::current().name().map(str::to_string),
            )
        });
        let on_other = migrate::run_on(migrate::Target::Reactor(1), rt::current_reactor);
        let after = (rt::current_reactor(), std::thread::current().id());
        (before, on_worker, on_other, after)
    });
    let (before, on_worker, on_other, after) = report;
    assert_eq!(before.0, Some(0));
    assert_eq!(on_worker.0, None, "on the worker pool there is no reactor");
    assert!(on_worker.1.unwrap().contains("worker"));
    assert_eq!(on_other, Some(1));
    assert_eq!(
        after, before,
        "the coroutine is back on its reactor and thread"
    );
}

#[test]
fn migrate_brings_a_panicking_coroutine_home() {
    let rt = runtime();
    let back_home = rt.block_on(|| {
        let r = std::panic::catch_unwind(|| {
            migrate::run_on(migrate::Target::Workers, || panic!("on a worker"))
        });
        assert!(r.is_err());
        rt::current_reactor()
    });
    assert_eq!(back_home, Some(0));
}

#[test]
fn parking_primitives_work_on_the_worker_pool() {
    let rt = runtime();
    let v = rt.block_on(|| {
        let m = Arc::new(sync::Mutex::new(1u32));
        let (tx, rx) = sync::channel::<u32>(1);
        let m2 = m.clone();
        let feeder = rt::spawn(move || {
            rt::sleep(Duration::from_millis(5));
            *m2.lock() += 1;
            tx.send(40).unwrap();
        });
        let got = migrate::run_on(migrate::Target::Workers, move || rx.recv().unwrap());
        feeder.join().unwrap();
        let v = *m.lock();
        got + v
    });
    assert_eq!(v, 42);
}

#[test]
fn async_tasks_and_coroutines_interoperate() {
    let rt = runtime();
    let v = rt.block_on(|| {
        // A task on this reactor, awaited by a coroutine.
        let t = rt::spawn_task(async {
            rt::sleep_async(Duration::from_millis(2)).await;
            20
        });
        let a = rt::block_on(t);
        // A coroutine awaited by a task.
        let co = rt::spawn(|| {
            rt::sleep(Duration::from_millis(1));
            21
        });
        let t2 = rt::spawn_task(async move { co.await.unwrap() + 1 });
        let b = rt::block_on(t2);
        // A Send task on the other reactor.
        let h = rt::current_handle().unwrap();
        let c = rt::block_on(h.spawn_task_on(1, async { rt::current_reactor().unwrap() }));
        a + b + c as i32 - 1
    });
    assert_eq!(v, 42);
}

#[test]
fn pollers_run_on_the_reactor_loop() {
    let rt = runtime();
    let count = rt.block_on(|| {
        let n = Rc::new(Cell::new(0u32));
        let n2 = n.clone();
        let id = rt::register_poller(
            "test-poller",
            rt::PollerWake::Every(Duration::from_millis(1)),
            move || {
                n2.set(n2.get() + 1);
                false
            },
        )
        .unwrap();
        rt::sleep(Duration::from_millis(20));
        assert!(rt::unregister_poller(id));
        let seen = n.get();
        rt::sleep(Duration::from_millis(5));
        assert_eq!(n.get(), seen, "an unregistered poller does not run");
        seen
    });
    assert!(count > 0);
}

#[test]
fn tcp_echo_between_reactors() {
    let rt = runtime();
    let h = rt.handle();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let server = h.spawn_on(1, move || {
        let l = rt::net::TcpListener::bind("127.0.0.1:0").unwrap();
        addr_tx.send(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let mut buf = [0u8; 4096];
        let mut total = 0;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).unwrap();
            total += n;
        }
        total
    });
    let addr = addr_rx.recv().unwrap();
    let echoed = h
        .spawn_on(0, move || {
            let s = rt::net::TcpStream::connect(addr).unwrap();
            let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7) as u8).collect();
            let reader = {
                let expected = data.clone();
                // Write and read concurrently from two coroutines.
                let s = Rc::new(s);
                let s2 = s.clone();
                let r = rt::spawn(move || {
                    let mut got = vec![0u8; expected.len()];
                    s2.read_exact(&mut got).unwrap();
                    got == expected
                });
                s.write_all_vectored(&[&data[..10], &data[10..]]).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
                r
            };
            reader.join().unwrap()
        })
        .join()
        .unwrap();
    assert!(echoed);
    assert_eq!(server.join().unwrap(), 1_000_000);
}

#[test]
fn tcp_read_deadline_times_out() {
    let rt = runtime();
    let kind = rt.block_on(|| {
        let l = rt::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        let mut b = [0u8; 1];
        s.read_until(&mut b, Some(Instant::now() + Duration::from_millis(10)))
            .unwrap_err()
            .kind()
    });
    assert_eq!(kind, std::io::ErrorKind::TimedOut);
}

#[test]
fn connect_refused_is_an_error_not_a_hang() {
    let rt = runtime();
    let r = rt.block_on(|| {
        // Bind then drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        rt::net::TcpStream::connect(("127.0.0.1", port))
            .map(|_| ())
            .map_err(|e| e.kind())
    });
    assert_eq!(r, Err(std::io::ErrorKind::ConnectionRefused));
}

#[test]
fn shutdown_cancels_parked_coroutines_and_runs_their_destructors() {
    let rt = runtime();
    let dropped = Arc::new(AtomicBool::new(false));
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let d = dropped.clone();
    let forever = Arc::new(sync::Event::new());
    let f2 = forever.clone();
    let h = rt.spawn_on(1, move || {
        let _g = SetOnDrop(d);
        f2.wait(); // never set
    });
    std::thread::sleep(Duration::from_millis(20));
    rt.shutdown();
    assert!(
        dropped.load(Ordering::SeqCst),
        "the cancelled coroutine unwound"
    );
    let err = h.join().unwrap_err();
    assert!(err.is_cancelled());
}

#[test]
fn larger_stacks_on_request() {
    let rt = runtime();
    let v = rt.block_on(|| {
        rt::Builder::new()
            .name("big-frame")
            .stack_size(1 << 20)
            .spawn(|| {
                let buf = [1u8; 512 * 1024];
                std::hint::black_box(&buf)
                    .iter()
                    .map(|&b| b as u32)
                    .sum::<u32>()
            })
            .unwrap()
            .join()
            .unwrap()
    });
    assert_eq!(v, 512 * 1024);
}

#[test]
fn a_closure_too_big_for_its_stack_is_refused() {
    let rt = runtime();
    // The outer coroutine gets a large stack: the 200 KiB closure is built
    // on it before the default-sized inner one refuses it.
    let e = rt.block_on(|| {
        rt::Builder::new()
            .stack_size(4 << 20)
            .spawn(|| {
                let big = [0u8; 200 * 1024];
                rt::Builder::new()
                    .spawn(move || big.len())
                    .map(|_| ())
                    .unwrap_err()
                    .to_string()
            })
            .unwrap()
            .join()
            .unwrap()
    });
    assert!(e.contains("does not fit"), "{e}");
}

#[test]
fn spawn_outside_a_reactor_is_an_error() {
    let e = rt::Builder::new().spawn(|| 1).map(|_| ()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::Unsupported);
}

#[test]
fn bad_core_sets_are_refused_clearly() {
    let cfg = Config {
        cores: rt::CoreSet::from_list(vec![4000]),
        pin: true,
        ..Config::default()
    };
    let e = Runtime::new(cfg).err().expect("core 4000 does not exist");
    assert!(e.to_string().contains("core 4000"), "{e}");
}
