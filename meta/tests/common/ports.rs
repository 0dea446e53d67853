//! Loopback ports for the processes a test starts. One file for both
//! process harnesses (meta/tests/common and engine/ferrited/tests/common,
//! which takes it with `#[path]`), so their ports follow one rule.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// A port nobody listens on right now, for a process the test starts.
///
/// Not one the kernel picks (`bind :0`): those come from the ephemeral
/// range, where the kernel hands the same port to the next outgoing
/// connection or `bind :0` of a test running in parallel before our child
/// binds it. These come from below the ephemeral range (32768+), each test
/// process walking its own stretch (by pid) and every thread of it sharing
/// one counter, checked free before being handed out.
pub fn free_port() -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let start = (std::process::id() % 60) * 200;
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 127.0.0.1:{LOW}..{}", LOW + SPAN);
}
