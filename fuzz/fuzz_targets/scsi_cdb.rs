//! SCSI CDB decoding and execution on a RAM volume, from arbitrary bytes
//! (see ferrite_gateway::scsi::fuzzing for the input layout).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferrite_gateway::scsi::fuzzing::cdb(data);
});
