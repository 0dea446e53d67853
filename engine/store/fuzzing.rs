//! Entry point of the `store_metadata` fuzz target (and of its corpus test
//! in `make test`): the decoders of what the store reads back from its
//! devices — superblocks, journal batch headers with their records, and
//! checkpoint slots. Checksums cover all of these, so a decoder behind a
//! crc is only reached by bytes whose crc matches; the entry point patches
//! the crcs (and magic and version) into the input first, so the fuzzer
//! explores the parsers and the record application behind them. Whatever
//! the bytes, decoding must return, never panic, and never size anything
//! from an unchecked field.

use super::checkpoint;
use super::extent::Extent;
use super::journal::{self, JournalId};
use super::superblock::{self, Superblock, FORMAT_VERSION};
use crate::bdev::BLOCK_SIZE;
use std::collections::HashMap;

/// The extent size limit a fuzzed store was "formatted" with (the default).
const MAX_EXTENT: u64 = 256 << 20;

const BS: usize = BLOCK_SIZE as usize;

/// Decodes `data` as one kind of store metadata (chosen by its first byte).
pub fn metadata(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => superblock(rest),
        1 => journal_batch(rest),
        _ => checkpoint_slot(rest),
    }
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Reads the journal identity a header image claims (uuid at 16, worker at 12).
fn claimed_id(b: &[u8]) -> JournalId {
    JournalId {
        uuid: u128::from_le_bytes(b[16..32].try_into().expect("16 bytes")),
        worker: get_u32(b, 12),
    }
}

/// One superblock block, as given and with a matching crc.
fn superblock(rest: &[u8]) {
    let _ = Superblock::decode(rest);
    let mut b = rest.to_vec();
    b.resize(BS, 0);
    put_u64(&mut b, 0, superblock::MAGIC);
    put_u32(&mut b, 8, FORMAT_VERSION);
    put_u32(&mut b, 12, BLOCK_SIZE as u32);
    let crc = crc32c::crc32c(&b[..superblock::CRC_AT]);
    put_u32(&mut b, superblock::CRC_AT, crc);
    if let Ok(sb) = Superblock::decode(&b) {
        // What open does with a decoded superblock.
        let _ = sb.journal_of(sb.workers as usize - 1);
        let _ = sb.ckpt_slot(sb.workers as usize - 1, 1);
    }
}

/// A batch header (fixed fields, records, crc), with its crc made to match;
/// its records are then applied to an empty map, as replay does.
fn journal_batch(rest: &[u8]) {
    const FIXED: usize = journal::FIXED;
    let mut b = rest.to_vec();
    if b.len() < FIXED + 4 {
        b.resize(FIXED + 4, 0);
    }
    put_u64(&mut b, 0, journal::JMAGIC);
    put_u32(&mut b, 8, FORMAT_VERSION);
    let body = (get_u32(&b, 56) as usize).min(b.len() - FIXED - 4);
    put_u32(&mut b, 56, body as u32);
    let crc = crc32c::crc32c(&b[..FIXED + body]);
    put_u32(&mut b, FIXED + body, crc);
    let id = claimed_id(&b);
    let lpos = u64::from_le_bytes(b[32..40].try_into().expect("8 bytes"));
    let _ = journal::peek_header_blocks(id, lpos, &b);
    if let Some(h) = journal::decode_header(id, lpos, &b, MAX_EXTENT) {
        let _ = h.total_blocks();
        let mut extents: HashMap<u64, Extent> = HashMap::new();
        let mut freed = 0u64;
        for r in &h.records {
            let _ = r.data_blocks();
            r.apply(&mut extents, &mut |_| freed += 1);
        }
    }
}

/// A checkpoint slot: a header block (its fields from the input) and the
/// rest of the input as payload, with the payload length and both crcs
/// made to match.
fn checkpoint_slot(rest: &[u8]) {
    let split = rest.len().min(64);
    let (head, payload) = rest.split_at(split);
    let mut b = head.to_vec();
    b.resize(BS, 0);
    put_u64(&mut b, 0, checkpoint::CMAGIC);
    put_u32(&mut b, 8, FORMAT_VERSION);
    put_u64(&mut b, 48, payload.len() as u64);
    put_u32(&mut b, 56, crc32c::crc32c(payload));
    let crc = crc32c::crc32c(&b[..60]);
    put_u32(&mut b, 60, crc);
    let id = claimed_id(&b);
    if let Some(h) = checkpoint::decode_header(id, &b) {
        if let Some(map) = checkpoint::decode_payload(&h, payload, MAX_EXTENT) {
            for x in map.values() {
                let _ = x.iter_mapped().count();
            }
        }
    }
}
