//! SPDK bdevs as Ferrite block devices (feature `spdk`; bindings in
//! `sys-bindings/spdk`, generated against the SPDK that `SPDK_PATH` or
//! pkg-config names).
//!
//! # Threads
//! - An *app* OS thread (`spdk-app`) initialises SPDK's environment and
//!   subsystems, creating the bdevs of the JSON config named by
//!   `FERRITE_SPDK_CONFIG` (SPDK's `save_config` format: e.g. a
//!   `bdev_nvme_attach_controller` or `bdev_malloc_create`), then polls its
//!   SPDK thread forever; it opens and closes descriptors and serves
//!   requests from threads that are not reactors.
//! - Each Ferrite reactor that does I/O gets its own SPDK thread (created
//!   on first use) and I/O channel per device, polled by a reactor poller:
//!   SPDK's bdev layer runs on Ferrite's reactors, as SPDK's own reactors
//!   would run it.
//!
//! # Buffers
//! SPDK needs DMA buffers it can translate: the engine's DMA arena is
//! registered with SPDK (`spdk_mem_register`; it is hugepage-backed and
//! 2 MiB aligned when hugepages are reserved). A buffer outside it (a heap
//! fallback) is refused with an error that says so.
//!
//! # Status
//! Compiled (bindgen + rustc) against SPDK v23.01-pre's headers, never
//! linked or run: see engine/bdev/spdk/README.md.

use super::{check_op, dma, BlockDevice, DeviceInfo, DeviceStats, IoDone, IoOp, BLOCK_SIZE};
use crate::rt;
use ferrite_spdk_sys as spdk;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::task::Waker;
use std::time::Duration;

struct App {
    thread: Arc<spdk::Thread>,
}

static APP: OnceLock<Result<App, String>> = OnceLock::new();

fn app() -> io::Result<&'static App> {
    APP.get_or_init(start_app)
        .as_ref()
        .map_err(|e| io::Error::other(e.clone()))
}

fn start_app() -> Result<App, String> {
    let (tx, rx) = mpsc::channel::<Result<Arc<spdk::Thread>, String>>();
    let spawned = std::thread::Builder::new()
        .name("spdk-app".into())
        .spawn(move || {
            let r = (|| -> Result<Arc<spdk::Thread>, String> {
                spdk::env_init("ferrite", "0x1", 0).map_err(|e| e.to_string())?;
                if let Some((base, len)) = dma::arena_range() {
                    if let Err(e) = spdk::mem_register(base, len) {
                        log::warn!(
                            "spdk: DMA arena not registered ({e}): I/O buffers will be refused"
                        );
                    }
                }
                let t = Arc::new(spdk::Thread::create("ferrite-app").map_err(|e| e.to_string())?);
                let rc = Rc::new(Cell::new(None));
                let r2 = rc.clone();
                let cfg = std::env::var("FERRITE_SPDK_CONFIG").ok();
                spdk::subsystem_init(cfg.as_deref(), move |code| r2.set(Some(code)))
                    .map_err(|e| e.to_string())?;
                while rc.get().is_none() {
                    t.poll();
                }
                match rc.get() {
                    Some(0) => Ok(t),
                    Some(code) => Err(format!(
                        "spdk: subsystem initialisation failed ({code}) with config {cfg:?}"
                    )),
                    None => unreachable!("loop ends with a code"),
                }
            })();
            let t = r.as_ref().ok().cloned();
            let _ = tx.send(r);
            if let Some(t) = t {
                log::info!("spdk {}: subsystems initialised", spdk::version());
                loop {
                    if !t.poll() {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        return Err(format!("spdk: starting the app thread: {e}"));
    }
    let thread = rx
        .recv()
        .map_err(|_| "spdk: the app thread died during start-up".to_string())??;
    Ok(App { thread })
}

/// Runs `f` on the app's SPDK thread and waits for its result.
fn on_app<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    let a = app()?;
    let (tx, rx) = mpsc::channel();
    a.thread.send(move || {
        let _ = tx.send(f());
    })?;
    rx.recv()
        .map_err(|_| io::Error::other("spdk: the app thread dropped a request"))
}

/// An SPDK bdev.
pub struct SpdkDevice {
    desc: Arc<spdk::Desc>,
    id: usize,
    info: DeviceInfo,
    stats: DeviceStats,
}

/// Opens SPDK bdev `name` (creating SPDK's app thread and subsystems on
/// first use).
pub fn open(name: &str) -> io::Result<Arc<SpdkDevice>> {
    let n = name.to_string();
    let desc = on_app(move || spdk::Desc::open(&n))??;
    let bs = desc.block_size() as u64;
    if bs == 0 || BLOCK_SIZE % bs != 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("spdk bdev {name}: block size {bs} does not divide 4096"),
        ));
    }
    let size = desc.num_blocks() * bs / BLOCK_SIZE * BLOCK_SIZE;
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
    Ok(Arc::new(SpdkDevice {
        desc: Arc::new(desc),
        id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        info: DeviceInfo {
            name: name.to_string(),
            size,
            block_size: BLOCK_SIZE,
            backend: "spdk",
        },
        stats: DeviceStats::default(),
    }))
}

