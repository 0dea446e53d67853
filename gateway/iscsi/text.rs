//! Text requests in full feature phase (RFC 7143 11.10): SendTargets for
//! discovery (and for the current target in normal sessions), with the
//! continuation protocol for answers longer than one PDU.

use super::params::{encode_text, parse_text};
use super::session::Session;
use super::target::IscsiTarget;
use std::net::SocketAddr;

/// The answer to one Text Request's keys.
pub fn answer(
    target: &IscsiTarget,
    session: &Session,
    peer: SocketAddr,
    local: SocketAddr,
    data: &[u8],
) -> Result<Vec<u8>, String> {
    let pairs = parse_text(data).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "SendTargets" => {
                let only = match v.as_str() {
                    "All" if session.is_discovery() => None,
                    // In a normal session: the current target only.
                    "" | "All" => match session.node() {
                        Some(n) => Some(n.name.clone()),
                        None => continue,
                    },
                    name => Some(name.to_string()),
                };
                out.extend(target.send_targets(
                    &session.initiator_name,
                    peer.ip(),
                    local,
                    only.as_deref(),
                ));
            }
            // Full feature phase renegotiation is not offered.
            _ => out.push((k, "NotUnderstood".into())),
        }
    }
    Ok(encode_text(&out))
}

/// Splits a long answer into pieces of at most `max` bytes, breaking only
/// after a NUL where possible (RFC 7143 allows any split; initiators are
/// happier with whole pairs).
pub fn split(data: &[u8], max: usize) -> (Vec<u8>, Vec<u8>) {
    if data.len() <= max {
        return (data.to_vec(), Vec::new());
    }
    let cut = data[..max]
        .iter()
        .rposition(|&b| b == 0)
        .map(|i| i + 1)
        .filter(|&i| i > 0)
        .unwrap_or(max);
    (data[..cut].to_vec(), data[cut..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_prefers_pair_boundaries() {
        let d = b"a=1\0bb=22\0ccc=333\0";
        let (a, rest) = split(d, 12);
        assert_eq!(a, b"a=1\0bb=22\0");
        assert_eq!(rest, b"ccc=333\0");
        let (a, rest) = split(b"xxxxxxxx", 3);
        assert_eq!((a.len(), rest.len()), (3, 5));
    }
}
