//! Crash test: a child process (this test binary, re-executed with an
//! environment variable) writes a verifiable pattern into a store on a
//! file, logging every write it starts and every write acknowledged to a
//! side file; it is SIGKILLed at a random moment (sometimes while it is
//! still recovering), and the parent reopens the store and checks every
//! block:
//! - it holds the last acknowledged version, or the version of a write
//!   that was in flight at the kill (never an older one: an acknowledged
//!   write is never lost);
//! - its content is self-consistent (never garbage, never a checksum error);
//! - a multi-block write in flight at the kill reads back all old or all new.
//!
//! Three workloads run at once: small random writes (journaled), large
//! writes and unmaps (direct), and sequential streams issued four at a time
//! (held and merged, sent to the device in pieces while they fill). The
//! journal is small, so checkpoints and journal wrap happen many times per
//! cycle. The cycles take turns between three placements of small writes:
//! journaled and written home in place, journaled and relocated home
//! (`relocate_home`), and written once to new blocks with the batch that
//! maps them (`log_small_writes`, the default).
//!
//! `CYCLES=N` sets the number of kill cycles (default 20).

use ferrite_engine::bdev::Backend;
use ferrite_engine::rt::{Config, Runtime};
use ferrite_engine::store::{ChunkStore, StoreOptions};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const K4: u64 = 4096;
const CHILD_ENV: &str = "FERRITE_STORE_CRASH_CHILD";
/// Blocks per extent (8 MiB extents).
const EXT_BLOCKS: u64 = 2048;
const EXTENTS: [u64; 3] = [11, 12, 13];

/// Where small writes go in a cycle (`cycle % 3`).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Placement {
    /// Journaled, then written home in place.
    InPlace,
    /// Journaled, then relocated home to new blocks.
    Relocated,
    /// Written once to new blocks with their batch (the default).
    Logged,
}

impl Placement {
    fn of_cycle(cycle: usize) -> Self {
        [Self::InPlace, Self::Relocated, Self::Logged][cycle % 3]
    }
}

fn opts(placement: Placement) -> StoreOptions {
    let relocate = placement != Placement::InPlace;
    StoreOptions {
        relocate_home: relocate,
        log_small_writes: placement == Placement::Logged,
        // With relocation the cleaner runs while the child writes, so
        // kills land in its moves too.
        clean_idle: relocate.then_some(Duration::ZERO),
        workers: 2,
        journal_size: 2 << 20,
        extent_size_max: EXT_BLOCKS * K4,
        backend: Backend::Uring,
        quarantine_max: 8 << 20,
        // Two blocks: the held streams (four writes of 1-4 blocks) go to
        // the device in pieces while they fill, so kills land between a
        // stream's pieces and its mapping too.
        stream_piece: 2 * K4,
        ..Default::default()
    }
}

/// A small deterministic generator (no external crates in tests).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn fill_word(seq: u64, id: u64, l: u64, i: u64) -> u64 {
    let mut x = seq ^ (id << 56) ^ (l << 24) ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    x.wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

