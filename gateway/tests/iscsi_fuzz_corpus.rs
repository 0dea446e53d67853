//! The fuzz targets' entry points (fuzz/fuzz_targets/iscsi_pdu.rs and
//! scsi_cdb.rs) over a corpus of malformed inputs, so `make test` exercises
//! them without a nightly toolchain. Each must return without panicking.

use ferrite_gateway::iscsi::fuzzing::pdu;
use ferrite_gateway::scsi::fuzzing::cdb;

fn bhs(op: u8, flags: u8, ahs_words: u8, dlen: u32) -> Vec<u8> {
    let mut b = vec![0u8; 48];
    b[0] = op;
    b[1] = flags;
    b[4] = ahs_words;
    b[5] = (dlen >> 16) as u8;
    b[6] = (dlen >> 8) as u8;
    b[7] = dlen as u8;
    b
}

/// A little xorshift, so the corpus is the same on every run.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn malformed_pdus_do_not_panic() {
    let mut corpus: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x43],
        bhs(0x43, 0x87, 0, 0),
        bhs(0x03, 0x87, 0, 0xFF_FFFF),
        bhs(0x01, 0xA1, 255, 0),
        bhs(0x3F, 0, 0, 4),
        bhs(0x05, 0x80, 0, 3),
    ];
    // A login with broken text: no '=', empty key, huge value, bad UTF-8.
    for t in [
        &b"InitiatorName"[..],
        b"=x\0",
        b"\xff\xfe=\x01\0",
        b"HeaderDigest=CRC32C,None,CRC32C\0HeaderDigest=None\0",
        b"MaxBurstLength=0x\0FirstBurstLength=99999999999999999999\0",
        b"CHAP_A=5\0CHAP_C=0x\0CHAP_R=0bA=\0CHAP_I=300\0",
        // Non-ASCII hex digits once panicked the CHAP decoder (fuzzer find).
        "CHAP_R=0x\u{e9}a\0CHAP_C=0x1\u{2603}\0".as_bytes(),
    ] {
        let mut p = bhs(0x43, 0x87, 0, t.len() as u32);
        p.extend_from_slice(t);
        p.resize(48 + t.len().div_ceil(4) * 4, 0);
        corpus.push(p);
    }
    let mut long = bhs(0x04, 0x80, 0, 9000);
    long.extend(std::iter::repeat_n(b'a', 9000));
    corpus.push(long);
    // An extended-CDB AHS with bogus lengths.
    let mut ahs = bhs(0x01, 0x80, 2, 0);
    ahs.extend_from_slice(&[0xFF, 0xFF, 0x01, 0, 1, 2, 3, 4]);
    corpus.push(ahs);
    for seed in 0..64 {
        let mut p = noise(seed, 48 + (seed as usize * 37) % 300);
        p[5] = 0;
        p[6] = 0;
        corpus.push(p);
    }
    for input in &corpus {
        pdu(input);
    }
}

#[test]
fn malformed_cdbs_do_not_panic() {
    let mut corpus: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x00],
        vec![0x02, 0x28], // READ(10) cut short
        vec![0x06, 0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0], // CAW, NLB 255, no data
        vec![
            0x06, 0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0,
        ], // READ CAPACITY(16), huge alloc
        vec![0x02, 0x42, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 1, 2, 3], // UNMAP, short list
        vec![0x02, 0x5F, 0x05, 0x18, 0, 0, 0, 0, 0, 24, 0], // PREEMPT AND ABORT without data
        vec![0x00, 0x15, 0x10, 0, 0, 0x10, 0, 0, 0, 0, 0, 0x0A, 0xFF], // MODE SELECT garbage
        vec![0x06, 0x93, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], // WRITE SAME(16) UNMAP to the end
    ];
    // EXTENDED COPY with a parameter list that lies about its lengths.
    let mut xc = vec![0x06, 0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 40, 0, 0];
    xc.extend_from_slice(&[1, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0x7F, 0xFE, 0, 0, 0, 0]);
    xc.extend_from_slice(&[0xE4; 24]);
    corpus.push(xc);
    // A PR dance between the two nexuses.
    let mut pr = Vec::new();
    for (sel, sa, key, sark) in [
        (0u8, 0u8, 0u64, 1u64),
        (1, 0, 0, 2),
        (0, 1, 1, 0),
        (1, 4, 2, 1),
        (1, 2, 2, 0),
        (0, 3, 1, 0),
    ] {
        pr.push(0x02 | sel);
        pr.extend_from_slice(&[0x5F, sa, 0x03, 0, 0, 0, 0, 0, 24, 0]);
        let mut d = vec![0u8; 24];
        d[0..8].copy_from_slice(&key.to_be_bytes());
        d[8..16].copy_from_slice(&sark.to_be_bytes());
        pr.extend(d.into_iter().map(|b| if b == 0xFF { 0xFE } else { b }));
        pr.push(0xFF);
    }
    corpus.push(pr);
    for seed in 0..128 {
        corpus.push(noise(seed * 7919, 8 + (seed as usize * 13) % 80));
    }
    for input in &corpus {
        cdb(input);
    }
}
