//! What the store does with bad devices and bad luck: a block corrupted on
//! the device fails its read with a checksum error naming extent and offset
//! (and the counter rises); a full device fails writes with NoSpace and
//! harms nothing stored; a device holding something else, or a store of
//! another format version, is refused; one store spans several devices.

use ferrite_engine::bdev::{malloc, Backend};
use ferrite_engine::rt::{Config, Runtime};
use ferrite_engine::store::superblock::{Superblock, FORMAT_VERSION};
use ferrite_engine::store::{ChunkStore, StoreError, StoreOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

const K4: usize = 4096;

struct TempFiles(Vec<PathBuf>);
impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn temp_files(tag: &str, sizes: &[u64]) -> TempFiles {
    TempFiles(
        sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let p = std::env::temp_dir()
                    .join(format!("ferrite-faults-{}-{tag}-{i}", std::process::id()));
                let f = std::fs::File::create(&p).unwrap();
                f.set_len(s).unwrap();
                p
            })
            .collect(),
    )
}

fn opts() -> StoreOptions {
    StoreOptions {
        workers: 2,
        journal_size: 2 << 20,
        extent_size_max: 64 << 20,
        ..Default::default()
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    // Every 4 KiB block differs (so a test can find one on the device).
    (0..len)
        .map(|i| {
            ((i as u8).wrapping_mul(7) ^ ((i / K4) as u8).wrapping_mul(13)).wrapping_add(seed) | 1
        })
        .collect()
}

/// Finds the device byte offset of a 4 KiB block by its content.
fn find_block(file: &PathBuf, content: &[u8]) -> Option<u64> {
    let data = std::fs::read(file).unwrap();
    // The last copy: a journaled block also sits in the journal, before the data area.
    data.chunks(K4)
        .rposition(|c| c == content)
        .map(|i| (i * K4) as u64)
}

#[test]
fn corrupted_block_fails_with_checksum_error() {
    let files = temp_files("corrupt", &[32 << 20]);
    ChunkStore::format(&files.0, &opts()).unwrap();
    let runtime = Runtime::new(Config::for_tests(2)).unwrap();
    let store = ChunkStore::open(&files.0, &opts(), &runtime.handle()).unwrap();
    store.create_extent(5, 1 << 20).unwrap();
    let small = pattern(3, K4); // journaled, then home
    let large: Vec<u8> = pattern(9, 32 * K4); // direct
    store.write(5, 8 * K4 as u64, &small).unwrap();
    store.write(5, 64 * K4 as u64, &large).unwrap();
    store.checkpoint().unwrap(); // everything home, journal trimmed
    store.close().unwrap();

    // Flip bytes under the small block's home and one block of the large write.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&files.0[0])
        .unwrap();
    let home = find_block(&files.0[0], &small).expect("the small block is home");
    f.write_all_at(&[0xAA, 0x55], home + 100).unwrap();
    let big_block = &large[5 * K4..6 * K4];
    let at = find_block(&files.0[0], big_block).expect("the large write is on the device");
    f.write_all_at(&[0xFF], at + 4000).unwrap();
    f.sync_all().unwrap();

    let store = ChunkStore::open(&files.0, &opts(), &runtime.handle()).unwrap();
    let mut b = vec![0u8; K4];
    match store.read(5, 8 * K4 as u64, &mut b) {
        Err(StoreError::Checksum {
            extent: 5,
            offset,
            device_offset,
            ..
        }) => {
            assert_eq!(offset, 8 * K4 as u64);
            assert_eq!(device_offset, home);
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
    assert_eq!(store.stats().checksum_errors, 1);
    let mut b = vec![0u8; 32 * K4];
    match store.read(5, 64 * K4 as u64, &mut b) {
        Err(StoreError::Checksum {
            extent: 5, offset, ..
        }) => assert_eq!(offset, 69 * K4 as u64),
        other => panic!("expected a checksum error, got {other:?}"),
    }
    assert_eq!(store.stats().checksum_errors, 2);
    // Blocks around it still read; rewriting the bad block heals it.
    let mut b = vec![0u8; 5 * K4];
    store.read(5, 64 * K4 as u64, &mut b).unwrap();
    assert_eq!(&b[..], &large[..5 * K4]);
    store.write(5, 8 * K4 as u64, &small).unwrap();
    let mut b = vec![0u8; K4];
    store.read(5, 8 * K4 as u64, &mut b).unwrap();
    assert_eq!(b, small);
    store.close().unwrap();
}

#[test]
fn full_device_fails_with_no_space_and_keeps_data() {
    malloc::create("faults-nospace", 24 << 20);
    let devs = vec![PathBuf::from("faults-nospace")];
    let o = StoreOptions {
        backend: Backend::Malloc,
        quarantine_max: 1 << 20,
        // Held streams go to the device in pieces of two blocks.
        stream_piece: 2 * K4 as u64,
        ..opts()
    };
    ChunkStore::format(&devs, &o).unwrap();
    let runtime = Runtime::new(Config::for_tests(2)).unwrap();
    let store = ChunkStore::open(&devs, &o, &runtime.handle()).unwrap();
    let (total, free) = store.capacity();
    assert_eq!(total, free);
    store.create_extent(1, 64 << 20).unwrap();
    store.create_extent(2, 64 << 20).unwrap();
    let keep = pattern(1, 256 * K4);
    store.write(2, 0, &keep).unwrap();
    let chunk = pattern(2, 64 * K4);
    let mut written = 0u64;
    let err = loop {
        match store.write(1, written, &chunk) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => break e,
        }
        assert!(written < 64 << 20, "the device never filled up");
    };
    assert!(
        matches!(err, StoreError::NoSpace { extent: 1, .. }),
        "{err:?}"
    );
    // Small journaled writes to unmapped blocks fail the same way.
    let e = store.write(1, 63 << 20, &pattern(3, K4)).unwrap_err();
    assert!(matches!(e, StoreError::NoSpace { .. }), "{e:?}");
    // Overwrites of mapped blocks in place still work.
    store.write(2, 0, &pattern(4, K4)).unwrap();
    let mut b = vec![0u8; 255 * K4];
    store.read(2, K4 as u64, &mut b).unwrap();
    assert_eq!(&b[..], &keep[K4..]);
    // So do large ones, which normally go to new blocks: on a full store
    // they are journaled and written in place.
    let big = pattern(5, 64 * K4);
    store.write(2, 64 * K4 as u64, &big).unwrap();
    let mut b = vec![0u8; 256 * K4];
    store.read(2, 0, &mut b).unwrap();
    assert_eq!(&b[K4..64 * K4], &keep[K4..64 * K4]);
    assert_eq!(&b[64 * K4..128 * K4], &big[..]);
    assert_eq!(&b[128 * K4..], &keep[128 * K4..]);
    // A held stream's pieces find no space: overwrites fall back to the
    // journal whole, and writes to unmapped blocks fail, leaking nothing.
    let free_before = store.capacity().1;
    let pieces_before = store.stats().stream_pieces;
    let stream = pattern(6, 32 * K4);
    let results = concurrent_stream(&runtime, &store, 2, 128, &stream);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let mut b = vec![0u8; stream.len()];
    store.read(2, 128 * K4 as u64, &mut b).unwrap();
    assert_eq!(b, stream);
    let results = concurrent_stream(&runtime, &store, 1, 15 << 10, &stream);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(StoreError::NoSpace { extent: 1, .. }))),
        "{results:?}"
    );
    assert!(
        store.stats().stream_pieces > pieces_before,
        "the streams must have been held and cut into pieces"
    );
    assert_eq!(store.capacity().1, free_before, "blocks leaked");
    let e = store.write(1, written, &chunk).unwrap_err();
    assert!(matches!(e, StoreError::NoSpace { .. }), "{e:?}");
    let mut b = vec![0u8; written as usize];
    store.read(1, 0, &mut b).unwrap();
    assert!(b.chunks(chunk.len()).all(|c| c == &chunk[..]));
    // Freeing space makes room again (after the quarantine is reclaimed).
    store.delete_extent(2).unwrap();
    store.write(1, written, &chunk).unwrap();
    store.close().unwrap();
    // And the store still opens and reads after all that.
    let store = ChunkStore::open(&devs, &o, &runtime.handle()).unwrap();
    let mut b = vec![0u8; chunk.len()];
    store.read(1, 0, &mut b).unwrap();
    assert_eq!(b, chunk);
    store.close().unwrap();
    malloc::remove("faults-nospace");
}

