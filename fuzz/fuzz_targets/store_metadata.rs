//! The chunk store's on-device metadata: superblocks, journal batch headers
//! and their records (applied as replay does), checkpoint slots. The entry
//! point patches the checksums in so that the parsers behind them are
//! reached.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferrite_engine::store::fuzzing::metadata(data);
});
