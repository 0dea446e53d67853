//! glibc's `swapcontext`, measured as the reference point for Ferrite's own
//! context switch (it saves and restores the signal mask with a system call
//! on every switch, which is what our switch avoids).

use std::time::{Duration, Instant};

struct PingPong {
    main: libc::ucontext_t,
    other: libc::ucontext_t,
    remaining: u64,
}

static mut CURRENT: *mut PingPong = std::ptr::null_mut();

extern "C" fn other_entry() {
    // SAFETY: CURRENT points at the PingPong owned by `swapcontext_switch`,
    // which stays alive and is only touched by this thread until it returns.
    unsafe {
        let pp = &mut *CURRENT;
        loop {
            libc::swapcontext(&mut pp.other, &pp.main);
        }
    }
}

/// Times `iters` round trips (switch in and out) between two ucontexts and
/// returns the mean duration of one round trip.
pub fn swapcontext_switch(iters: u64) -> Duration {
    let stack =
        crate::guarded::GuardedMapping::new(64 * 1024, 1).expect("mmap a stack for swapcontext");
    // SAFETY: ucontext_t is plain data; getcontext/makecontext initialise it
    // before use. The stack outlives every switch into `other`, and CURRENT is
    // reset before `pp` goes away. Never called concurrently (benchmark only).
    unsafe {
        let mut pp = Box::new(PingPong {
            main: std::mem::zeroed(),
            other: std::mem::zeroed(),
            remaining: iters,
        });
        CURRENT = &mut *pp;
        libc::getcontext(&mut pp.other);
        pp.other.uc_stack.ss_sp = stack.usable_start() as *mut libc::c_void;
        pp.other.uc_stack.ss_size = stack.usable_len();
        pp.other.uc_link = std::ptr::null_mut();
        libc::makecontext(&mut pp.other, other_entry, 0);
        // warm up
        for _ in 0..1000 {
            libc::swapcontext(&mut pp.main, &pp.other);
        }
        let start = Instant::now();
        while pp.remaining > 0 {
            libc::swapcontext(&mut pp.main, &pp.other);
            pp.remaining -= 1;
        }
        let d = start.elapsed();
        CURRENT = std::ptr::null_mut();
        Duration::from_nanos((d.as_nanos() / iters.max(1) as u128) as u64)
    }
}
