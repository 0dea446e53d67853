//! Wrappers over the raw bindings. Every `unsafe` block says why it is
//! sound; the one contract left to the caller is the lifetime of I/O buffer
//! memory, which [`submit`] states.

use crate::raw;
use std::ffi::{c_void, CStr, CString};
use std::io;
use std::ptr;

fn err(what: &str, rc: i32) -> io::Error {
    let e = io::Error::from_raw_os_error(rc.abs());
    io::Error::new(e.kind(), format!("spdk: {what}: {e}"))
}

/// The SPDK version of the headers the bindings were generated from
/// (`spdk/version.h`; SPDK has no run-time version call), e.g. `23.01.0`.
pub fn version() -> String {
    format!(
        "{}.{:02}.{}",
        raw::SPDK_VERSION_MAJOR,
        raw::SPDK_VERSION_MINOR,
        raw::SPDK_VERSION_PATCH
    )
}

/// Initialises SPDK's environment (DPDK's EAL underneath: hugepages, PCI).
/// Once per process; the calling thread may be pinned to the first core
/// of `core_mask`.
pub fn env_init(name: &str, core_mask: &str, mem_mb: i32) -> io::Result<()> {
    // Leaked on purpose: the environment keeps pointers to them for the
    // life of the process.
    let name = CString::new(name).map_err(|_| err("env name has a NUL", libc::EINVAL))?;
    let mask = CString::new(core_mask).map_err(|_| err("core mask has a NUL", libc::EINVAL))?;
    let mut opts = raw::spdk_env_opts::default();
    #[cfg(spdk_env_opts_size)]
    {
        opts.opts_size = std::mem::size_of::<raw::spdk_env_opts>() as _;
    }
    // SAFETY: `opts` is a valid, writable spdk_env_opts (with its size set
    // where the headers version it).
    unsafe { raw::spdk_env_opts_init(&mut opts) };
    opts.name = name.into_raw();
    opts.core_mask = mask.into_raw();
    if mem_mb > 0 {
        opts.mem_size = mem_mb;
    }
    // SAFETY: `opts` was initialised by spdk_env_opts_init; its strings are
    // leaked (process lifetime).
    let rc = unsafe { raw::spdk_env_init(&opts) };
    if rc != 0 {
        return Err(err(
            "spdk_env_init (hugepages reserved? scripts/setup.sh)",
            rc,
        ));
    }
    // SAFETY: no new-thread callback, no per-thread context.
    let rc = unsafe { raw::spdk_thread_lib_init(None, 0) };
    if rc != 0 {
        return Err(err("spdk_thread_lib_init", rc));
    }
    Ok(())
}

/// Registers memory for DMA with SPDK's memory map (2 MiB aligned,
/// hugepage-backed; for the engine's DMA arena).
pub fn mem_register(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: registration only records the translation of a mapping the
    // caller keeps for the process's lifetime (the engine's arena).
    let rc = unsafe { raw::spdk_mem_register(addr as *mut c_void, len) };
    if rc != 0 {
        return Err(err("spdk_mem_register", rc));
    }
    Ok(())
}

/// An SPDK thread: a message queue and pollers that a Ferrite reactor (or
/// the SPDK app thread of the backend) polls.
pub struct Thread {
    t: *mut raw::spdk_thread,
}

// SAFETY: an spdk_thread may be messaged from any thread
// (spdk_thread_send_msg); polling happens only on the owner, which `poll`'s
// documentation requires.
unsafe impl Send for Thread {}
// SAFETY: as above: only `send` is meant for other threads.
unsafe impl Sync for Thread {}

type Msg = Box<dyn FnOnce() + Send>;

unsafe extern "C" fn run_msg(arg: *mut c_void) {
    // SAFETY: `arg` is the Box<Msg> leaked by `Thread::send`, run once.
    let f = unsafe { Box::from_raw(arg as *mut Msg) };
    f();
}

impl Thread {
    /// Creates an SPDK thread and makes it the calling OS thread's current
    /// one (SPDK calls made here run on it).
    pub fn create(name: &str) -> io::Result<Thread> {
        let n = CString::new(name).map_err(|_| err("thread name has a NUL", libc::EINVAL))?;
        // SAFETY: a NUL-terminated name; a null cpumask means any core.
        let t = unsafe { raw::spdk_thread_create(n.as_ptr(), ptr::null()) };
        if t.is_null() {
            return Err(err("spdk_thread_create", libc::ENOMEM));
        }
        // SAFETY: `t` is a live thread created just now.
        unsafe { raw::spdk_set_thread(t) };
        Ok(Thread { t })
    }

    /// Runs its messages and pollers once; true when it did work. Only on
    /// the OS thread that created it.
    pub fn poll(&self) -> bool {
        // SAFETY: `t` is live (dropped only in Drop); called on its owner.
        unsafe { raw::spdk_thread_poll(self.t, 0, 0) > 0 }
    }

