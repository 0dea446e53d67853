//! Reporting a coroutine stack overflow by name.
//!
//! Runs inside the SIGSEGV handler on the thread's alternate signal stack:
//! it reads the faulting thread's host and running coroutine (plain loads of
//! memory that thread owns), formats into a stack buffer and writes with
//! one system call. No allocation, no locks.

use super::reactor;
use std::io;

pub(crate) fn install() -> io::Result<()> {
    ferrite_sys::segv::install(on_fault)
}

fn on_fault(addr: usize) -> bool {
    let host = reactor::current_host_raw();
    if host.is_null() {
        return false;
    }
    // SAFETY: the faulting thread's Host outlives its coroutines; we only
    // read plain fields of the running coroutine it points to.
    let (name, guard, size) = unsafe {
        let co = (*host).current.get();
        if co.is_null() {
            return false;
        }
        let l = &*(*co).local.get();
        (l.name.as_str(), l.guard, l.stack_size)
    };
    // A fault in the guard page, or just below it (a frame larger than a
    // page whose probe skipped over it is still this stack's overflow).
    if addr < guard.0.saturating_sub(64 * 1024) || addr >= guard.1 {
        return false;
    }
    let mut buf = [0u8; 512];
    let mut w = Writer {
        buf: &mut buf,
        len: 0,
    };
    w.push(b"ferrite: coroutine '");
    w.push(name.as_bytes());
    w.push(b"' overflowed its stack of ");
    w.num(size / 1024);
    w.push(b" KiB (fault at 0x");
    w.hex(addr);
    w.push(b"); aborting. Give it a larger stack (rt::Builder::stack_size) or move the deep recursion off the reactor.\n");
    let len = w.len;
    ferrite_sys::segv::write_stderr(&buf[..len]);
    true
}

struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Writer<'_> {
    fn push(&mut self, b: &[u8]) {
        let n = b.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
    }
    fn num(&mut self, mut v: usize) {
        let mut d = [0u8; 20];
        let mut i = d.len();
        loop {
            i -= 1;
            d[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&d[i..]);
    }
    fn hex(&mut self, mut v: usize) {
        let mut d = [0u8; 16];
        let mut i = d.len();
        loop {
            i -= 1;
            d[i] = b"0123456789abcdef"[v & 15];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        self.push(&d[i..]);
    }
}
