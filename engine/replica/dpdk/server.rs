//! The server side: requests that arrive on any reactor's DPDK queues are
//! served by the same [`Handler`] the TCP server feeds (a coroutine per
//! request, at most 256 per session at once; beyond that the session
//! grants no credit, so the peer waits instead of flooding us).

use super::super::server::Handler;
use super::Stack;
use std::sync::Arc;

/// Serving while alive; requests are refused (Unavailable) once dropped.
pub struct DpdkServer {
    stack: Stack,
}

/// Serves replica requests arriving over DPDK with `handler`.
pub fn start(stack: &Stack, handler: Arc<dyn Handler>) -> DpdkServer {
    *stack
        .shared
        .handler
        .write()
        .unwrap_or_else(|e| e.into_inner()) = Some(handler);
    DpdkServer {
        stack: stack.clone(),
    }
}

impl Drop for DpdkServer {
    fn drop(&mut self) {
        self.stack
            .shared
            .handler
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}
