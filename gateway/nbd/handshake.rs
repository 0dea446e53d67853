//! The fixed-newstyle handshake: greeting, client flags, then options until
//! the client picks an export (NBD_OPT_GO or NBD_OPT_EXPORT_NAME) or leaves.
//!
//! Every malformed or unknown option gets the protocol's error reply and the
//! haggling goes on; only what leaves no way to answer (bad magic, unknown
//! client flags, an unknown name in NBD_OPT_EXPORT_NAME) closes the
//! connection.

use super::proto::*;
use super::Wire;
use ferrite_engine::volume::BlockVolume;
use std::io;
use std::sync::Arc;
use std::time::Instant;

/// The largest request the transmission phase accepts (and advertises as
/// the maximum block size).
pub const MAX_REQUEST_LEN: u32 = 32 * 1024 * 1024;

/// Looks up exports by name during the handshake.
pub trait ExportLookup {
    fn lookup(&self, name: &str) -> Option<(String, Arc<dyn BlockVolume>)>;
    fn names(&self) -> Vec<String>;
}

/// What the client and server agreed on.
pub struct Negotiated {
    pub export: String,
    pub volume: Arc<dyn BlockVolume>,
    pub structured: bool,
}

/// Transmission flags Ferrite offers for every export.
pub fn transmission_flags(structured: bool) -> u16 {
    let mut f = TFLAG_HAS_FLAGS
        | TFLAG_SEND_FLUSH
        | TFLAG_SEND_FUA
        | TFLAG_SEND_TRIM
        | TFLAG_SEND_WRITE_ZEROES
        | TFLAG_SEND_CACHE
        | TFLAG_SEND_FAST_ZERO
        // Writes are durable on every replica before they are acknowledged,
        // so a flush on one connection covers all of them.
        | TFLAG_CAN_MULTI_CONN;
    if structured {
        f |= TFLAG_SEND_DF;
    }
    f
}

/// Runs the handshake. `Ok(None)` means the client ended it politely
/// (NBD_OPT_ABORT); an error means the connection must be closed.
pub fn handshake<W: Wire>(
    w: &W,
    exports: &dyn ExportLookup,
    deadline: Option<Instant>,
) -> io::Result<Option<Negotiated>> {
    let mut greeting = [0u8; 18];
    greeting[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    greeting[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    greeting[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&greeting)?;

    let mut cf = [0u8; 4];
    w.read_exact_until(&mut cf, deadline)?;
    let client_flags = u32::from_be_bytes(cf);
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(invalid(format!("unknown client flags {client_flags:#x}")));
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    let mut structured = false;

    loop {
        let mut hb = [0u8; 16];
        w.read_exact_until(&mut hb, deadline)?;
        let h = parse_option_header(&hb).map_err(invalid)?;
        if h.len > MAX_OPTION_LEN {
            // Too big to read into memory: say so, skip it, go on.
            discard(w, h.len as u64, deadline)?;
            w.write_all(&option_reply(
                h.option,
                REP_ERR_TOO_BIG,
                b"option payload too large",
            ))?;
            continue;
        }
        let mut data = vec![0u8; h.len as usize];
        w.read_exact_until(&mut data, deadline)?;
        match h.option {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                let Some((name, volume)) = exports.lookup(&name) else {
                    // This option has no error reply: closing is the answer.
                    return Err(invalid(format!(
                        "unknown export '{name}' requested with NBD_OPT_EXPORT_NAME"
                    )));
                };
                let info = volume.info();
                let mut b = Vec::with_capacity(10 + 124);
                b.extend_from_slice(&info.size.to_be_bytes());
                b.extend_from_slice(&transmission_flags(false).to_be_bytes());
                if !no_zeroes {
                    b.extend_from_slice(&[0u8; 124]);
                }
                w.write_all(&b)?;
                return Ok(Some(Negotiated {
                    export: name,
                    volume,
                    structured: false,
                }));
            }
            OPT_ABORT => {
                let _ = w.write_all(&option_reply(h.option, REP_ACK, &[]));
                return Ok(None);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    w.write_all(&option_reply(
                        h.option,
                        REP_ERR_INVALID,
                        b"NBD_OPT_LIST takes no data",
                    ))?;
                    continue;
                }
                let mut out = Vec::new();
                for n in exports.names() {
                    let mut d = Vec::with_capacity(4 + n.len());
                    d.extend_from_slice(&(n.len() as u32).to_be_bytes());
                    d.extend_from_slice(n.as_bytes());
                    out.extend_from_slice(&option_reply(h.option, REP_SERVER, &d));
                }
                out.extend_from_slice(&option_reply(h.option, REP_ACK, &[]));
                w.write_all(&out)?;
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    w.write_all(&option_reply(
                        h.option,
                        REP_ERR_INVALID,
                        b"NBD_OPT_STRUCTURED_REPLY takes no data",
                    ))?;
                } else {
                    structured = true;
                    w.write_all(&option_reply(h.option, REP_ACK, &[]))?;
                }
            }
            OPT_INFO | OPT_GO => {
                let req = match parse_info_request(&data) {
                    Ok(r) => r,
                    Err(why) => {
                        w.write_all(&option_reply(h.option, REP_ERR_INVALID, why.as_bytes()))?;
                        continue;
                    }
                };
                let Some((name, volume)) = exports.lookup(&req.name) else {
                    let msg = format!("no export named '{}'", req.name);
                    w.write_all(&option_reply(h.option, REP_ERR_UNKNOWN, msg.as_bytes()))?;
                    continue;
                };
                w.write_all(&info_replies(
                    h.option,
                    &name,
                    &*volume,
                    &req.requests,
                    structured,
                ))?;
                if h.option == OPT_GO {
                    return Ok(Some(Negotiated {
                        export: name,
                        volume,
                        structured,
                    }));
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                // No metadata contexts (block status) are offered yet: an
                // empty list is the valid answer once structured replies are on.
                let kind = if structured { REP_ACK } else { REP_ERR_INVALID };
                w.write_all(&option_reply(h.option, kind, &[]))?;
            }
            OPT_STARTTLS => {
                w.write_all(&option_reply(
                    h.option,
                    REP_ERR_UNSUP,
                    b"TLS is not supported",
                ))?;
            }
            other => {
                let msg = format!("option {other} is not supported");
                w.write_all(&option_reply(other, REP_ERR_UNSUP, msg.as_bytes()))?;
            }
        }
    }
}

