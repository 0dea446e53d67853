//! Termination signals for daemons: block them in every thread (call
//! before starting any thread, which inherit the mask) and wait for one
//! synchronously in the main thread. No handler runs in a reactor.

use std::io;

const TERMINATION: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in TERMINATION {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and so in every
/// thread it starts afterwards).
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_set();
    // SAFETY: `set` is a valid sigset; the old mask is not requested.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Waits for one of the blocked termination signals; returns its name.
pub fn wait_termination_signal() -> &'static str {
    let set = termination_set();
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` and `sig` are valid for the call.
        let r = unsafe { libc::sigwait(&set, &mut sig) };
        if r == 0 {
            return match sig {
                libc::SIGINT => "SIGINT",
                libc::SIGTERM => "SIGTERM",
                _ => "SIGHUP",
            };
        }
    }
}

/// Sends a termination signal to this process (used to stop a daemon from
/// inside, e.g. on a fatal error in a background thread).
pub fn raise_termination() {
    // SAFETY: kill on our own pid with a valid signal number.
    unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
}
