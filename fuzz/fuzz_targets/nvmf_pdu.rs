//! NVMe/TCP PDU parser: a host's byte stream (ICReq, command capsules with
//! SQEs, SGLs and Connect data, H2CData, termination requests) with the
//! digest and alignment settings taken from the first input byte.
#![no_main]

use ferrite_gateway::nvmf::pdu::{decode_stream, Negotiated};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let neg = Negotiated {
        hdgst: mode & 1 != 0,
        ddgst: mode & 2 != 0,
        hpda: (mode >> 2) & 0x1f,
        maxh2cdata: if mode & 0x80 != 0 { 4096 } else { 131072 },
        max_icd: 8192,
    };
    let (count, err) = decode_stream(stream, &neg);
    // A stream that failed never claims more PDUs than it has bytes for.
    assert!(count <= stream.len() / 8 + 1);
    let _ = err;
});
