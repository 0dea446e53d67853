//! Starting and stopping a set of reactors and the worker pool.

use super::coro::{self, RemoteJoinHandle};
use super::cpuset::CoreSet;
use super::migrate::WorkerPool;
use super::reactor::{Host, Local, Msg, ReactorShared};
use super::stack::DEFAULT_STACK_SIZE;
use super::PollMode;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

/// How a runtime is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// One reactor per core, in this order; reactor `i` runs on `cores[i]`.
    pub cores: CoreSet,
    /// Pin each reactor thread to its core. Off, the core is only a label
    /// (useful where the allowed CPU set is smaller than the mask).
    pub pin: bool,
    pub poll_mode: PollMode,
    /// Adaptive mode: how long a reactor spins without work before it sleeps.
    pub adaptive_spin: Duration,
    /// Usable bytes of each pooled coroutine stack.
    pub stack_size: usize,
    /// Free stacks kept per reactor.
    pub stack_cache: usize,
    /// Stacks mapped per reactor at start.
    pub stack_prefill: usize,
    /// Threads of the worker pool that [`super::migrate`] moves coroutines to.
    pub workers: usize,
    /// How long shutdown waits for cancelled coroutines to unwind.
    pub shutdown_grace: Duration,
    /// Thread name prefix.
    pub name: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cores: CoreSet::from_list(vec![0]),
            pin: true,
            poll_mode: PollMode::Adaptive,
            adaptive_spin: Duration::from_micros(200),
            stack_size: DEFAULT_STACK_SIZE,
            stack_cache: 4096,
            stack_prefill: 16,
            workers: 1,
            shutdown_grace: Duration::from_secs(5),
            name: "reactor".into(),
        }
    }
}

impl Config {
    /// A configuration for tests: `n` unpinned adaptive reactors on the first
    /// cores, one worker.
    pub fn for_tests(n: usize) -> Self {
        Self {
            cores: CoreSet::from_list((0..n).collect()),
            pin: false,
            ..Self::default()
        }
    }
}

/// What every thread of one runtime shares.
pub struct RuntimeShared {
    pub(crate) config: Config,
    pub(crate) reactors: Vec<Arc<ReactorShared>>,
    pub(crate) workers: WorkerPool,
}

/// A running set of reactors. Dropping it shuts it down.
pub struct Runtime {
    shared: Arc<RuntimeShared>,
    threads: Vec<thread::JoinHandle<()>>,
    worker_threads: Vec<thread::JoinHandle<()>>,
}

/// A cloneable, `Send` handle to a runtime, to reach its reactors from
/// anywhere.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<RuntimeShared>,
}

impl Runtime {
    /// Starts the reactors (and worker threads) and waits until every one of
    /// them is looping.
    pub fn new(config: Config) -> io::Result<Self> {
        if config.cores.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the core set is empty: no reactor to start",
            ));
        }
        if config.pin {
            let allowed = ferrite_sys::affinity::allowed_cpus()?;
            for c in config.cores.iter() {
                if !allowed.contains(&c) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("core {c} is not in this process's allowed CPU set {allowed:?}"),
                    ));
                }
            }
        }
        super::overflow::install()?;
        let mut reactors = Vec::new();
        for (i, core) in config.cores.iter().enumerate() {
            reactors.push(Arc::new(ReactorShared::new(i, Some(core))?));
        }
        let (workers, worker_rx) = WorkerPool::new(config.workers);
        let shared = Arc::new(RuntimeShared {
            config: config.clone(),
            reactors,
            workers,
        });

        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        let mut threads = Vec::new();
        for i in 0..shared.reactors.len() {
            let sh = shared.clone();
            let tx = ready_tx.clone();
            let name = format!("{}-{}", config.name, i);
            let t = thread::Builder::new()
                .name(name)
                .spawn(move || reactor_thread(sh, i, tx))?;
            threads.push(t);
        }
        let worker_threads = super::migrate::start_workers(&shared, worker_rx)?;
        drop(ready_tx);
        let mut rt = Self {
            shared,
            threads,
            worker_threads,
        };
        for _ in 0..rt.threads.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    rt.stop_and_join();
                    return Err(e);
                }
                Err(_) => {
                    rt.stop_and_join();
                    return Err(io::Error::other("a reactor thread died during start-up"));
                }
            }
        }
        Ok(rt)
    }

    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    pub fn reactor_count(&self) -> usize {
        self.shared.reactors.len()
    }

    /// Runs `f` in a coroutine on reactor 0 and blocks the calling thread
    /// until it returns. A panic in `f` is re-raised here.
    pub fn block_on<F, T>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match self.handle().spawn_on(0, f).join() {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Spawns a coroutine on reactor `reactor` from any thread.
    pub fn spawn_on<F, T>(&self, reactor: usize, f: F) -> RemoteJoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.handle().spawn_on(reactor, f)
    }

    /// Stops every reactor: live coroutines are cancelled (they unwind at
    /// their next park), queues are drained, and every thread is joined.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        for r in &self.shared.reactors {
            r.stop.store(true, Ordering::Release);
            r.kick();
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                log::error!("a reactor thread panicked during shutdown");
            }
        }
        self.shared.workers.stop();
        for t in self.worker_threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

