//! Opening a worker's state after a clean close or a crash.
//!
//! 1. Load the newer valid checkpoint slot (header and payload checksums).
//! 2. Read journal batches from the checkpoint's position until a header
//!    does not validate (magic, uuid, worker, position, crc32c).
//! 3. Verify the last batch (the only one that can be torn, since a batch
//!    is written only after the previous one was flushed): the journal data
//!    against the crcs in its records, and the blocks its direct mappings
//!    point to. A batch that does not verify was never acknowledged; it is
//!    dropped whole, so its writes read back as all old.
//! 4. Apply every kept record to the checkpoint's map, in order.
//! 5. Write home the journaled blocks that are still live, flush.
//! 6. Zero the header block at the end of the journal (so a dropped batch
//!    cannot come back) and write a fresh checkpoint at that position: the
//!    journal starts empty.

use super::checkpoint;
use super::error::StoreError;
use super::extent::{Entry, Extent};
use super::journal::{self, BatchHeader, JournalId, Record};
use super::worker::{Shared, WorkerInit};
use crate::bdev::{DmaBuf, IoOp, BLOCK_SIZE};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

const BS: u64 = BLOCK_SIZE;

/// Reads `n` blocks at block `block` of device `d`.
pub(crate) fn read_blocks(sh: &Shared, d: usize, block: u64, n: u64) -> Result<DmaBuf, StoreError> {
    let ops = sh.run_ops(
        d,
        vec![IoOp::Read {
            offset: block * BS,
            buf: DmaBuf::new((n * BS) as usize),
        }],
    )?;
    match ops.into_iter().next() {
        Some(IoOp::Read { buf, .. }) => Ok(buf),
        _ => unreachable!("a read comes back as a read"),
    }
}

struct Loaded {
    seq: u64,
    slot: usize,
    journal_lpos: u64,
    extents: HashMap<u64, Extent>,
}

fn load_checkpoint(sh: &Shared, jid: JournalId, w: usize) -> Result<Loaded, StoreError> {
    let mut best: Option<Loaded> = None;
    for slot in 0..2 {
        let start = sh.sb.ckpt_slot(w, slot);
        let head = read_blocks(sh, 0, start, 1)?;
        let Some(h) = checkpoint::decode_header(jid, head.as_slice()) else {
            continue;
        };
        if best.as_ref().is_some_and(|b| b.seq >= h.seq) {
            continue;
        }
        let blocks = h.payload_len.div_ceil(BS);
        if blocks + 1 > sh.sb.ckpt_blocks {
            log::warn!("worker {w}: checkpoint slot {slot} claims {blocks} blocks; ignored");
            continue;
        }
        let payload = if blocks == 0 {
            DmaBuf::new(0)
        } else {
            read_blocks(sh, 0, start + 1, blocks)?
        };
        match checkpoint::decode_payload(&h, payload.as_slice(), sh.sb.extent_size_max) {
            Some(extents) => {
                best = Some(Loaded {
                    seq: h.seq,
                    slot,
                    journal_lpos: h.journal_lpos,
                    extents,
                })
            }
            None => log::warn!(
                "worker {w}: checkpoint slot {slot} (seq {}) is torn or damaged; using the other",
                h.seq
            ),
        }
    }
    best.ok_or_else(|| StoreError::Format {
        device: sh.dev_name(0),
        reason: format!("worker {w}: neither checkpoint slot is valid"),
    })
}

/// Journal geometry of one worker.
struct Jrn<'a> {
    sh: &'a Shared,
    w: usize,
    jid: JournalId,
}