/// Block content: seq, extent, block, then a fill derived from all three.
fn make_block(seq: u64, id: u64, l: u64) -> Vec<u8> {
    let mut b = vec![0u8; K4 as usize];
    b[0..8].copy_from_slice(&seq.to_le_bytes());
    b[8..16].copy_from_slice(&id.to_le_bytes());
    b[16..24].copy_from_slice(&l.to_le_bytes());
    for i in 3..(K4 / 8) {
        let o = (i * 8) as usize;
        b[o..o + 8].copy_from_slice(&fill_word(seq, id, l, i).to_le_bytes());
    }
    b
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Seen {
    Zero,
    Version(u64),
    Garbage,
}

fn decode_block(b: &[u8], id: u64, l: u64) -> Seen {
    if b.iter().all(|&x| x == 0) {
        return Seen::Zero;
    }
    let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
    let seq = w(0);
    if w(1) != id || w(2) != l {
        return Seen::Garbage;
    }
    for i in 3..(K4 / 8) {
        if w(i as usize) != fill_word(seq, id, l, i) {
            return Seen::Garbage;
        }
    }
    Seen::Version(seq)
}

// ----- the child --------------------------------------------------------------

struct Log(Mutex<std::fs::File>);
impl Log {
    fn line(&self, s: String) {
        // One write(2) per line on an O_APPEND file: a kill never tears a line.
        let mut f = self.0.lock().unwrap();
        f.write_all(format!("{s}\n").as_bytes()).unwrap();
    }
}

fn logged_write(store: &ChunkStore, log: &Log, seq: &AtomicU64, id: u64, l: u64, n: u64) {
    let s = seq.fetch_add(1, Ordering::Relaxed);
    let data: Vec<u8> = (0..n).flat_map(|i| make_block(s, id, l + i)).collect();
    log.line(format!("S {s} W {id} {l} {n}"));
    match store.write(id, l * K4, &data) {
        Ok(()) => log.line(format!("A {s}")),
        Err(e) => log.line(format!("F {s} {e}")),
    }
}

fn logged_unmap(store: &ChunkStore, log: &Log, seq: &AtomicU64, id: u64, l: u64, n: u64) {
    let s = seq.fetch_add(1, Ordering::Relaxed);
    log.line(format!("S {s} U {id} {l} {n}"));
    match store.unmap(id, l * K4, n * K4) {
        Ok(()) => log.line(format!("A {s}")),
        Err(e) => log.line(format!("F {s} {e}")),
    }
}

fn child(dir: &Path) {
    let file = dir.join("store");
    let log_path = dir.join("log");
    let start_seq: u64 = std::fs::read_to_string(dir.join("next_seq"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let log = Arc::new(Log(Mutex::new(
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log_path)
            .unwrap(),
    )));
    let runtime = Runtime::new(Config::for_tests(2)).unwrap();
    let placement = Placement::of_cycle(
        std::fs::read_to_string(dir.join("cycle"))
            .unwrap()
            .parse()
            .unwrap(),
    );
    let store = ChunkStore::open(&[file], &opts(placement), &runtime.handle()).unwrap();
    log.line("READY".into());
    let seq = Arc::new(AtomicU64::new(start_seq));
    let h = runtime.handle();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut joins = Vec::new();
    // Small random writes: 8 writers on extent 11, 256 blocks each.
    for k in 0..8u64 {
        let (s, log, seq) = (store.clone(), log.clone(), seq.clone());
        joins.push(h.spawn_on((k % 2) as usize, move || {
            let mut r = Rng(start_seq * 31 + k + 1);
            while Instant::now() < deadline {
                let n = 1 + r.below(4);
                let l = k * 256 + r.below(256 - n);
                logged_write(&s, &log, &seq, EXTENTS[0], l, n);
            }
        }));
    }
    // Large writes and unmaps: 3 writers on extent 12, 512 blocks each.
    for k in 0..3u64 {
        let (s, log, seq) = (store.clone(), log.clone(), seq.clone());
        joins.push(h.spawn_on((k % 2) as usize, move || {
            let mut r = Rng(start_seq * 17 + k + 100);
            while Instant::now() < deadline {
                let n = 16 + r.below(48);
                let l = k * 512 + r.below(512 - n);
                if r.below(8) == 0 {
                    logged_unmap(&s, &log, &seq, EXTENTS[1], l, n);
                } else {
                    logged_write(&s, &log, &seq, EXTENTS[1], l, n);
                }
            }
        }));
    }
    // Sequential streams, four writes in flight: extent 13, 2 x 1024 blocks.
    for k in 0..2u64 {
        let (s, log, seq, h2) = (store.clone(), log.clone(), seq.clone(), h.clone());
        joins.push(h.spawn_on((k % 2) as usize, move || {
            let mut r = Rng(start_seq * 7 + k + 200);
            let base = k * 1024;
            let mut l = r.below(900);
            while Instant::now() < deadline {
                let mut group = Vec::new();
                for _ in 0..4 {
                    let n = 1 + r.below(4);
                    if l + n > 1024 {
                        l = 0;
                    }
                    let (s, log, seq) = (s.clone(), log.clone(), seq.clone());
                    let at = base + l;
                    group.push(h2.spawn_on((k % 2) as usize, move || {
                        logged_write(&s, &log, &seq, EXTENTS[2], at, n)
                    }));
                    l += n;
                }
                for g in group {
                    g.join().unwrap();
                }
            }
        }));
    }
    // How many home writes went to new blocks, blocks the cleaner moved and
    // small writes logged so far (the parent checks that kills land while
    // each of these happens).
    {
        let (s, log) = (store.clone(), log.clone());
        std::thread::spawn(move || {
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
                let st = s.stats();
                log.line(format!("R {}", st.relocated_blocks));
                log.line(format!("C {}", st.cleaned_blocks));
                log.line(format!("L {}", st.logged_blocks));
                log.line(format!("P {}", st.stream_pieces));
            }
        });
    }
    for j in joins {
        let _ = j.join();
    }
    // Not killed in time: exit without closing, like a crash.
    std::process::exit(0);
}

#[test]
fn crash_child() {
    // Only does something when the parent runs it.
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(Path::new(&dir));
    }
}

// ----- the parent ---------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Op {
    Write { id: u64, l: u64, n: u64 },
    Unmap { id: u64, l: u64, n: u64 },
}

