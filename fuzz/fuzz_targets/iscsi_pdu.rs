//! iSCSI PDU framing, digests, decoding, login/text keys and their
//! negotiation, on arbitrary bytes (see ferrite_gateway::iscsi::fuzzing).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferrite_gateway::iscsi::fuzzing::pdu(data);
});
