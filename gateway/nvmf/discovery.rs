//! The discovery service: the discovery log page (log 0x70) lists, for the
//! asking host, every subsystem it may connect to and every listener each
//! one is reachable through, with the address the listener advertises.

use super::spec::disc;
use super::target::NvmfTarget;
use std::collections::BTreeMap;

/// Builds the whole discovery log page for `hostnqn`.
pub fn log_page(target: &NvmfTarget, hostnqn: &str) -> Vec<u8> {
    let listeners: BTreeMap<_, _> = target
        .listeners()
        .into_iter()
        .map(|(addr, adv, portid)| (addr, (adv, portid)))
        .collect();
    let mut entries: Vec<[u8; disc::ENTRY_LEN]> = Vec::new();
    for s in target.subsystems() {
        if !s.host_allowed(hostnqn) {
            continue;
        }
        for l in s.listeners() {
            let Some((adv, portid)) = listeners.get(&l) else {
                continue;
            };
            let mut e = [0u8; disc::ENTRY_LEN];
            e[0] = disc::TRTYPE_TCP;
            e[1] = if adv.adrfam.eq_ignore_ascii_case("ipv6") {
                disc::ADRFAM_IPV6
            } else {
                disc::ADRFAM_IPV4
            };
            e[2] = disc::SUBTYPE_NVME;
            e[3] = disc::TREQ_NOT_SPECIFIED;
            e[4..6].copy_from_slice(&portid.to_le_bytes());
            e[6..8].copy_from_slice(&0xffffu16.to_le_bytes()); // dynamic controllers
            let asqsz = target.transport().map(|t| t.max_aq_depth).unwrap_or(128);
            e[8..10].copy_from_slice(&asqsz.to_le_bytes());
            put_str(&mut e[32..64], &adv.trsvcid, b' ');
            put_str(&mut e[256..512], &s.nqn, 0);
            put_str(&mut e[512..768], &adv.traddr, b' ');
            // TSAS for TCP: SECTYPE 0, no security.
            entries.push(e);
        }
    }
    let mut b = vec![0u8; 1024 + entries.len() * disc::ENTRY_LEN];
    b[0..8].copy_from_slice(&target.genctr().to_le_bytes());
    b[8..16].copy_from_slice(&(entries.len() as u64).to_le_bytes());
    // RECFMT 0.
    for (i, e) in entries.iter().enumerate() {
        b[1024 + i * disc::ENTRY_LEN..1024 + (i + 1) * disc::ENTRY_LEN].copy_from_slice(e);
    }
    b
}

/// Writes an ASCII field: TRSVCID and TRADDR are space padded, NQNs NUL
/// padded (as Linux nvmet writes them; hosts trim both).
fn put_str(field: &mut [u8], s: &str, pad: u8) {
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
    field[n..].fill(pad);
}