/// Writes `data` at block `lblock` of extent `id` as eight concurrent
/// adjacent writes (a sequential stream, held and merged); each write's
/// outcome, in order.
fn concurrent_stream(
    runtime: &Runtime,
    store: &Arc<ChunkStore>,
    id: u64,
    lblock: u64,
    data: &[u8],
) -> Vec<Result<(), StoreError>> {
    let part = data.len() / 8;
    let jobs: Vec<(u64, Vec<u8>)> = data
        .chunks(part)
        .enumerate()
        .map(|(i, c)| ((lblock * K4 as u64) + (i * part) as u64, c.to_vec()))
        .collect();
    let s = store.clone();
    runtime.block_on(move || {
        let h = ferrite_engine::rt::current_handle().unwrap();
        let js: Vec<_> = jobs
            .into_iter()
            .map(|(at, c)| {
                let s = s.clone();
                h.spawn_on(0, move || s.write(id, at, &c))
            })
            .collect();
        js.into_iter().map(|j| j.join().unwrap()).collect()
    })
}

#[test]
fn foreign_devices_and_other_versions_are_refused() {
    let files = temp_files("foreign", &[16 << 20]);
    // Something else on the device: refused unless wiped.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&files.0[0])
        .unwrap()
        .write_all_at(b"\x53\xef some other file system", 1024 + 56)
        .unwrap();
    let e = ChunkStore::format(&files.0, &opts()).unwrap_err();
    assert!(
        matches!(&e, StoreError::Format { reason, .. } if reason.contains("other data")),
        "{e}"
    );
    let runtime = Runtime::new(Config::for_tests(1)).unwrap();
    let e = ChunkStore::open(&files.0, &opts(), &runtime.handle())
        .err()
        .unwrap();
    assert!(
        matches!(&e, StoreError::Format { reason, .. } if reason.contains("not a Ferrite store")),
        "{e}"
    );
    let wipe = StoreOptions {
        wipe: true,
        ..opts()
    };
    ChunkStore::format(&files.0, &wipe).unwrap();
    // An existing store is not formatted over by accident either.
    let e = ChunkStore::format(&files.0, &opts()).unwrap_err();
    assert!(
        matches!(&e, StoreError::Format { reason, .. } if reason.contains("already holds a Ferrite store")),
        "{e}"
    );
    // Another format version: a clear error on open.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&files.0[0])
        .unwrap();
    let mut blk = vec![0u8; K4];
    f.read_exact_at(&mut blk, 0).unwrap();
    let mut sb = Superblock::decode(&blk).unwrap();
    sb.version = FORMAT_VERSION + 1;
    f.write_all_at(&sb.encode(), 0).unwrap();
    f.write_all_at(&sb.encode(), K4 as u64).unwrap();
    let e = ChunkStore::open(&files.0, &opts(), &runtime.handle())
        .err()
        .unwrap();
    assert!(
        matches!(&e, StoreError::Format { reason, .. } if reason.contains("format version")),
        "{e}"
    );
    // One damaged copy is survivable.
    ChunkStore::format(&files.0, &wipe).unwrap();
    f.write_all_at(&[0xEE; 64], 0).unwrap();
    let store = ChunkStore::open(&files.0, &opts(), &runtime.handle()).unwrap();
    store.close().unwrap();
}

