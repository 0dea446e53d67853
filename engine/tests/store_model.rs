//! Model test: random operations against the store and an in-memory model,
//! compared after every read and listing, with clean reopens (close) and
//! crash reopens (dropped without close, runtime stopped) in between.
//! Bursts of concurrent adjacent writes exercise group commit and stream
//! merging (in pieces sent while a stream fills). A small journal makes
//! checkpoints and journal wrap frequent.

use ferrite_engine::bdev::{malloc, Backend};
use ferrite_engine::rt::{self, Config, Runtime};
use ferrite_engine::store::{ChunkStore, StoreError, StoreOptions};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

const K4: u64 = 4096;
const EXT: u64 = 256 * K4; // 1 MiB extents: 256 blocks

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

fn content(seed: u64) -> Vec<u8> {
    let mut b = vec![0u8; K4 as usize];
    let mut x = seed | 1;
    for c in b.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
    b
}

#[derive(Default)]
struct Model {
    /// extent -> (generation, block -> seed)
    extents: HashMap<u64, (u64, HashMap<u64, u64>)>,
}

/// Where small writes go.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Placement {
    /// Journaled, then written home in place.
    InPlace,
    /// Journaled, then relocated home to new blocks.
    Relocated,
    /// Written once to new blocks with their batch (the default).
    Logged,
}

/// Unless in place, the cleaner runs too, while the test writes (it
/// normally waits for the worker to be idle).
fn opts(backend: Backend, placement: Placement) -> StoreOptions {
    let relocate_home = placement != Placement::InPlace;
    StoreOptions {
        relocate_home,
        log_small_writes: placement == Placement::Logged,
        clean_idle: relocate_home.then_some(Duration::ZERO),
        workers: 2,
        journal_size: 1 << 20,
        extent_size_max: EXT,
        backend,
        // Small: logged small writes put no data in the journal, so the
        // quarantine is what makes them checkpoint often.
        quarantine_max: 512 << 10,
        // Two blocks: the bursts' held streams (8 writes of 1-3 blocks) go
        // to the device in pieces while they fill.
        stream_piece: 2 * K4,
        ..Default::default()
    }
}

fn check_extent(store: &ChunkStore, m: &Model, id: u64) {
    let mut buf = vec![0u8; EXT as usize];
    store
        .read(id, 0, &mut buf)
        .unwrap_or_else(|e| panic!("read extent {id}: {e}"));
    let blocks = &m.extents[&id].1;
    for l in 0..EXT / K4 {
        let got = &buf[(l * K4) as usize..((l + 1) * K4) as usize];
        match blocks.get(&l) {
            Some(&seed) => assert!(
                got == &content(seed)[..],
                "extent {id} block {l} differs from the model"
            ),
            None => assert!(
                got.iter().all(|&x| x == 0),
                "extent {id} block {l} should read zero"
            ),
        }
    }
}

fn check_all(store: &ChunkStore, m: &Model) {
    let list = store.list_extents();
    let mut ids: Vec<u64> = m.extents.keys().copied().collect();
    ids.sort();
    assert_eq!(list.iter().map(|x| x.id).collect::<Vec<_>>(), ids);
    for x in &list {
        let (gen, blocks) = &m.extents[&x.id];
        assert_eq!(x.generation, *gen, "generation of extent {}", x.id);
        assert_eq!(
            x.allocated,
            blocks.len() as u64 * K4,
            "allocated bytes of extent {}",
            x.id
        );
        check_extent(store, m, x.id);
    }
}

/// Counters summed over the store's lives (each reopen starts them at 0).
#[derive(Default)]
struct Totals {
    ckpts: u64,
    held: u64,
    pieces: u64,
    moved: u64,
    cleaned: u64,
    logged: u64,
}

impl Totals {
    fn add(&mut self, store: &ChunkStore) {
        let s = store.stats();
        self.ckpts += s.checkpoints;
        self.held += s.held_writes;
        self.pieces += s.stream_pieces;
        self.moved += s.relocated_blocks;
        self.cleaned += s.cleaned_blocks;
        self.logged += s.logged_blocks;
    }
}

