//! `ferrite-sys`: the one crate where Ferrite talks to the kernel and to C
//! libraries directly.
//!
//! Every module here turns a raw surface (a system call, a C function, a
//! signal handler) into a small safe API. The rest of the workspace keeps its
//! `unsafe` to the coroutine context switch and the device submission paths.
//!
//! Each `unsafe` block carries a `// SAFETY:` line saying why it is sound.

pub mod affinity;
pub mod devmem;
pub mod dma;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod epoll;
pub mod eventfd;
pub mod exit;
pub mod guarded;
pub mod mmio;
pub mod net;
pub mod netns;
pub mod pagemap;
pub mod pci;
pub mod segv;
pub mod signals;
pub mod timerfd;
pub mod ucontext;
pub mod vfio;

use std::io;

/// Turns a `-1` return of a libc call into the thread's `errno` as an error.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The size of a page on this machine.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n <= 0 {
        4096
    } else {
        n as usize
    }
}

/// The id of the calling thread, as the kernel knows it (for logs and tests).
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// CPU time consumed by the calling thread.
pub fn thread_cpu_time() -> std::time::Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time consumed by the whole process.
pub fn process_cpu_time() -> std::time::Duration {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn clock(id: libc::clockid_t) -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(id, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