impl Drop for SpdkDevice {
    fn drop(&mut self) {
        // Channels of reactors that used it are put when their reactor
        // thread ends; the descriptor is closed on its opening thread.
        let d = self.desc.clone();
        if let Some(Ok(a)) = APP.get() {
            let _ = a.thread.send(move || {
                if let Ok(d) = Arc::try_unwrap(d) {
                    d.close();
                }
            });
        }
    }
}

/// One reactor's SPDK thread and its channels.
struct Local {
    thread: spdk::Thread,
    channels: RefCell<HashMap<usize, Rc<spdk::Channel>>>,
}

thread_local! {
    static LOCAL: RefCell<Option<Rc<Local>>> = const { RefCell::new(None) };
}

fn local() -> io::Result<Rc<Local>> {
    if let Some(l) = LOCAL.with(|l| l.borrow().clone()) {
        return Ok(l);
    }
    app()?;
    let name = format!("ferrite-reactor-{}", rt::current_reactor().unwrap_or(0));
    let l = Rc::new(Local {
        thread: spdk::Thread::create(&name)?,
        channels: RefCell::new(HashMap::new()),
    });
    let p = l.clone();
    let busy = rt::current_handle().map(|h| h.config().poll_mode) == Some(rt::PollMode::Busy);
    let wake = if busy {
        rt::PollerWake::ByOthers
    } else {
        rt::PollerWake::Every(Duration::from_micros(100))
    };
    rt::register_poller("bdev-spdk", wake, move || p.thread.poll())?;
    LOCAL.with(|x| *x.borrow_mut() = Some(l.clone()));
    Ok(l)
}

struct Group {
    left: Cell<usize>,
    results: RefCell<Vec<Option<io::Result<()>>>>,
    waker: RefCell<Option<Waker>>,
}

fn in_arena(v: &[(usize, usize)]) -> bool {
    match dma::arena_range() {
        Some((base, len)) => v.iter().all(|&(a, l)| a >= base && a + l <= base + len),
        None => v.is_empty(),
    }
}

/// What `op` asks of SPDK: kind, byte offset, byte length, FUA. A flush
/// covers the whole device (`size` bytes): SPDK's flush takes a range.
fn op_kind(op: &IoOp, size: u64) -> (spdk::Kind, u64, u64, bool) {
    match op {
        IoOp::Read { offset, .. } | IoOp::Readv { offset, .. } => {
            (spdk::Kind::Read, *offset, op.transfer_len(), false)
        }
        IoOp::Write { offset, fua, .. } | IoOp::Writev { offset, fua, .. } => {
            (spdk::Kind::Write, *offset, op.transfer_len(), *fua)
        }
        IoOp::Flush => (spdk::Kind::Flush, 0, size, false),
        IoOp::WriteZeroes { offset, len } => (spdk::Kind::WriteZeroes, *offset, *len, false),
        IoOp::Unmap { offset, len } => (spdk::Kind::Unmap, *offset, *len, false),
    }
}

