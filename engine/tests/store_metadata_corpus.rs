//! The `store_metadata` fuzz target's entry point
//! (fuzz/fuzz_targets/store_metadata.rs) over a corpus of real encodings,
//! their bit flips and truncations, and hand-made hostile inputs (huge
//! extent sizes, counts and block numbers), so `make test` exercises it
//! without a nightly toolchain: every input must return without panicking
//! or allocating without bound.

use ferrite_engine::store::checkpoint;
use ferrite_engine::store::extent::{Entry, Extent, Pba};
use ferrite_engine::store::fuzzing::metadata;
use ferrite_engine::store::journal::{encode_header, JournalId, Record};
use ferrite_engine::store::superblock::{Superblock, FORMAT_VERSION};
use std::collections::HashMap;

const ID: JournalId = JournalId {
    uuid: 0xfe_12,
    worker: 1,
};

fn records() -> Vec<Record> {
    vec![
        Record::Create {
            id: 7,
            size: 4 << 20,
            generation: 1,
        },
        Record::JWrite {
            id: 7,
            lblock: 3,
            entries: vec![Entry {
                pba: Pba::new(0, 900),
                crc: 5,
            }],
        },
        Record::Map {
            id: 7,
            lblock: 10,
            pba: Pba::new(0, 1000),
            crcs: vec![1, 2, 3],
        },
        Record::Unmap {
            id: 7,
            lblock: 0,
            count: 4,
        },
        Record::SetGen {
            id: 7,
            generation: 9,
        },
        Record::Delete { id: 7 },
    ]
}

/// Hostile records: sizes, counts and block numbers at their limits.
fn hostile() -> Vec<Record> {
    vec![
        Record::Create {
            id: 1,
            size: !4095,
            generation: 0,
        },
        Record::Create {
            id: 2,
            size: 256 << 20,
            generation: 0,
        },
        Record::Unmap {
            id: 2,
            lblock: u64::MAX - 2,
            count: u64::MAX,
        },
        Record::Map {
            id: 2,
            lblock: u64::MAX,
            pba: Pba(u64::MAX),
            crcs: vec![0; 3],
        },
        Record::JWrite {
            id: 2,
            lblock: u64::MAX - 1,
            entries: vec![Entry::default(); 3],
        },
    ]
}

fn superblock_image() -> Vec<u8> {
    sb().encode()
}

fn sb() -> Superblock {
    Superblock {
        version: FORMAT_VERSION,
        uuid: 0xfe_12,
        device_index: 0,
        device_count: 1,
        device_blocks: 1 << 20,
        workers: 2,
        journal_blocks: 256,
        ckpt_blocks: 64,
        extent_size_max: 256 << 20,
        journal_start: 2,
        ckpt_start: 514,
        data_start: 1024,
    }
}

fn checkpoint_image() -> Vec<u8> {
    let mut m = HashMap::new();
    let mut x = Extent::new(4 << 20, 2);
    for l in [0u64, 1, 2, 100, 1023] {
        x.set(
            l,
            Entry {
                pba: Pba::new(0, 2000 + l),
                crc: l as u32,
            },
        );
    }
    m.insert(3, x);
    checkpoint::encode(ID, 4, 99, &m)
}

/// The fuzz input for kind `k` (0 superblock, 1 journal, 2 checkpoint).
fn input(k: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![k];
    v.extend_from_slice(body);
    v
}

#[test]
fn store_metadata_corpus_never_panics() {
    let journal = encode_header(ID, 42, &records(), false);
    let hostile_journal = encode_header(ID, 43, &hostile(), false);
    let seeds: Vec<Vec<u8>> = vec![
        input(0, &superblock_image()),
        input(1, &journal),
        input(1, &hostile_journal),
        input(2, &checkpoint_image()),
    ];
    let mut corpus: Vec<Vec<u8>> = vec![vec![], vec![0], vec![1], vec![2], vec![1; 70]];
    // Found by the fuzzer: a second device's superblock whose journal
    // layout overflows (only device 0's regions were checked).
    corpus.push(input(
        0,
        &Superblock {
            device_index: 1,
            device_count: 2,
            journal_blocks: u64::MAX / 2,
            ..sb()
        }
        .encode(),
    ));
    for s in &seeds {
        corpus.push(s.clone());
        // Truncations.
        for cut in [1, 2, 9, 33, 61, 65, 101, 200, s.len() / 2, s.len() - 1] {
            corpus.push(s[..cut.min(s.len())].to_vec());
        }
        // Bit flips over the fixed fields and the first records.
        for at in 1..s.len().min(400) {
            let mut v = s.clone();
            v[at] ^= 0x80;
            corpus.push(v);
            let mut v = s.clone();
            v[at] = 0xff;
            corpus.push(v);
        }
    }
    // A checkpoint payload claiming a huge extent and a run at the top of
    // the block range.
    let mut p = Vec::new();
    p.extend_from_slice(&1u64.to_le_bytes());
    p.extend_from_slice(&5u64.to_le_bytes());
    p.extend_from_slice(&(!4095u64).to_le_bytes());
    p.extend_from_slice(&0u64.to_le_bytes());
    corpus.push(input(2, &[vec![0u8; 64], p.clone()].concat()));
    let mut p = Vec::new();
    p.extend_from_slice(&1u64.to_le_bytes());
    p.extend_from_slice(&5u64.to_le_bytes());
    p.extend_from_slice(&(1u64 << 20).to_le_bytes());
    p.extend_from_slice(&0u64.to_le_bytes());
    p.extend_from_slice(&1u32.to_le_bytes());
    p.extend_from_slice(&(u64::MAX - 1).to_le_bytes());
    p.extend_from_slice(&4u32.to_le_bytes());
    p.extend_from_slice(&[0xab; 48]);
    corpus.push(input(2, &[vec![0u8; 64], p].concat()));
    for c in &corpus {
        metadata(c);
    }
    assert!(corpus.len() > 2000, "{} inputs", corpus.len());
}