impl Op {
    fn range(&self) -> (u64, u64, u64) {
        match *self {
            Op::Write { id, l, n } | Op::Unmap { id, l, n } => (id, l, n),
        }
    }
    fn value(&self, seq: u64) -> Seen {
        match self {
            Op::Write { .. } => Seen::Version(seq),
            Op::Unmap { .. } => Seen::Zero,
        }
    }
}

/// Per block: what a cycle's log allows it to hold.
#[derive(Default, Clone, Copy)]
struct Expect {
    acked: Option<Seen>,
    inflight: Option<(u64, Seen)>,
}

fn verify_cycle(
    store: &ChunkStore,
    new_lines: &[String],
    baseline: &mut HashMap<(u64, u64), Seen>,
    cycle: usize,
) -> (u64, u64) {
    let mut ops: HashMap<u64, Op> = HashMap::new();
    let mut order: Vec<u64> = Vec::new();
    let mut acked: std::collections::HashSet<u64> = Default::default();
    for line in new_lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.first().copied() {
            Some("S") if f.len() == 6 => {
                let seq: u64 = f[1].parse().unwrap();
                let (id, l, n) = (
                    f[3].parse().unwrap(),
                    f[4].parse().unwrap(),
                    f[5].parse().unwrap(),
                );
                let op = if f[2] == "W" {
                    Op::Write { id, l, n }
                } else {
                    Op::Unmap { id, l, n }
                };
                ops.insert(seq, op);
                order.push(seq);
            }
            Some("A") if f.len() == 2 => {
                acked.insert(f[1].parse().unwrap());
            }
            Some("F") => panic!("cycle {cycle}: a store call failed in the child: {line}"),
            _ => {} // READY, or a line cut by the kill (cannot happen: one write(2) each)
        }
    }
    let mut exp: HashMap<(u64, u64), Expect> = HashMap::new();
    for seq in &order {
        let op = ops[seq];
        let (id, l, n) = op.range();
        for b in l..l + n {
            let e = exp.entry((id, b)).or_default();
            if acked.contains(seq) {
                e.acked = Some(op.value(*seq));
                e.inflight = None;
            } else {
                assert!(
                    e.inflight.is_none(),
                    "cycle {cycle}: two unacknowledged ops on one block"
                );
                e.inflight = Some((*seq, op.value(*seq)));
            }
        }
    }
    let mut checked = 0;
    let mut observed: HashMap<(u64, u64), Seen> = HashMap::new();
    for &id in &EXTENTS {
        let mut buf = vec![0u8; (EXT_BLOCKS * K4) as usize];
        match store.read(id, 0, &mut buf) {
            Ok(()) => {}
            Err(e) => panic!("cycle {cycle}: reading extent {id} after the crash failed: {e}"),
        }
        for l in 0..EXT_BLOCKS {
            let seen = decode_block(&buf[(l * K4) as usize..((l + 1) * K4) as usize], id, l);
            assert_ne!(
                seen,
                Seen::Garbage,
                "cycle {cycle}: extent {id} block {l} holds garbage"
            );
            let base = baseline.get(&(id, l)).copied().unwrap_or(Seen::Zero);
            let e = exp.get(&(id, l)).copied().unwrap_or_default();
            let old = e.acked.unwrap_or(base);
            let ok = seen == old || e.inflight.is_some_and(|(_, v)| v == seen);
            assert!(
                ok,
                "cycle {cycle}: extent {id} block {l}: read {seen:?}, expected the acknowledged {old:?} or the in-flight {:?}",
                e.inflight
            );
            observed.insert((id, l), seen);
            checked += 1;
        }
    }
    // A write cut by the kill: all its blocks old, or all new.
    let mut torn_checked = 0;
    for seq in &order {
        if acked.contains(seq) {
            continue;
        }
        if let Op::Write { id, l, n } = ops[seq] {
            let new = (l..l + n)
                .filter(|b| observed[&(id, *b)] == Seen::Version(*seq))
                .count() as u64;
            assert!(
                new == 0 || new == n,
                "cycle {cycle}: write {seq} ({n} blocks at {l} of extent {id}) is torn: {new} blocks new"
            );
            torn_checked += 1;
        }
    }
    *baseline = observed;
    (checked, torn_checked)
}