fn is_fua(op: &IoOp) -> bool {
    matches!(
        op,
        IoOp::Write { fua: true, .. } | IoOp::Writev { fua: true, .. }
    )
}

fn copy_err(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

impl SpdkDevice {
    /// On a reactor: submit on its SPDK thread, park until the batch is done.
    fn submit_reactor(&self, ops: &[IoOp]) -> Vec<io::Result<()>> {
        let l = match local() {
            Ok(l) => l,
            Err(e) => {
                return ops
                    .iter()
                    .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
                    .collect()
            }
        };
        let ch = {
            let mut chans = l.channels.borrow_mut();
            match chans.get(&self.id) {
                Some(c) => c.clone(),
                None => match self.desc.channel() {
                    Ok(c) => {
                        let c = Rc::new(c);
                        chans.insert(self.id, c.clone());
                        c
                    }
                    Err(e) => {
                        return ops
                            .iter()
                            .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
                            .collect()
                    }
                },
            }
        };
        let g = Rc::new(Group {
            left: Cell::new(0),
            results: RefCell::new(ops.iter().map(|_| None).collect()),
            waker: RefCell::new(Some(rt::current_waker())),
        });
        let mut any_fua = false;
        for (i, op) in ops.iter().enumerate() {
            if let Err(e) = check_op(&self.info, op) {
                g.results.borrow_mut()[i] = Some(Err(e));
                continue;
            }
            let v = op.buffers();
            if !in_arena(&v) {
                g.results.borrow_mut()[i] = Some(Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "spdk bdev {}: a buffer outside the (SPDK-registered) DMA arena",
                        self.info.name
                    ),
                )));
                continue;
            }
            let (kind, off, len, fua) = op_kind(op, self.info.size);
            any_fua |= fua;
            g.left.set(g.left.get() + 1);
            loop {
                let g2 = g.clone();
                let name = self.info.name.clone();
                // SAFETY: the buffers belong to `ops`, which `submit` keeps
                // (and does not return) until every completion of this
                // batch ran; arena memory is registered with SPDK.
                let r = unsafe {
                    spdk::submit(&self.desc, &ch, kind, &v, off, len, move |ok| {
                        g2.results.borrow_mut()[i] = Some(if ok {
                            Ok(())
                        } else {
                            Err(io::Error::other(format!(
                                "spdk bdev {name}: {kind:?} at {off} of {len} bytes failed"
                            )))
                        });
                        g2.left.set(g2.left.get() - 1);
                        if g2.left.get() == 0 {
                            if let Some(w) = g2.waker.borrow_mut().take() {
                                w.wake();
                            }
                        }
                    })
                };
                match r {
                    Ok(()) => break,
                    // No bdev_io free: let completions come back first.
                    Err(rc) if rc == -libc::ENOMEM => rt::yield_now(),
                    Err(rc) => {
                        g.left.set(g.left.get() - 1);
                        g.results.borrow_mut()[i] = Some(Err(io::Error::other(format!(
                            "spdk bdev {}: submitting {kind:?}: {}",
                            self.info.name,
                            io::Error::from_raw_os_error(-rc)
                        ))));
                        break;
                    }
                }
            }
        }
        while g.left.get() > 0 {
            *g.waker.borrow_mut() = Some(rt::current_waker());
            rt::park();
        }
        let mut res: Vec<io::Result<()>> = g
            .results
            .borrow_mut()
            .drain(..)
            .map(|r| r.unwrap_or(Ok(())))
            .collect();
        if any_fua {
            // FUA through a flush after the batch's writes completed.
            let f = self.submit_reactor(&[IoOp::Flush]).pop().unwrap_or(Ok(()));
            if let Err(e) = f {
                for (r, op) in res.iter_mut().zip(ops) {
                    if is_fua(op) && r.is_ok() {
                        *r = Err(copy_err(&e));
                    }
                }
            }
        }
        res
    }
}