fn info_replies(
    option: u32,
    name: &str,
    volume: &dyn BlockVolume,
    requests: &[u16],
    structured: bool,
) -> Vec<u8> {
    let info = volume.info();
    let mut out = Vec::new();
    let mut export = Vec::with_capacity(12);
    export.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    export.extend_from_slice(&info.size.to_be_bytes());
    export.extend_from_slice(&transmission_flags(structured).to_be_bytes());
    out.extend_from_slice(&option_reply(option, REP_INFO, &export));
    for &r in requests {
        match r {
            INFO_BLOCK_SIZE => {
                let mut d = Vec::with_capacity(14);
                d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                d.extend_from_slice(&info.block_size.to_be_bytes());
                d.extend_from_slice(&info.block_size.max(4096).to_be_bytes());
                d.extend_from_slice(&MAX_REQUEST_LEN.to_be_bytes());
                out.extend_from_slice(&option_reply(option, REP_INFO, &d));
            }
            INFO_NAME => {
                let mut d = INFO_NAME.to_be_bytes().to_vec();
                d.extend_from_slice(name.as_bytes());
                out.extend_from_slice(&option_reply(option, REP_INFO, &d));
            }
            INFO_DESCRIPTION => {
                let mut d = INFO_DESCRIPTION.to_be_bytes().to_vec();
                d.extend_from_slice(format!("Ferrite volume {}", info.name).as_bytes());
                out.extend_from_slice(&option_reply(option, REP_INFO, &d));
            }
            _ => {} // unknown information types are ignored, as the protocol says
        }
    }
    out.extend_from_slice(&option_reply(option, REP_ACK, &[]));
    out
}

pub(crate) fn discard<W: Wire>(w: &W, mut n: u64, deadline: Option<Instant>) -> io::Result<()> {
    let mut sink = vec![0u8; 64 * 1024];
    while n > 0 {
        let k = n.min(sink.len() as u64) as usize;
        w.read_exact_until(&mut sink[..k], deadline)?;
        n -= k as u64;
    }
    Ok(())
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}