    /// Runs `f` on this SPDK thread at its next poll (from any thread).
    pub fn send(&self, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let b: Box<Msg> = Box::new(Box::new(f));
        let p = Box::into_raw(b) as *mut c_void;
        // SAFETY: `run_msg` takes back the box exactly once.
        let rc = unsafe { raw::spdk_thread_send_msg(self.t, Some(run_msg), p) };
        if rc != 0 {
            // SAFETY: not queued: reclaim the box.
            drop(unsafe { Box::from_raw(p as *mut Msg) });
            return Err(err("spdk_thread_send_msg", rc));
        }
        Ok(())
    }
}

impl Drop for Thread {
    fn drop(&mut self) {
        // SAFETY: the thread is live; exit, poll until exited, destroy,
        // on its owner thread.
        unsafe {
            raw::spdk_set_thread(self.t);
            raw::spdk_thread_exit(self.t);
            let mut n = 0;
            while !raw::spdk_thread_is_exited(self.t) && n < 1_000_000 {
                raw::spdk_thread_poll(self.t, 0, 0);
                n += 1;
            }
            raw::spdk_thread_destroy(self.t);
        }
    }
}

type Done = Box<dyn FnOnce(i32)>;

unsafe extern "C" fn init_done(rc: i32, arg: *mut c_void) {
    // SAFETY: `arg` is the Box<Done> leaked by `subsystem_init`.
    let f = unsafe { Box::from_raw(arg as *mut Done) };
    f(rc);
}

/// Initialises SPDK's subsystems (bdev, accel, ...) on the current SPDK
/// thread, creating the bdevs of a JSON config (`rpc.py save_config`
/// format) when given; `done(rc)` runs from a later poll.
pub fn subsystem_init(
    json_config: Option<&str>,
    done: impl FnOnce(i32) + 'static,
) -> io::Result<()> {
    let b: Box<Done> = Box::new(Box::new(done));
    let p = Box::into_raw(b) as *mut c_void;
    match json_config {
        Some(path) => {
            let c = CString::new(path).map_err(|_| err("config path has a NUL", libc::EINVAL))?;
            let rpc = CString::new("/var/tmp/ferrite-spdk.sock").expect("no NUL");
            // SAFETY: strings outlive the call (SPDK copies them); `p` is
            // consumed by `init_done`.
            unsafe {
                raw::spdk_subsystem_init_from_json_config(
                    c.as_ptr(),
                    rpc.as_ptr(),
                    Some(init_done),
                    p,
                    true,
                )
            };
        }
        // SAFETY: `p` is consumed by `init_done`.
        None => unsafe { raw::spdk_subsystem_init(Some(init_done), p) },
    }
    Ok(())
}

/// An open bdev.
pub struct Desc {
    d: *mut raw::spdk_bdev_desc,
}

// SAFETY: descriptors are used for I/O from any SPDK thread (each with its
// own channel); closing happens on the opening thread (the backend's app
// thread), which the backend guarantees.
unsafe impl Send for Desc {}
// SAFETY: as above.
unsafe impl Sync for Desc {}

unsafe extern "C" fn bdev_event(
    ty: raw::spdk_bdev_event_type,
    bdev: *mut raw::spdk_bdev,
    _ctx: *mut c_void,
) {
    // SAFETY: SPDK passes a live bdev; its name is NUL-terminated.
    let name = unsafe { CStr::from_ptr(raw::spdk_bdev_get_name(bdev)) }.to_string_lossy();
    eprintln!("spdk: bdev {name}: event {ty:?} (remove: I/O on it fails from now on)");
}

impl Desc {
    /// Opens bdev `name` read-write (on an SPDK thread).
    pub fn open(name: &str) -> io::Result<Desc> {
        let n = CString::new(name).map_err(|_| err("bdev name has a NUL", libc::EINVAL))?;
        let mut d = ptr::null_mut();
        // SAFETY: valid name and out-pointer; the event callback ignores
        // its context.
        let rc = unsafe {
            raw::spdk_bdev_open_ext(n.as_ptr(), true, Some(bdev_event), ptr::null_mut(), &mut d)
        };
        if rc != 0 {
            return Err(err(&format!("opening bdev '{name}'"), rc));
        }
        Ok(Desc { d })
    }

    fn bdev(&self) -> *mut raw::spdk_bdev {
        // SAFETY: the descriptor is open.
        unsafe { raw::spdk_bdev_desc_get_bdev(self.d) }
    }

    pub fn block_size(&self) -> u32 {
        // SAFETY: a live bdev of an open descriptor.
        unsafe { raw::spdk_bdev_get_block_size(self.bdev()) }
    }

    pub fn num_blocks(&self) -> u64 {
        // SAFETY: a live bdev of an open descriptor.
        unsafe { raw::spdk_bdev_get_num_blocks(self.bdev()) }
    }