impl Jrn<'_> {
    fn len(&self) -> u64 {
        self.sh.sb.journal_blocks
    }
    fn block(&self, lpos: u64) -> u64 {
        self.sh.sb.journal_of(self.w) + lpos % self.len()
    }
    /// Reads `n` journal blocks from `lpos` (they never wrap).
    fn read(&self, lpos: u64, n: u64) -> Result<DmaBuf, StoreError> {
        read_blocks(self.sh, 0, self.block(lpos), n)
    }
    fn header(&self, lpos: u64) -> Result<Option<BatchHeader>, StoreError> {
        let first = self.read(lpos, 1)?;
        let Some(hb) = journal::peek_header_blocks(self.jid, lpos, first.as_slice()) else {
            return Ok(None);
        };
        if hb as u64 > self.len() - lpos % self.len() {
            return Ok(None);
        }
        let all = if hb == 1 {
            first
        } else {
            self.read(lpos, hb as u64)?
        };
        let Some(h) =
            journal::decode_header(self.jid, lpos, all.as_slice(), self.sh.sb.extent_size_max)
        else {
            return Ok(None);
        };
        if h.total_blocks() > self.len() - lpos % self.len() {
            return Ok(None);
        }
        Ok(Some(h))
    }
}

/// Whether the last batch's data is all there.
fn verify_last(j: &Jrn, h: &BatchHeader) -> Result<bool, StoreError> {
    if h.data_blocks > 0 {
        let data = j.read(h.lpos + h.header_blocks as u64, h.data_blocks as u64)?;
        let mut k = 0usize;
        for r in &h.records {
            if let Record::JWrite { entries, .. } = r {
                for e in entries {
                    let blk = &data.as_slice()[k * BS as usize..(k + 1) * BS as usize];
                    if crc32c::crc32c(blk) != e.crc {
                        return Ok(false);
                    }
                    k += 1;
                }
            }
        }
    }
    // Direct data: only blocks no later record of the batch supersedes.
    let mut later: HashSet<(u64, u64)> = HashSet::new();
    let mut gone: HashSet<u64> = HashSet::new();
    for r in h.records.iter().rev() {
        match r {
            Record::Map {
                id,
                lblock,
                pba,
                crcs,
            } => {
                for (i, c) in crcs.iter().enumerate() {
                    let key = (*id, lblock + i as u64);
                    if gone.contains(id) || !later.insert(key) {
                        continue;
                    }
                    let p = pba.plus(i as u64);
                    let b = read_blocks(j.sh, p.device(), p.block(), 1)?;
                    if crc32c::crc32c(b.as_slice()) != *c {
                        return Ok(false);
                    }
                }
            }
            Record::JWrite {
                id,
                lblock,
                entries,
            } => {
                (0..entries.len() as u64).for_each(|i| {
                    later.insert((*id, lblock + i));
                });
            }
            Record::Unmap { id, lblock, count } => {
                // Bounded by the extent size the record was validated against.
                for l in *lblock..lblock + count.min(&(1 << 24)) {
                    later.insert((*id, l));
                }
            }
            Record::Delete { id } | Record::Create { id, .. } => {
                gone.insert(*id);
            }
            Record::SetGen { .. } => {}
        }
    }
    Ok(true)
}

