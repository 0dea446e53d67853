//! Entry points for fuzzing the parsers of untrusted iSCSI bytes (the
//! cargo-fuzz target `iscsi_pdu` and the corpus test call these). They must
//! never panic, whatever the input.

use super::{chap, params, pdu, text};

/// Feeds `data` through PDU framing (all digest combinations), decoding,
/// and, for text-carrying PDUs, the key=value parser and the negotiation.
pub fn pdu(data: &[u8]) {
    for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
        let mut rest = data;
        // Several PDUs back to back, as they come off a socket.
        for _ in 0..8 {
            match pdu::parse(rest, hd, dd, 1 << 18) {
                Ok((p, used)) => {
                    assert!(
                        used >= pdu::BHS_LEN && used <= rest.len(),
                        "parse consumed {used} of {}",
                        rest.len()
                    );
                    if let Ok(r) = p.decode() {
                        request(&r);
                    }
                    rest = &rest[used..];
                }
                Err(e) => {
                    let _ = e.reject_reason();
                    break;
                }
            }
        }
    }
    // The bytes as login/text data directly.
    keys(data);
}

fn request(r: &pdu::Request) {
    match r {
        pdu::Request::Login(l) => keys(&l.data),
        pdu::Request::Text(t) => {
            keys(&t.data);
            let (a, b) = text::split(&t.data, 512);
            assert_eq!(a.len() + b.len(), t.data.len());
        }
        pdu::Request::ScsiCmd(c) => {
            let _ = crate::scsi::decode_lun(c.lun);
            let _ = crate::scsi::cdb::lookup(&c.cdb);
        }
        _ => {}
    }
}

fn keys(data: &[u8]) {
    let Ok(pairs) = params::parse_text(data) else {
        return;
    };
    let mut n = params::Negotiation::new();
    let limits = params::Limits::default();
    for (k, v) in &pairs {
        let _ = n.offer(k, v, &limits, false);
        if k.starts_with("CHAP_") {
            let _ = chap::decode_binary("CHAP_X", v);
        }
        if k == "CHAP_A" {
            let _ = chap::ChapServer::start(v);
        }
    }
    n.finish();
    assert!(n.session.first_burst_length <= n.session.max_burst_length);
}
