//! Work at process exit (`atexit`): e.g. the NVMe driver's shutdown
//! notification when `main` returns or `exit` is called with devices open.

use std::io;

/// Runs `f` when the process exits normally (not on a signal's default
/// action, `_exit` or abort).
pub fn at_exit(f: extern "C" fn()) -> io::Result<()> {
    // SAFETY: `f` is a plain function pointer valid for the process's
    // lifetime; atexit only stores it.
    if unsafe { libc::atexit(f) } != 0 {
        return Err(io::Error::other("atexit: no room for another handler"));
    }
    Ok(())
}