#[test]
fn a_store_spans_several_devices() {
    let files = temp_files("multi", &[24 << 20, 16 << 20]);
    ChunkStore::format(&files.0, &opts()).unwrap();
    let runtime = Runtime::new(Config::for_tests(2)).unwrap();
    // Devices given in another order are matched by their superblocks.
    let rev: Vec<PathBuf> = files.0.iter().rev().cloned().collect();
    let store = ChunkStore::open(&rev, &opts(), &runtime.handle()).unwrap();
    let (total, _) = store.capacity();
    assert!(total > 24 << 20, "both data areas count: {total}");
    store.create_extent(1, 32 << 20).unwrap();
    let data = pattern(5, 6 << 20);
    for (i, c) in data.chunks(1 << 20).enumerate() {
        store.write(1, (i << 20) as u64, c).unwrap();
    }
    let s = store.stats();
    assert_eq!(s.devices.len(), 2);
    assert!(
        s.devices.iter().all(|d| d.stats.bytes_written > 0),
        "{:?}",
        s.devices
    );
    store.close().unwrap();
    let store = ChunkStore::open(&files.0, &opts(), &runtime.handle()).unwrap();
    let mut b = vec![0u8; data.len()];
    store.read(1, 0, &mut b).unwrap();
    assert_eq!(b, data);
    store.close().unwrap();
    // Only one of the two: refused with a clear error.
    let e = ChunkStore::open(&files.0[..1], &opts(), &runtime.handle())
        .err()
        .unwrap();
    assert!(
        matches!(&e, StoreError::Format { reason, .. } if reason.contains("device(s) were given")),
        "{e}"
    );
}