    /// A per-SPDK-thread I/O channel (call on that thread).
    pub fn channel(&self) -> io::Result<Channel> {
        // SAFETY: an open descriptor; the caller runs on an SPDK thread.
        let c = unsafe { raw::spdk_bdev_get_io_channel(self.d) };
        if c.is_null() {
            return Err(err(
                "spdk_bdev_get_io_channel (not on an SPDK thread?)",
                libc::ENOMEM,
            ));
        }
        Ok(Channel { c })
    }

    /// Closes the descriptor (on the thread that opened it).
    pub fn close(self) {
        // SAFETY: the descriptor is open and closed once (self is consumed).
        unsafe { raw::spdk_bdev_close(self.d) };
    }
}

/// An I/O channel of one SPDK thread.
pub struct Channel {
    c: *mut raw::spdk_io_channel,
}

impl Drop for Channel {
    fn drop(&mut self) {
        // SAFETY: the channel is live and released once, on its thread.
        unsafe { raw::spdk_put_io_channel(self.c) };
    }
}

/// What a request does.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Read,
    Write,
    Flush,
    WriteZeroes,
    Unmap,
}

struct IoCtx {
    _iov: Vec<libc::iovec>,
    done: Box<dyn FnOnce(bool)>,
}

unsafe extern "C" fn io_done(io: *mut raw::spdk_bdev_io, success: bool, arg: *mut c_void) {
    // SAFETY: SPDK hands us the finished bdev_io to free once, and `arg` is
    // the IoCtx leaked by `submit`.
    unsafe { raw::spdk_bdev_free_io(io) };
    let ctx = unsafe { Box::from_raw(arg as *mut IoCtx) };
    (ctx.done)(success);
}

/// Submits one request; `done(success)` runs from a later poll of the
/// current SPDK thread. `Err(ENOMEM)`: no bdev_io free now, retry later.
///
/// # Safety
/// For reads and writes, every `(address, length)` of `iov` must stay valid
/// (and, for reads, unaliased) until `done` runs: the device transfers data
/// there meanwhile. The memory must be registered with SPDK
/// ([`mem_register`]) when the bdev does DMA.
pub unsafe fn submit(
    desc: &Desc,
    ch: &Channel,
    kind: Kind,
    iov: &[(usize, usize)],
    offset: u64,
    len: u64,
    done: impl FnOnce(bool) + 'static,
) -> Result<(), i32> {
    let mut v: Vec<libc::iovec> = iov
        .iter()
        .map(|&(a, l)| libc::iovec {
            iov_base: a as *mut c_void,
            iov_len: l,
        })
        .collect();
    let vp = v.as_mut_ptr() as *mut raw::iovec;
    let n = v.len() as i32;
    let ctx = Box::into_raw(Box::new(IoCtx {
        _iov: v,
        done: Box::new(done),
    })) as *mut c_void;
    // SAFETY: descriptor and channel are live; the iovec array lives in the
    // context until `io_done`; buffer memory is the caller's contract.
    let rc = unsafe {
        match kind {
            Kind::Read => {
                raw::spdk_bdev_readv(desc.d, ch.c, vp, n, offset, len, Some(io_done), ctx)
            }
            Kind::Write => {
                raw::spdk_bdev_writev(desc.d, ch.c, vp, n, offset, len, Some(io_done), ctx)
            }
            Kind::Flush => raw::spdk_bdev_flush(desc.d, ch.c, offset, len, Some(io_done), ctx),
            Kind::WriteZeroes => {
                raw::spdk_bdev_write_zeroes(desc.d, ch.c, offset, len, Some(io_done), ctx)
            }
            Kind::Unmap => raw::spdk_bdev_unmap(desc.d, ch.c, offset, len, Some(io_done), ctx),
        }
    };
    if rc != 0 {
        // SAFETY: not submitted: `io_done` will not run; reclaim the context.
        drop(unsafe { Box::from_raw(ctx as *mut IoCtx) });
        return Err(rc);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    // These run without SPDK's libraries (nothing here calls into SPDK).

    #[test]
    fn version_is_major_minor_patch() {
        let v = super::version();
        let parts: Vec<&str> = v.split('.').collect();
        assert_eq!(parts.len(), 3, "{v}");
        assert!(parts.iter().all(|p| p.parse::<u32>().is_ok()), "{v}");
        assert_eq!(
            parts[1].len(),
            2,
            "{v}: SPDK minors are months, printed 01..12"
        );
    }

    #[test]
    fn err_keeps_the_errno() {
        let e = super::err("x", -libc::ENOMEM);
        assert_eq!(e.kind(), std::io::ErrorKind::OutOfMemory);
        assert!(e.to_string().starts_with("spdk: x: "), "{e}");
    }
}
