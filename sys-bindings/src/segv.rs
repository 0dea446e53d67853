//! A SIGSEGV/SIGBUS hook that lets the runtime recognise a fault in a
//! coroutine's guard page and report it by name before aborting.
//!
//! The hook runs inside a signal handler on the thread's alternate signal
//! stack, so it must be async-signal-safe: no allocation, no locks, only
//! [`write_stderr`] and plain reads of memory the faulting thread owns.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

/// Returns `true` when it recognised (and reported) the fault; the process is
/// then aborted. `false` passes the fault on to the previous handler.
pub type FaultHook = fn(fault_addr: usize) -> bool;

static HOOK: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();
static mut PREV_SEGV: Option<libc::sigaction> = None;
static mut PREV_BUS: Option<libc::sigaction> = None;

/// Installs the process-wide handler (once) and sets the hook it consults.
pub fn install(hook: FaultHook) -> io::Result<()> {
    HOOK.store(hook as usize, Ordering::Release);
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: runs once, before any handler of ours can read PREV_*; the
        // sigaction structs are valid for the calls.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut sa.sa_mask);
            for (sig, slot) in [
                (libc::SIGSEGV, &raw mut PREV_SEGV),
                (libc::SIGBUS, &raw mut PREV_BUS),
            ] {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &sa, &mut old) != 0 {
                    result = Err(io::Error::last_os_error());
                    return;
                }
                *slot = Some(old);
            }
        }
    });
    result
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let hook = HOOK.load(Ordering::Acquire);
    if hook != 0 {
        // SAFETY: HOOK only ever holds a `FaultHook` stored by `install`.
        let hook: FaultHook = unsafe { std::mem::transmute::<usize, FaultHook>(hook) };
        if hook(addr) {
            abort();
        }
    }
    // Not ours: hand over to whoever was installed before (Rust's own stack
    // overflow reporter for thread stacks), or fall back to the default action.
    // SAFETY: PREV_* were written once in `install` before this handler could run.
    let prev = unsafe {
        let slot = if sig == libc::SIGSEGV {
            &raw const PREV_SEGV
        } else {
            &raw const PREV_BUS
        };
        (*slot).as_ref()
    };
    match prev {
        Some(p) if p.sa_sigaction != libc::SIG_DFL && p.sa_sigaction != libc::SIG_IGN => {
            if p.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was registered as a 3-argument handler.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(p.sa_sigaction) };
                f(sig, info, ctx);
            } else {
                // SAFETY: the previous handler was registered as a 1-argument handler.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(p.sa_sigaction) };
                f(sig);
            }
        }
        _ => {
            // SAFETY: restoring the default disposition; returning re-executes
            // the faulting instruction, which then kills the process normally.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    }
}

/// Writes bytes to standard error with one system call per chunk; safe to
/// call from a signal handler.
pub fn write_stderr(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is valid for reads of its length.
        let n = unsafe { libc::write(2, bytes.as_ptr() as *const libc::c_void, bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// Aborts the process (SIGABRT); safe to call from a signal handler.
pub fn abort() -> ! {
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// An alternate signal stack for the calling thread, so the fault handler can
/// run when the fault is a stack overflow. Dropping it restores the previous
/// state and frees the memory.
pub struct AltStack {
    mem: Option<crate::guarded::GuardedMapping>,
}

impl AltStack {
    const SIZE: usize = 64 * 1024;

    /// Installs an alternate stack unless the thread already has one.
    pub fn ensure() -> io::Result<Self> {
        // SAFETY: stack_t is plain data; the query writes only `old`.
        let mut old: libc::stack_t = unsafe { std::mem::zeroed() };
        // SAFETY: a null new-stack pointer only queries.
        crate::cvt(unsafe { libc::sigaltstack(std::ptr::null(), &mut old) })?;
        if old.ss_flags & libc::SS_DISABLE == 0 {
            return Ok(Self { mem: None });
        }
        let mem = crate::guarded::GuardedMapping::new(Self::SIZE, 1)?;
        let st = libc::stack_t {
            ss_sp: mem.usable_start() as *mut libc::c_void,
            ss_flags: 0,
            ss_size: mem.usable_len(),
        };
        // SAFETY: `st` describes memory owned by `mem`, which outlives the
        // registration (Drop unregisters before unmapping).
        crate::cvt(unsafe { libc::sigaltstack(&st, std::ptr::null_mut()) })?;
        Ok(Self { mem: Some(mem) })
    }
}

impl Drop for AltStack {
    fn drop(&mut self) {
        if self.mem.is_some() {
            let st = libc::stack_t {
                ss_sp: std::ptr::null_mut(),
                ss_flags: libc::SS_DISABLE,
                ss_size: 0,
            };
            // SAFETY: disabling the alternate stack takes no memory of ours.
            unsafe { libc::sigaltstack(&st, std::ptr::null_mut()) };
        }
    }
}