/// Only the last journal batch can be torn by a crash (a batch is written
/// once the previous one was flushed). Recovery verifies it and drops it
/// whole if its data does not match its crcs: its writes read back as all
/// old. An older batch was flushed before the next was written, so its
/// header is trusted; damage under it is the device's, and the read of
/// that block fails its checksum instead of returning the bytes.
/// Simulated on a copy of the device taken after three one-block batches
/// (before anything went home), with one batch's journal copy damaged.
/// One worker and no cleaner, small writes journaled or logged.
fn one_worker(log_small_writes: bool) -> StoreOptions {
    StoreOptions {
        workers: 1,
        clean_idle: None,
        log_small_writes,
        ..opts()
    }
}

/// A 32 MiB file formatted with `o`, and the store open on it (one reactor).
fn fresh_store(tag: &str, o: &StoreOptions) -> (TempFiles, Runtime, Arc<ChunkStore>) {
    let files = temp_files(tag, &[32 << 20]);
    ChunkStore::format(&files.0, o).unwrap();
    let runtime = Runtime::new(Config::for_tests(1)).unwrap();
    let store = ChunkStore::open(&files.0, o, &runtime.handle()).unwrap();
    (files, runtime, store)
}

#[test]
fn a_torn_last_journal_batch_is_dropped_and_older_damage_fails_its_read() {
    // Small writes journaled, or logged: written once to new blocks with
    // the batch that maps them (the default). Either way a batch's data
    // must check out for the last batch to be replayed.
    for log_small_writes in [false, true] {
        torn_last_batch(log_small_writes);
    }
}

fn torn_last_batch(log_small_writes: bool) {
    let o = one_worker(log_small_writes);
    let (files, runtime, store) = fresh_store(&format!("torn-{log_small_writes}"), &o);
    store.create_extent(5, 1 << 20).unwrap();
    let old: Vec<Vec<u8>> = (0..3).map(|i| pattern(40 + i, K4)).collect();
    let new: Vec<Vec<u8>> = (0..3).map(|i| pattern(80 + i, K4)).collect();
    // Far apart, so that no write looks sequential.
    let at = |i: usize| (i as u64) * 64 * K4 as u64;
    for (i, b) in old.iter().enumerate() {
        store.write(5, at(i), b).unwrap();
    }
    store.checkpoint().unwrap(); // the old data home, the journal empty
    let batches0 = store.stats().batches;
    for (i, b) in new.iter().enumerate() {
        store.write(5, at(i), b).unwrap(); // one batch each
    }
    assert_eq!(store.stats().batches - batches0, 3);
    // The device as a crash would leave it: the new data only in the journal
    // (journaled), or only in the blocks the batches map (logged).
    let image = std::fs::read(&files.0[0]).unwrap();
    store.close().unwrap();
    drop(runtime);

    // Damaged batch: 0 = the oldest of the three, 2 = the last.
    for damaged in [2usize, 1, 0] {
        let copies: Vec<usize> = image
            .chunks(K4)
            .enumerate()
            .filter(|(_, c)| *c == &new[damaged][..])
            .map(|(i, _)| i)
            .collect();
        assert_eq!(copies.len(), 1, "the new data is in one place only");
        let mut img = image.clone();
        img[copies[0] * K4 + 1000..copies[0] * K4 + 1016].fill(0x5A);
        let crashed = temp_files(&format!("torn{damaged}-{log_small_writes}"), &[0]);
        std::fs::write(&crashed.0[0], &img).unwrap();

        let runtime = Runtime::new(Config::for_tests(1)).unwrap();
        let store = ChunkStore::open(&crashed.0, &o, &runtime.handle()).unwrap();
        for (i, new_i) in new.iter().enumerate() {
            let mut b = vec![0u8; K4];
            let r = store.read(5, at(i), &mut b);
            match (damaged, i) {
                (2, 2) => assert!(r.is_ok() && b == old[2], "the torn last batch is dropped"),
                (d, i) if d == i => match r {
                    Err(StoreError::Checksum {
                        extent: 5, offset, ..
                    }) => {
                        assert_eq!(offset, at(i))
                    }
                    other => panic!("damaged batch {d}: expected a checksum error, got {other:?}"),
                },
                _ => assert!(
                    r.is_ok() && &b == new_i,
                    "damaged batch {damaged}: block {i} reads new"
                ),
            }
        }
        assert_eq!(store.stats().checksum_errors, (damaged < 2) as u64);
        store.close().unwrap();
    }
}

