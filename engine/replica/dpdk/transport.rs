//! [`DpdkTransport`]: the replica layer's [`Transport`] over DPDK. A call
//! runs on the caller's reactor, on that reactor's queue pair and session
//! with the peer; see `reactor` for how.
//!
//! Addresses: `dpdk://IP:PORT` goes over DPDK. Anything else (a node that
//! registered a plain `host:port`, i.e. runs on kernel TCP) goes over TCP,
//! so a cluster may mix nodes during a migration.

use super::super::proto::Frame;
use super::super::transport::{Request, TcpConfig, TcpTransport, Transport, TransportError};
use super::config::is_dpdk_addr;
use super::reactor;
use super::Stack;
use std::sync::Arc;

pub struct DpdkTransport {
    _stack: Stack,
    tcp: Arc<TcpTransport>,
}

impl DpdkTransport {
    pub fn new(stack: Stack) -> Arc<Self> {
        Arc::new(Self {
            _stack: stack,
            tcp: TcpTransport::new(TcpConfig::default()),
        })
    }
}

impl Transport for DpdkTransport {
    fn call(&self, peer: &str, req: Request<'_>) -> Result<Frame, TransportError> {
        if !is_dpdk_addr(peer) {
            return self.tcp.call(peer, req);
        }
        match reactor::current() {
            Some(net) => net.call(peer, req),
            None => Err(TransportError::Unreachable {
                peer: peer.into(),
                reason: "called off a reactor with a DPDK queue".into(),
            }),
        }
    }
}
