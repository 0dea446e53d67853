//! I/O pattern recognition per extent, and the buffer that merges a
//! sequential stream's writes.
//!
//! A write that starts where the previous write to the extent ended
//! continues a run; after [`SEQ_RUN`] such writes the extent is a
//! sequential stream. While other writes to the extent are in flight, a
//! stream's small writes are *held* in a [`Stream`] (their data, crcs and
//! their callers' completions) until it reaches the merge size or a short
//! timer fires, then mapped with one record. Its data goes to newly
//! allocated blocks in pieces (`StoreOptions::stream_piece`) while it
//! fills, and the rest when it is complete. A held write is acknowledged
//! only when every piece and the record are durable: holding delays the
//! ack, it never acknowledges early.

use super::worker::{Completion, Piece};
use crate::bdev::DmaBuf;
use std::sync::Arc;

/// Consecutive adjacent writes after which an extent is a stream.
pub const SEQ_RUN: u32 = 2;

/// How a write is carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Data and mapping through the journal (group commit), home later.
    Journal,
    /// Data to newly allocated blocks, only the mapping journaled.
    Direct,
    /// Held in the extent's stream buffer, merged with its neighbours.
    Hold,
}

/// Per-extent pattern state.
#[derive(Default)]
pub struct Pattern {
    /// Byte offset where the last write ended.
    pub last_end: u64,
    /// Adjacent writes in a row.
    pub run: u32,
    /// Writes to the extent in flight now.
    pub inflight: u32,
    /// The stream being merged, if any.
    pub(crate) stream: Option<Stream>,
    /// Distinguishes successive streams (for their timers).
    pub next_gen: u64,
}

impl Pattern {
    /// Classifies a write of `len` bytes at `offset` and records it.
    pub fn classify(
        &mut self,
        offset: u64,
        len: u64,
        direct_min: u64,
        merge_max: u64,
    ) -> WriteMode {
        if offset == self.last_end && offset != 0 {
            self.run = self.run.saturating_add(1);
        } else {
            self.run = 0;
        }
        self.last_end = offset + len;
        let stream = self.run >= SEQ_RUN;
        if stream && len < merge_max && self.inflight > 0 {
            WriteMode::Hold
        } else if stream || len >= direct_min {
            WriteMode::Direct
        } else {
            WriteMode::Journal
        }
    }
}

/// Held writes of one stream: consecutive blocks from `lblock`.
pub(crate) struct Stream {
    pub(crate) gen: u64,
    pub(crate) lblock: u64,
    pub(crate) bufs: Vec<Arc<DmaBuf>>,
    pub(crate) crcs: Vec<u32>,
    pub(crate) waiters: Vec<Arc<Completion>>,
    /// The leading blocks already on their way to the device, as pieces
    /// written while the stream still fills (in order), and how many
    /// blocks they cover.
    pub(crate) pieces: Vec<Arc<Piece>>,
    pub(crate) sent: usize,
}

impl Stream {
    /// The block after the last held one.
    pub(crate) fn end(&self) -> u64 {
        self.lblock + self.bufs.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_a_stream_and_holds_only_with_company() {
        let mut p = Pattern::default();
        let k = 4096;
        assert_eq!(p.classify(100 * k, k, 64 * k, 256 * k), WriteMode::Journal);
        assert_eq!(p.classify(101 * k, k, 64 * k, 256 * k), WriteMode::Journal);
        // Third adjacent write: a stream; alone in flight, so not held.
        assert_eq!(p.classify(102 * k, k, 64 * k, 256 * k), WriteMode::Direct);
        p.inflight = 3;
        assert_eq!(p.classify(103 * k, k, 64 * k, 256 * k), WriteMode::Hold);
        // A jump elsewhere ends the run.
        assert_eq!(p.classify(7 * k, k, 64 * k, 256 * k), WriteMode::Journal);
        assert_eq!(
            p.classify(500 * k, 128 * k, 64 * k, 256 * k),
            WriteMode::Direct
        );
    }
}