impl BlockDevice for SpdkDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn stats(&self) -> &DeviceStats {
        &self.stats
    }

    fn submit(&self, ops: Vec<IoOp>) -> Vec<IoDone> {
        if !(rt::in_coroutine() && rt::current_reactor().is_some()) {
            return self.submit_off_reactor(ops);
        }
        let results = self.submit_reactor(&ops);
        ops.into_iter()
            .zip(results)
            .map(|(op, result)| {
                self.stats.account(&op, result.is_ok());
                IoDone { op, result }
            })
            .collect()
    }
}

impl SpdkDevice {
    /// Off the reactors (a plain thread): the batch is submitted on the app
    /// thread's SPDK thread, whose completions send the results back; this
    /// thread waits for them.
    fn submit_off_reactor(&self, ops: Vec<IoOp>) -> Vec<IoDone> {
        let fail_all = |ops: Vec<IoOp>, e: &io::Error| -> Vec<IoDone> {
            ops.into_iter()
                .map(|op| {
                    self.stats.account(&op, false);
                    IoDone {
                        op,
                        result: Err(copy_err(e)),
                    }
                })
                .collect()
        };
        let a = match app() {
            Ok(a) => a,
            Err(e) => return fail_all(ops, &e),
        };
        // The ops travel to the app thread and back; if the message cannot
        // be queued they are taken back from here.
        let slot = Arc::new(std::sync::Mutex::new(Some(ops)));
        let (tx, rx) = mpsc::channel();
        let (desc, info, s2) = (self.desc.clone(), self.info.clone(), slot.clone());
        let sent = a.thread.send(move || {
            let ops = s2.lock().map(|mut o| o.take()).unwrap_or(None);
            if let Some(ops) = ops {
                run_on_app(desc, info, ops, tx);
            }
        });
        if let Err(e) = sent {
            let ops = slot.lock().map(|mut o| o.take()).unwrap_or(None);
            return fail_all(ops.unwrap_or_default(), &e);
        }
        match rx.recv() {
            Ok(done) => {
                for d in &done {
                    self.stats.account(&d.op, d.result.is_ok());
                }
                done
            }
            Err(_) => {
                // The app thread dropped the batch without answering (it
                // panicked): the buffers went with it.
                log::error!(
                    "spdk bdev {}: the app thread dropped a batch",
                    self.info.name
                );
                Vec::new()
            }
        }
    }
}

/// A plain thread's batch on the app's SPDK thread (see
/// [`SpdkDevice::submit_off_reactor`]); it owns the ops (and so the
/// buffers) until the last completion.
struct AppBatch {
    desc: Arc<spdk::Desc>,
    info: DeviceInfo,
    ch: Rc<spdk::Channel>,
    ops: Vec<IoOp>,
    results: Vec<Option<io::Result<()>>>,
    left: usize,
    /// A FUA write is in the batch: flush once the writes completed.
    fua: bool,
    tx: Option<mpsc::Sender<Vec<IoDone>>>,
}