/// Recovers worker `w`: see the module documentation.
pub(crate) fn recover_worker(sh: &Arc<Shared>, w: usize) -> Result<WorkerInit, StoreError> {
    let jid = JournalId {
        uuid: sh.sb.uuid,
        worker: w as u32,
    };
    let ck = load_checkpoint(sh, jid, w)?;
    let j = Jrn { sh, w, jid };
    let mut extents = ck.extents;
    let start = ck.journal_lpos;
    let mut lpos = start;
    let mut batches: Vec<BatchHeader> = Vec::new();
    while lpos - start < j.len() {
        let Some(h) = j.header(lpos)? else {
            break;
        };
        if h.skip {
            lpos += j.len() - lpos % j.len();
            continue;
        }
        lpos += h.total_blocks();
        batches.push(h);
    }
    let mut dropped = false;
    if let Some(last) = batches.last() {
        if !verify_last(&j, last)? {
            log::warn!(
                "worker {w}: the last journal batch (at {}) is incomplete: it was never acknowledged; dropping it",
                last.lpos
            );
            lpos = last.lpos;
            batches.pop();
            dropped = true;
        }
    }
    // Replay, remembering where the live journaled copy of each block is.
    let mut jdata: HashMap<(u64, u64), (u64, Entry)> = HashMap::new();
    let mut records = 0usize;
    for h in &batches {
        let mut cursor = h.lpos + h.header_blocks as u64;
        for r in &h.records {
            records += 1;
            match r {
                Record::JWrite {
                    id,
                    lblock,
                    entries,
                } => {
                    for (i, e) in entries.iter().enumerate() {
                        jdata.insert((*id, lblock + i as u64), (cursor + i as u64, *e));
                    }
                    cursor += entries.len() as u64;
                }
                Record::Map {
                    id, lblock, crcs, ..
                } => {
                    (0..crcs.len() as u64).for_each(|i| {
                        jdata.remove(&(*id, lblock + i));
                    });
                }
                Record::Unmap { id, lblock, count } => {
                    jdata.retain(|k, _| !(k.0 == *id && k.1 >= *lblock && k.1 < lblock + count));
                }
                Record::Delete { id } | Record::Create { id, .. } => {
                    jdata.retain(|k, _| k.0 != *id);
                }
                Record::SetGen { .. } => {}
            }
            r.apply(&mut extents, &mut |_| {});
        }
    }
    // Journaled blocks home.
    let mut live: Vec<(u64, Entry)> = jdata
        .iter()
        .filter(|(k, (_, e))| extents.get(&k.0).map(|x| x.get(k.1)) == Some(*e))
        .map(|(_, v)| *v)
        .collect();
    live.sort_by_key(|v| v.0);
    for part in live.chunks(256) {
        let mut writes: Vec<Vec<IoOp>> = (0..sh.devices.len()).map(|_| Vec::new()).collect();
        for (jpos, e) in part {
            let b = j.read(*jpos, 1)?;
            if crc32c::crc32c(b.as_slice()) != e.crc {
                log::error!("worker {w}: journal block {jpos} fails its crc; its home block keeps older data");
                continue;
            }
            writes[e.pba.device()].push(IoOp::Write {
                fua: false,
                offset: e.pba.block() * BS,
                buf: Arc::new(b),
            });
        }
        for (d, ops) in writes.into_iter().enumerate() {
            if !ops.is_empty() {
                sh.run_ops(d, ops)?;
            }
        }
    }
    sh.flush(sh.all_devices())?;
    // A clean journal from `lpos` on, described by a new checkpoint.
    sh.run_ops(
        0,
        vec![IoOp::Write {
            fua: false,
            offset: j.block(lpos) * BS,
            buf: Arc::new(DmaBuf::zeroed(BS as usize)),
        }],
    )?;
    sh.flush(1)?;
    let mut seq = ck.seq + 1;
    if (seq % 2) as usize == ck.slot {
        seq += 1; // never overwrite the slot just loaded
    }
    let image = checkpoint::encode(jid, seq, lpos, &extents);
    if image.len() as u64 > sh.sb.ckpt_blocks * BS {
        return Err(StoreError::NoMetadataSpace {
            extent: 0,
            capacity: sh.sb.ckpt_blocks * BS,
        });
    }
    let slot = (seq % 2) as usize;
    let base = sh.sb.ckpt_slot(w, slot) * BS;
    let mut ops = Vec::new();
    for (i, part) in image.chunks(1 << 20).enumerate() {
        ops.push(IoOp::Write {
            fua: false,
            offset: base + (i as u64) * (1 << 20),
            buf: Arc::new(DmaBuf::copy_from(part)),
        });
    }
    sh.run_ops(0, ops)?;
    sh.flush(1)?;
    log::info!(
        "worker {w}: checkpoint {} + {} journal batches ({records} records, {} blocks written home){}",
        ck.seq,
        batches.len(),
        live.len(),
        if dropped { ", last batch dropped" } else { "" }
    );
    Ok(WorkerInit {
        extents,
        head: lpos,
        tail: lpos,
        ckpt_seq: seq,
    })
}