impl Handle {
    pub fn reactor_count(&self) -> usize {
        self.shared.reactors.len()
    }

    pub fn reactors(&self) -> &[Arc<ReactorShared>] {
        &self.shared.reactors
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Spawns a coroutine on reactor `reactor` (any thread may call this).
    ///
    /// # Panics
    /// If `reactor` is out of range.
    pub fn spawn_on<F, T>(&self, reactor: usize, f: F) -> RemoteJoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if let Some(local) = super::reactor::current_local() {
            if local.id == reactor && Arc::ptr_eq(&local.rt, &self.shared) {
                return coro::spawn_remote_on_local(local, f)
                    .unwrap_or_else(|e| panic!("spawn on reactor {reactor}: {e}"));
            }
        }
        let target = &self.shared.reactors[reactor];
        let (tx, rx) = super::sync::oneshot::<RemoteJoinHandle<T>>();
        let call = Box::new(move || {
            let local =
                super::reactor::current_local().expect("a reactor message runs on its reactor");
            match coro::spawn_remote_on_local(local, f) {
                Ok(h) => {
                    let _ = tx.send(h);
                }
                Err(e) => log::error!("spawn on reactor {}: {e}", local.id),
            }
        });
        target.send(Msg::Call(call));
        // The reactor answers from its scheduler context without blocking,
        // so this wait is short (and parks a coroutine when called from one).
        rx.recv()
            .expect("the reactor could not start the coroutine (out of stack memory?)")
    }

    /// Runs `f` on reactor `reactor`'s scheduler context and returns its
    /// result. `f` must not block: it runs between coroutines. From a
    /// coroutine the caller parks; from a plain thread it blocks.
    pub fn call_on<F, R>(&self, reactor: usize, f: F) -> R
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        if let Some(local) = super::reactor::current_local() {
            if local.id == reactor && Arc::ptr_eq(&local.rt, &self.shared) {
                return f();
            }
        }
        let (tx, rx) = super::sync::oneshot();
        self.shared.reactors[reactor].send(Msg::Call(Box::new(move || {
            let _ = tx.send(f());
        })));
        rx.recv()
            .expect("the cross-reactor call panicked on its reactor")
    }

    /// Sends `f` to run on reactor `reactor`'s scheduler context; does not wait.
    pub fn post(&self, reactor: usize, f: impl FnOnce() + Send + 'static) {
        self.shared.reactors[reactor].send(Msg::Call(Box::new(f)));
    }

    /// Spawns a `Send` future as an async task on reactor `reactor`.
    pub fn spawn_task_on<F>(&self, reactor: usize, fut: F) -> async_task::Task<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        super::future::spawn_task_on_shared(self.shared.reactors[reactor].clone(), fut)
    }
}

/// The handle of the runtime the calling reactor thread belongs to.
pub fn current_handle() -> Option<Handle> {
    super::reactor::current_local().map(|l| Handle {
        shared: l.rt.clone(),
    })
}

fn reactor_thread(shared: Arc<RuntimeShared>, id: usize, ready: mpsc::Sender<io::Result<()>>) {
    let rs = shared.reactors[id].clone();
    let start = || -> io::Result<(ferrite_sys::segv::AltStack, Local)> {
        if shared.config.pin {
            if let Some(core) = rs.core {
                ferrite_sys::affinity::pin_current_thread(core).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("pinning reactor {id} to core {core}: {e}"),
                    )
                })?;
            }
        }
        let alt = ferrite_sys::segv::AltStack::ensure()?;
        let local = Local::new(rs.clone(), shared.clone())?;
        Ok((alt, local))
    };
    let (_alt, local) = match start() {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rs.tid.store(ferrite_sys::gettid(), Ordering::Relaxed);
    let host = Host::new(&local as *const Local);
    host.install();
    let _ = ready.send(Ok(()));
    drop(ready);
    log::debug!(
        "reactor {id} running on core {:?} (pinned: {})",
        rs.core,
        shared.config.pin
    );
    local.run(&host);
    host.uninstall();
    log::debug!("reactor {id} stopped");
}