/// Runs on the app's SPDK thread: submits the batch; completions (later
/// polls of the same thread) finish it. No nested polling.
fn run_on_app(
    desc: Arc<spdk::Desc>,
    info: DeviceInfo,
    ops: Vec<IoOp>,
    tx: mpsc::Sender<Vec<IoDone>>,
) {
    let ch = match desc.channel() {
        Ok(c) => Rc::new(c),
        Err(e) => {
            let _ = tx.send(
                ops.into_iter()
                    .map(|op| IoDone {
                        op,
                        result: Err(copy_err(&e)),
                    })
                    .collect(),
            );
            return;
        }
    };
    let n = ops.len();
    let b = Rc::new(RefCell::new(AppBatch {
        desc: desc.clone(),
        info,
        ch: ch.clone(),
        ops,
        results: (0..n).map(|_| None).collect(),
        left: 0,
        fua: false,
        tx: Some(tx),
    }));
    for i in 0..n {
        let prepared = {
            let s = &mut *b.borrow_mut();
            let op = &s.ops[i];
            let bufs = op.buffers();
            if let Err(e) = check_op(&s.info, op) {
                s.results[i] = Some(Err(e));
                None
            } else if !in_arena(&bufs) {
                s.results[i] = Some(Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "spdk bdev {}: a buffer outside the (SPDK-registered) DMA arena",
                        s.info.name
                    ),
                )));
                None
            } else {
                let (kind, off, len, fua) = op_kind(op, s.info.size);
                s.left += 1;
                s.fua |= fua;
                Some((kind, off, len, bufs))
            }
        };
        let Some((kind, off, len, v)) = prepared else {
            continue;
        };
        let b2 = b.clone();
        // SAFETY: the buffers belong to `b.ops`, which lives (in `b`, kept
        // by this completion's closure) until the last completion of the
        // batch; arena memory is registered with SPDK. No borrow of `b` is
        // held across the call.
        let r = unsafe {
            spdk::submit(&desc, &ch, kind, &v, off, len, move |ok| {
                let last = {
                    let mut s = b2.borrow_mut();
                    s.results[i] = Some(if ok {
                        Ok(())
                    } else {
                        Err(io::Error::other(format!(
                            "spdk bdev {}: {kind:?} at {off} of {len} bytes failed",
                            s.info.name
                        )))
                    });
                    s.left -= 1;
                    s.left == 0
                };
                if last {
                    app_finish(&b2);
                }
            })
        };
        if let Err(rc) = r {
            // Not submitted (-ENOMEM included: off the reactors there is no
            // retry; the caller sees the error).
            let mut s = b.borrow_mut();
            s.left -= 1;
            s.results[i] = Some(Err(io::Error::other(format!(
                "spdk bdev {}: submitting {kind:?}: {}",
                s.info.name,
                io::Error::from_raw_os_error(-rc)
            ))));
        }
    }
    if b.borrow().left == 0 {
        app_finish(&b);
    }
}

/// The batch's I/O completed: flush for FUA writes if needed, else send the
/// results back.
fn app_finish(b: &Rc<RefCell<AppBatch>>) {
    let flush = std::mem::take(&mut b.borrow_mut().fua);
    if flush {
        let (desc, ch, size) = {
            let mut s = b.borrow_mut();
            s.left = 1;
            (s.desc.clone(), s.ch.clone(), s.info.size)
        };
        let b2 = b.clone();
        // SAFETY: a flush carries no buffers.
        let r = unsafe {
            spdk::submit(&desc, &ch, spdk::Kind::Flush, &[], 0, size, move |ok| {
                if !ok {
                    fail_fua(&b2, &io::Error::other("spdk: flush for FUA failed"));
                }
                b2.borrow_mut().left = 0;
                app_finish(&b2);
            })
        };
        if let Err(rc) = r {
            fail_fua(b, &io::Error::from_raw_os_error(-rc));
            b.borrow_mut().left = 0;
            app_finish(b);
        }
        return;
    }
    let (ops, results, tx) = {
        let mut s = b.borrow_mut();
        (
            std::mem::take(&mut s.ops),
            std::mem::take(&mut s.results),
            s.tx.take(),
        )
    };
    let done: Vec<IoDone> = ops
        .into_iter()
        .zip(results)
        .map(|(op, r)| IoDone {
            op,
            result: r.unwrap_or(Ok(())),
        })
        .collect();
    if let Some(tx) = tx {
        let _ = tx.send(done);
    }
}

/// A FUA write whose flush failed is not durable: its result becomes `e`.
fn fail_fua(b: &Rc<RefCell<AppBatch>>, e: &io::Error) {
    let s = &mut *b.borrow_mut();
    for (r, op) in s.results.iter_mut().zip(&s.ops) {
        if is_fua(op) && matches!(r, Some(Ok(()))) {
            *r = Some(Err(copy_err(e)));
        }
    }
}