/// A write that loses a race with the deletion of its extent is rejected
/// by the committer inside a batch that carries other records. The journal
/// must go on exactly where that batch's header says it ends: replay after
/// a crash walks from header to header, and a gap would end it there,
/// losing every acknowledged write after it. (Before the fix, the batch's
/// length counted the rejected write's data blocks.) Both placements of
/// small writes: journaled, and logged (the default).
#[test]
fn a_write_rejected_inside_a_batch_leaves_no_gap_in_the_journal() {
    for log_small_writes in [false, true] {
        rejected_write_in_a_batch(log_small_writes);
    }
}

fn rejected_write_in_a_batch(log_small_writes: bool) {
    let o = one_worker(log_small_writes);
    let (files, runtime, store) = fresh_store(&format!("reject-{log_small_writes}"), &o);
    const KEEPER: u64 = 2;
    store.create_extent(KEEPER, 1 << 20).unwrap();
    let data = |round: u64| pattern(round as u8, K4);
    let mut rejected = 0;
    for round in 0..20u64 {
        let victim = 100 + round;
        store.create_extent(victim, 1 << 20).unwrap();
        let s = store.clone();
        // One reactor: the three coroutines queue their operations one after
        // another before the committer runs, so they share one batch. The
        // victim's write passed its extent check before the deletion was
        // applied, and the committer rejects it.
        rejected += runtime.block_on(move || {
            let h = ferrite_engine::rt::current_handle().unwrap();
            let (a, b, c) = (s.clone(), s.clone(), s.clone());
            let del = h.spawn_on(0, move || a.delete_extent(victim));
            let lost = h.spawn_on(0, move || b.write(victim, 0, &data(round)));
            let kept = h.spawn_on(0, move || c.write(KEEPER, round * K4 as u64, &data(round)));
            del.join().unwrap().unwrap();
            kept.join().unwrap().unwrap();
            match lost.join().unwrap() {
                Err(StoreError::NoSuchExtent { extent }) if extent == victim => 1,
                Ok(()) => 0,
                Err(e) => panic!("write to extent {victim}: {e}"),
            }
        });
    }
    assert!(
        rejected > 0,
        "no write lost the race: the test did not test"
    );
    // Acknowledged after the batches with rejected writes.
    store.write(KEEPER, 100 * K4 as u64, &data(100)).unwrap();
    // Crash: no close.
    drop(store);
    drop(runtime);
    let runtime = Runtime::new(Config::for_tests(1)).unwrap();
    let store = ChunkStore::open(&files.0, &o, &runtime.handle()).unwrap();
    for round in (0..20u64).chain([100]) {
        let mut b = vec![0u8; K4];
        store.read(KEEPER, round * K4 as u64, &mut b).unwrap();
        assert!(
            b == data(round),
            "log_small_writes {log_small_writes}: block {round}, acknowledged before the crash, \
             did not survive replay ({rejected} writes rejected inside batches)"
        );
        assert_eq!(
            store.list_extents().iter().filter(|x| x.id >= 100).count(),
            0
        );
    }
    store.close().unwrap();
}
