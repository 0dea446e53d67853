//! The block-device backends: io_uring on a temp file (on the reactors and
//! off them) and malloc, through the same `BlockDevice` interface.

use ferrite_engine::bdev::{self, malloc, Backend, BlockDevice, DmaBuf, IoOp};
use ferrite_engine::rt::{self, Config, Runtime};
use std::path::PathBuf;
use std::sync::Arc;

fn temp_file(name: &str, size: u64) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ferrite-bdev-{}-{name}", std::process::id()));
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    p
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes, reads back, vectored I/O, zeroes, flush and counters.
fn exercise(dev: Arc<dyn BlockDevice>) {
    let a = Arc::new(DmaBuf::copy_from(&pattern(1, 8192)));
    dev.write(4096, a).unwrap();
    let (b, r) = dev.read(4096, DmaBuf::new(8192));
    r.unwrap();
    assert_eq!(b.as_slice(), &pattern(1, 8192)[..]);

    let v: Vec<_> = (0..4u8)
        .map(|i| Arc::new(DmaBuf::copy_from(&pattern(10 + i, 4096))))
        .collect();
    dev.writev(65536, v).unwrap();
    let (bufs, r) = dev.readv(65536, (0..4).map(|_| DmaBuf::new(4096)).collect());
    r.unwrap();
    for (i, b) in bufs.iter().enumerate() {
        assert_eq!(b.as_slice(), &pattern(10 + i as u8, 4096)[..]);
    }
    // Arena and heap buffers in one vectored request (the uring backend
    // uses the registered arena only when every segment lies in it).
    let big = (4 << 20) + 4096; // above the largest arena class: heap
    let mixed = vec![
        Arc::new(DmaBuf::copy_from(&pattern(20, 4096))),
        Arc::new(DmaBuf::copy_from(&pattern(21, big))),
    ];
    assert!(!mixed[1].in_arena());
    dev.writev(8 << 20, mixed).unwrap();
    let (bufs, r) = dev.readv(8 << 20, vec![DmaBuf::new(big), DmaBuf::new(4096)]);
    r.unwrap();
    let mut want = pattern(20, 4096);
    want.extend(pattern(21, big));
    let got: Vec<u8> = bufs
        .iter()
        .flat_map(|b| b.as_slice().iter().copied())
        .collect();
    assert_eq!(got, want);
    dev.flush().unwrap();
    dev.write_zeroes(65536, 8192).unwrap();
    let (b, r) = dev.read(65536, DmaBuf::new(16384));
    r.unwrap();
    assert!(b.as_slice()[..8192].iter().all(|&x| x == 0));
    assert_eq!(&b.as_slice()[8192..12288], &pattern(12, 4096)[..]);

    // Misaligned and out-of-range requests fail cleanly.
    let (_, r) = dev.read(100, DmaBuf::new(4096));
    assert!(r.is_err());
    let size = dev.info().size;
    assert!(dev.write(size, Arc::new(DmaBuf::new(4096))).is_err());

    // A batch completes as a whole, in order.
    let done = dev.submit(vec![
        IoOp::Write {
            fua: false,
            offset: 0,
            buf: Arc::new(DmaBuf::copy_from(&pattern(99, 4096))),
        },
        IoOp::Read {
            offset: 4096,
            buf: DmaBuf::new(4096),
        },
        IoOp::Flush,
    ]);
    assert_eq!(done.len(), 3);
    assert!(done.iter().all(|d| d.result.is_ok()));

    let s = dev.stats().snapshot();
    assert!(s.bytes_written >= 8192 + 16384 + 4096);
    assert!(s.bytes_read >= 8192 + 16384);
    assert!(s.flushes >= 2);
}

#[test]
fn uring_on_reactors_with_concurrent_coroutines() {
    let path = temp_file("reactor", 16 << 20);
    let runtime = Runtime::new(Config::for_tests(2)).unwrap();
    let dev: Arc<dyn BlockDevice> = bdev::open(&path, Backend::Uring).unwrap();
    assert_eq!(dev.info().size, 16 << 20);
    let d = dev.clone();
    runtime.block_on(move || exercise(d));
    // 64 coroutines over both reactors, each writing and verifying its block.
    let d = dev.clone();
    runtime.block_on(move || {
        let h = rt::current_handle().unwrap();
        let joins: Vec<_> = (0..64u64)
            .map(|i| {
                let d = d.clone();
                h.spawn_on((i % 2) as usize, move || {
                    let off = (1 << 20) + i * 4096;
                    let data = pattern(i as u8, 4096);
                    d.write(off, Arc::new(DmaBuf::copy_from(&data))).unwrap();
                    let (b, r) = d.read(off, DmaBuf::new(4096));
                    r.unwrap();
                    assert_eq!(b.as_slice(), &data[..]);
                })
            })
            .collect();
        for j in joins {
            j.join().unwrap();
        }
    });
    drop(runtime);
    // Off the reactors: the same device, blocking calls.
    let (b, r) = dev.read((1 << 20) + 5 * 4096, DmaBuf::new(4096));
    r.unwrap();
    assert_eq!(b.as_slice(), &pattern(5, 4096)[..]);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn uring_off_reactors() {
    let path = temp_file("plain", 16 << 20);
    let dev = bdev::open(&path, Backend::Uring).unwrap();
    exercise(dev);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn malloc_backend() {
    malloc::create("bdev-test-malloc", 16 << 20);
    let dev = bdev::open(std::path::Path::new("bdev-test-malloc"), Backend::Malloc).unwrap();
    let runtime = Runtime::new(Config::for_tests(1)).unwrap();
    let d = dev.clone();
    runtime.block_on(move || exercise(d));
    assert!(malloc::remove("bdev-test-malloc"));
    assert!(bdev::open(std::path::Path::new("nope"), Backend::Malloc).is_err());
}
