//! Network namespaces for the calling thread: enter one by name (as `ip
//! netns` names them, under /var/run/netns) and come back. Used to open
//! kernel-backed DPDK ports (af_packet) on interfaces of another namespace
//! while the rest of the process stays in its own.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// The calling thread's previous namespace, restored by [`NetnsGuard::leave`]
/// or on drop.
pub struct NetnsGuard {
    home: Option<File>,
    name: String,
}

fn setns(f: &File) -> io::Result<()> {
    // SAFETY: `f` is an open namespace file; setns only reads the fd.
    crate::cvt(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }).map(|_| ())
}

/// Moves the calling thread into network namespace `name`.
pub fn enter(name: &str) -> io::Result<NetnsGuard> {
    let home = File::open("/proc/thread-self/ns/net")
        .map_err(|e| io::Error::new(e.kind(), format!("opening this thread's netns: {e}")))?;
    let path = if name.starts_with('/') {
        name.to_string()
    } else {
        format!("/var/run/netns/{name}")
    };
    let target = File::open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening netns {path}: {e}")))?;
    setns(&target).map_err(|e| io::Error::new(e.kind(), format!("entering netns {path}: {e}")))?;
    Ok(NetnsGuard {
        home: Some(home),
        name: path,
    })
}

impl NetnsGuard {
    /// Returns the thread to the namespace it came from.
    pub fn leave(mut self) -> io::Result<()> {
        match self.home.take() {
            Some(h) => setns(&h)
                .map_err(|e| io::Error::new(e.kind(), format!("leaving netns {}: {e}", self.name))),
            None => Ok(()),
        }
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let Some(h) = self.home.take() else { return };
        if let Err(e) = setns(&h) {
            eprintln!("ferrite-sys: could not leave netns {}: {e}", self.name);
        }
    }
}