fn cycles() -> usize {
    std::env::var("CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

#[test]
fn sigkill_cycles_lose_no_acknowledged_write() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir: PathBuf =
        std::env::temp_dir().join(format!("ferrite-store-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("store");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    std::fs::File::create(dir.join("log")).unwrap();
    ChunkStore::format(std::slice::from_ref(&file), &opts(Placement::InPlace)).unwrap();
    {
        let runtime = Runtime::new(Config::for_tests(2)).unwrap();
        let store = ChunkStore::open(
            std::slice::from_ref(&file),
            &opts(Placement::InPlace),
            &runtime.handle(),
        )
        .unwrap();
        for id in EXTENTS {
            store.create_extent(id, EXT_BLOCKS * K4).unwrap();
        }
        store.close().unwrap();
    }
    let mut baseline: HashMap<(u64, u64), Seen> = HashMap::new();
    let mut log_offset = 0usize;
    let mut next_seq = 1u64;
    let mut rng = Rng(0x5eed_1234 ^ std::process::id() as u64);
    let (mut total_blocks, mut total_torn, mut total_acks, mut early_kills) = (0, 0, 0, 0);
    let mut relocated = 0u64;
    let mut cleaned = 0u64;
    let mut logged = 0u64;
    let mut pieces = 0u64;
    let n = cycles();
    for cycle in 0..n {
        std::fs::write(dir.join("next_seq"), next_seq.to_string()).unwrap();
        let placement = Placement::of_cycle(cycle);
        std::fs::write(dir.join("cycle"), cycle.to_string()).unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let early = rng.below(5) == 0;
        if early {
            // Sometimes kill it while it opens (recovery, checkpoint write).
            std::thread::sleep(Duration::from_millis(rng.below(40)));
            early_kills += 1;
        } else {
            let t0 = Instant::now();
            loop {
                let log = std::fs::read_to_string(dir.join("log")).unwrap();
                if log[log_offset..].contains("READY") || t0.elapsed() > Duration::from_secs(10) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(Duration::from_millis(20 + rng.below(300)));
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(
            status.code().is_none() || status.success(),
            "child failed: {status:?}"
        );

        let log = std::fs::read_to_string(dir.join("log")).unwrap();
        let new_lines: Vec<String> = log[log_offset..].lines().map(str::to_string).collect();
        log_offset = log.len();
        let mut cycle_relocated = 0u64;
        let mut cycle_cleaned = 0u64;
        let mut cycle_logged = 0u64;
        let mut cycle_pieces = 0u64;
        for l in &new_lines {
            if let Some(s) = l.strip_prefix("S ") {
                let seq: u64 = s.split_whitespace().next().unwrap().parse().unwrap();
                next_seq = next_seq.max(seq + 1);
            }
            if l.starts_with("A ") {
                total_acks += 1;
            }
            if let Some(r) = l.strip_prefix("R ") {
                cycle_relocated = cycle_relocated.max(r.parse().unwrap_or(0));
            }
            if let Some(r) = l.strip_prefix("C ") {
                cycle_cleaned = cycle_cleaned.max(r.parse().unwrap_or(0));
            }
            if let Some(r) = l.strip_prefix("L ") {
                cycle_logged = cycle_logged.max(r.parse().unwrap_or(0));
            }
            if let Some(r) = l.strip_prefix("P ") {
                cycle_pieces = cycle_pieces.max(r.parse().unwrap_or(0));
            }
        }
        let runtime = Runtime::new(Config::for_tests(2)).unwrap();
        let store = ChunkStore::open(
            std::slice::from_ref(&file),
            &opts(placement),
            &runtime.handle(),
        )
        .unwrap_or_else(|e| panic!("cycle {cycle}: reopen after the kill failed: {e}"));
        let s = store.clone();
        let lines = new_lines.clone();
        let mut b = std::mem::take(&mut baseline);
        let (checked, torn, b) = runtime.block_on(move || {
            let (c, t) = verify_cycle(&s, &lines, &mut b, cycle);
            (c, t, b)
        });
        baseline = b;
        relocated += cycle_relocated;
        cleaned += cycle_cleaned;
        logged += cycle_logged;
        pieces += cycle_pieces;
        assert_eq!(store.stats().checksum_errors, 0);
        total_blocks += checked;
        total_torn += torn;
        if cycle % 2 == 0 {
            store.close().unwrap();
        }
        drop(runtime);
    }
    eprintln!(
        "crash test: {n} SIGKILL cycles ({early_kills} during open), {total_acks} acknowledged ops, \
         {total_blocks} blocks verified, {total_torn} in-flight writes checked for tearing, \
         at least {relocated} blocks relocated home, {cleaned} moved by the cleaner and \
         {logged} small-write blocks logged and {pieces} stream pieces sent early before the kills"
    );
    assert!(total_acks > 0);
    assert!(
        relocated > 0,
        "home writes must have been relocated in some cycle"
    );
    assert!(
        logged > 0,
        "small writes must have been logged in some cycle"
    );
    assert!(
        cleaned > 0,
        "the cleaner must have moved blocks in some cycle"
    );
    assert!(
        pieces > 0,
        "held streams must have gone to the device in pieces"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
