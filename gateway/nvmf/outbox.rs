//! How answers leave a queue: command coroutines (and a controller's
//! watcher, for asynchronous events) hand PDUs to the queue's writer
//! coroutine through a channel, so that no one but the writer touches the
//! socket and the reader never waits on the host reading.

use super::capsule::Cqe;
use super::digest;
use super::pdu::{self, Negotiated, OutHeader};
use ferrite_engine::rt::sync;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// What the writer sends.
pub(crate) enum Out {
    /// A PDU with its header (the writer adds the header digest, and the
    /// SQ head pointer into response capsules), optional data and the data
    /// digest when negotiated.
    Pdu {
        hdr: OutHeader,
        data: Option<Vec<u8>>,
        ddgst: [u8; 4],
        is_resp: bool,
    },
    /// Bytes sent as they are (a C2HTermReq).
    Raw(Vec<u8>),
    /// Send what came before, then close the connection.
    Close,
}

/// The result of a command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completion {
    /// SCT/SC plus DNR (see `spec::status`).
    pub status: u16,
    pub dw0: u32,
    pub dw1: u32,
    /// Data for the host (Identify, Get Log Page, Read, ...).
    pub data: Option<Vec<u8>>,
}

impl Completion {
    pub fn ok() -> Self {
        Self::default()
    }
    pub fn status(status: u16) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }
    pub fn data(data: Vec<u8>) -> Self {
        Self {
            data: Some(data),
            ..Self::default()
        }
    }
    pub fn dw0(dw0: u32) -> Self {
        Self {
            dw0,
            ..Self::default()
        }
    }
}

/// A cloneable, `Send` handle to a queue's writer.
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: sync::Sender<Out>,
    /// Commands received and not yet answered (bounds the host).
    in_flight: Arc<AtomicUsize>,
    pub neg: Negotiated,
    pub qid: u16,
    /// May a successful read end with C2HData's SUCCESS flag instead of a
    /// response capsule? Only when the host disabled SQ flow control (the
    /// capsule would carry SQHD otherwise) and the transport allows it.
    pub success_flag: bool,
    /// Whether sending may park. The reader's copy never parks: a full
    /// channel there means the host stopped reading its answers (a well
    /// behaved host cannot fill it), and the reader must not hang on it.
    park: bool,
    /// Set when a non-parking send found the channel full.
    pub stalled: std::cell::Cell<bool>,
}

impl Outbox {
    pub(crate) fn new(tx: sync::Sender<Out>, in_flight: Arc<AtomicUsize>, neg: Negotiated) -> Self {
        Self {
            tx,
            in_flight,
            neg,
            qid: 0,
            success_flag: false,
            park: false,
            stalled: std::cell::Cell::new(false),
        }
    }

    /// A copy for a coroutine that may park until the writer has room.
    pub(crate) fn parking(&self) -> Self {
        Self {
            park: true,
            ..self.clone()
        }
    }

    /// Queues a PDU; false when the queue is gone (or, not parking, full).
    pub(crate) fn send(&self, o: Out) -> bool {
        if self.park {
            return self.tx.send(o).is_ok();
        }
        match self.tx.try_send(o) {
            Ok(()) => true,
            Err(sync::TrySendError::Full(_)) => {
                self.stalled.set(true);
                false
            }
            Err(_) => false,
        }
    }

    /// Like `send` but never parks: for the reader, which must keep reading.
    pub(crate) fn try_send(&self, o: Out) -> bool {
        self.tx.try_send(o).is_ok()
    }

    /// Answers command `cid`: its data (cut or zero-padded to the
    /// `xfer_len` the host described), then the response capsule unless
    /// the SUCCESS flag stands in for it.
    pub(crate) fn complete(&self, cid: u16, c: Completion, xfer_len: u32) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        let mut sent_success = false;
        if c.status == 0 {
            if let Some(mut data) = c.data {
                if xfer_len > 0 {
                    data.resize(xfer_len as usize, 0);
                    let success = self.success_flag && c.dw0 == 0 && c.dw1 == 0;
                    let hdr = pdu::encode_c2h_data(cid, 0, xfer_len, true, success, &self.neg);
                    let ddgst = if self.neg.ddgst {
                        digest::to_wire(digest::crc(&data))
                    } else {
                        [0; 4]
                    };
                    if !self.send(Out::Pdu {
                        hdr,
                        data: Some(data),
                        ddgst,
                        is_resp: false,
                    }) {
                        return;
                    }
                    sent_success = success;
                }
            }
        }
        if !sent_success {
            let cqe = Cqe {
                dw0: c.dw0,
                dw1: c.dw1,
                sqhd: 0,
                sqid: self.qid,
                cid,
                status: c.status,
            };
            let hdr = pdu::encode_capsule_resp(&cqe.to_bytes(), &self.neg);
            self.send(Out::Pdu {
                hdr,
                data: None,
                ddgst: [0; 4],
                is_resp: true,
            });
        }
    }

    /// Counts a command the reader accepted.
    pub(crate) fn begin(&self) -> usize {
        self.in_flight.fetch_add(1, Ordering::AcqRel) + 1
    }
}