fn run_model(backend: Backend, devs: Vec<PathBuf>, seed: u64, steps: usize, placement: Placement) {
    let o = opts(backend, placement);
    ChunkStore::format(
        &devs,
        &StoreOptions {
            wipe: true,
            ..o.clone()
        },
    )
    .unwrap();
    let mut rng = Rng(seed);
    let mut m = Model::default();
    let mut seedgen = seed.wrapping_mul(1000);
    let mut runtime = Runtime::new(Config::for_tests(2)).unwrap();
    let mut store = ChunkStore::open(&devs, &o, &runtime.handle()).unwrap();
    let (mut reopens, mut crashes) = (0, 0);
    let mut t = Totals::default();
    for step in 0..steps {
        let ids: Vec<u64> = m.extents.keys().copied().collect();
        let pick = |rng: &mut Rng| ids[rng.below(ids.len() as u64) as usize];
        match rng.below(100) {
            0..=5 => {
                let id = rng.below(12);
                let r = store.create_extent(id, EXT);
                match m.extents.entry(id) {
                    std::collections::hash_map::Entry::Occupied(_) => {
                        assert_eq!(r, Err(StoreError::ExtentExists { extent: id }))
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        r.unwrap();
                        v.insert((0, HashMap::new()));
                    }
                }
            }
            6..=7 if !ids.is_empty() => {
                let id = pick(&mut rng);
                store.delete_extent(id).unwrap();
                m.extents.remove(&id);
            }
            8..=50 if !ids.is_empty() => {
                let id = pick(&mut rng);
                // Mostly small, sometimes large (direct) writes.
                let n = if rng.below(4) == 0 {
                    16 + rng.below(48)
                } else {
                    1 + rng.below(6)
                };
                let l = rng.below(EXT / K4 - n + 1);
                let seeds: Vec<u64> = (0..n)
                    .map(|_| {
                        seedgen += 1;
                        seedgen
                    })
                    .collect();
                let data: Vec<u8> = seeds.iter().flat_map(|&s| content(s)).collect();
                store.write(id, l * K4, &data).unwrap();
                let blocks = &mut m.extents.get_mut(&id).unwrap().1;
                for (i, s) in seeds.into_iter().enumerate() {
                    blocks.insert(l + i as u64, s);
                }
            }
            51..=60 if !ids.is_empty() => {
                // A burst of concurrent adjacent writes (a stream).
                let id = pick(&mut rng);
                let start = rng.below(EXT / K4 - 32);
                let mut jobs = Vec::new();
                let mut l = start;
                for _ in 0..8 {
                    let n = 1 + rng.below(3);
                    let seeds: Vec<u64> = (0..n)
                        .map(|_| {
                            seedgen += 1;
                            seedgen
                        })
                        .collect();
                    jobs.push((l, seeds));
                    l += n;
                }
                let s = store.clone();
                let jobs2 = jobs.clone();
                runtime.block_on(move || {
                    let h = rt::current_handle().unwrap();
                    let js: Vec<_> = jobs2
                        .into_iter()
                        .enumerate()
                        .map(|(i, (l, seeds))| {
                            let s = s.clone();
                            h.spawn_on(i % 2, move || {
                                let data: Vec<u8> =
                                    seeds.iter().flat_map(|&x| content(x)).collect();
                                s.write(id, l * K4, &data)
                            })
                        })
                        .collect();
                    for j in js {
                        j.join().unwrap().unwrap();
                    }
                });
                let blocks = &mut m.extents.get_mut(&id).unwrap().1;
                for (l, seeds) in jobs {
                    for (i, s) in seeds.into_iter().enumerate() {
                        blocks.insert(l + i as u64, s);
                    }
                }
            }
            61..=66 if !ids.is_empty() => {
                let id = pick(&mut rng);
                let n = 1 + rng.below(40);
                let l = rng.below(EXT / K4 - n + 1);
                store.unmap(id, l * K4, n * K4).unwrap();
                let blocks = &mut m.extents.get_mut(&id).unwrap().1;
                (l..l + n).for_each(|b| {
                    blocks.remove(&b);
                });
            }
            67..=70 if !ids.is_empty() => {
                let id = pick(&mut rng);
                let g = rng.below(1000);
                store.set_extent_generation(id, g).unwrap();
                m.extents.get_mut(&id).unwrap().0 = g;
            }
            71..=85 if !ids.is_empty() => {
                let id = pick(&mut rng);
                check_extent(&store, &m, id);
            }
            86 => {
                t.add(&store);
                store.close().unwrap();
                store = ChunkStore::open(&devs, &o, &runtime.handle()).unwrap();
                reopens += 1;
                check_all(&store, &m);
            }
            87 => {
                // Crash: no close, the runtime goes away under the store.
                t.add(&store);
                drop(store);
                drop(runtime);
                runtime = Runtime::new(Config::for_tests(2)).unwrap();
                store = ChunkStore::open(&devs, &o, &runtime.handle())
                    .unwrap_or_else(|e| panic!("step {step}: reopen after crash: {e}"));
                crashes += 1;
                check_all(&store, &m);
            }
            _ => {}
        }
    }
    check_all(&store, &m);
    assert_eq!(store.stats().checksum_errors, 0);
    t.add(&store);
    let Totals {
        ckpts,
        held,
        pieces,
        moved,
        cleaned,
        logged,
    } = t;
    match placement {
        Placement::InPlace => {
            assert_eq!(moved, 0, "relocation is off: home writes go in place");
            assert_eq!(cleaned, 0, "no cleaner without relocation");
        }
        Placement::Relocated => {
            assert!(moved > 0, "home writes must have been relocated");
            assert!(cleaned > 0, "the cleaner must have moved blocks");
        }
        Placement::Logged => {
            assert!(logged > 0, "small writes must have been logged");
            assert!(cleaned > 0, "the cleaner must have moved blocks");
        }
    }
    if placement != Placement::Logged {
        assert_eq!(logged, 0, "small writes are journaled");
    }
    assert!(
        held > 0,
        "concurrent adjacent writes must have been held and merged"
    );
    assert!(
        pieces > 0,
        "held streams must have gone to the device in pieces"
    );
    assert!(ckpts > 0, "the small journal must have forced checkpoints");
    eprintln!(
        "model ({backend:?}, seed {seed}): {steps} steps, {reopens} reopens, {crashes} crash reopens, {ckpts} checkpoints while running, {held} writes held and merged ({pieces} pieces sent early), {moved} blocks relocated home, {cleaned} moved by the cleaner, {logged} logged ({placement:?})"
    );
    store.close().unwrap();
}

#[test]
fn model_on_malloc() {
    // Seed 1 logs small writes (the default), seed 2 writes them home in
    // place, seed 4 relocates them home.
    for (seed, placement) in [
        (1u64, Placement::Logged),
        (2, Placement::InPlace),
        (4, Placement::Relocated),
    ] {
        let name = format!("store-model-{seed}");
        malloc::create(&name, 48 << 20);
        run_model(
            Backend::Malloc,
            vec![PathBuf::from(&name)],
            seed,
            700,
            placement,
        );
        malloc::remove(&name);
    }
}

#[test]
fn model_on_uring_two_devices() {
    let devs: Vec<PathBuf> = (0..2)
        .map(|i| {
            let p = std::env::temp_dir().join(format!("ferrite-model-{}-{i}", std::process::id()));
            std::fs::File::create(&p)
                .unwrap()
                .set_len(24 << 20)
                .unwrap();
            p
        })
        .collect();
    run_model(Backend::Uring, devs.clone(), 3, 500, Placement::Logged);
    for p in devs {
        let _ = std::fs::remove_file(p);
    }
}
