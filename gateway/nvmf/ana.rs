//! Asymmetric Namespace Access: every gateway that exports a volume is a
//! path to it, and tells the host how good a path it is from the volume's
//! `access_state()` (a replica on this node: optimized; served through
//! another node: non-optimized; cut off: inaccessible). Each namespace is
//! its own ANA group (its nsid), so that volumes move independently.

use super::spec::ana_state;
use super::subsystem::Subsystem;
use ferrite_engine::volume::AccessState;
use std::collections::BTreeMap;

/// The ANA log page's code for an access state.
pub fn state_code(s: AccessState) -> u8 {
    match s {
        AccessState::Optimized => ana_state::OPTIMIZED,
        AccessState::NonOptimized => ana_state::NON_OPTIMIZED,
        AccessState::Inaccessible => ana_state::INACCESSIBLE,
    }
}

/// ANACAP: optimized, non-optimized and inaccessible are reported (bits
/// 0-2), group ids do not change while a namespace is attached (bit 6).
pub const ANACAP: u8 = 0x07 | 0x40;
/// ANATT: seconds a transition may take.
pub const ANATT: u8 = 10;

/// Builds the ANA log page (log 0x0C) of this path. `groups_only` (RGO)
/// leaves out the namespace lists.
pub fn log_page(subsys: &Subsystem, chgcnt: u64, groups_only: bool) -> Vec<u8> {
    // group id -> (state, nsids)
    let mut groups: BTreeMap<u32, (u8, Vec<u32>)> = BTreeMap::new();
    for ns in subsys.namespaces() {
        let g = groups
            .entry(ns.anagrpid)
            .or_insert_with(|| (state_code(ns.volume.access_state()), Vec::new()));
        g.1.push(ns.nsid);
    }
    let mut b = Vec::with_capacity(16 + groups.len() * 40);
    b.extend_from_slice(&chgcnt.to_le_bytes());
    b.extend_from_slice(&(groups.len() as u16).to_le_bytes());
    b.extend_from_slice(&[0u8; 6]);
    for (grpid, (state, nsids)) in groups {
        b.extend_from_slice(&grpid.to_le_bytes());
        let listed: &[u32] = if groups_only { &[] } else { &nsids };
        b.extend_from_slice(&(listed.len() as u32).to_le_bytes());
        b.extend_from_slice(&chgcnt.to_le_bytes());
        b.push(state);
        b.extend_from_slice(&[0u8; 15]);
        for n in listed {
            b.extend_from_slice(&n.to_le_bytes());
        }
    }
    b
}
