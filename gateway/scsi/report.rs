//! The REPORT commands: REPORT LUNS (answered for the whole target by the
//! transport), REPORT SUPPORTED OPERATION CODES, REPORT SUPPORTED TASK
//! MANAGEMENT FUNCTIONS and REPORT TARGET PORT GROUPS (ALUA).

use super::cdb::{self, OpInfo, COMMANDS};
use super::sense::Sense;
use super::{encode_lun, ScsiResult};
use ferrite_engine::volume::AccessState;

/// REPORT LUNS for a target with `luns` (SPC-4 6.33).
pub fn report_luns(cdb: &[u8], luns: &[u64]) -> ScsiResult {
    if cdb.len() < 12 {
        return ScsiResult::check(&Sense::invalid_cdb_field(0, None), false);
    }
    let select = cdb[2];
    let alloc = cdb::be32(&cdb[6..10]) as usize;
    if alloc < 16 {
        // SPC-4: an allocation length below 16 is an invalid field.
        return ScsiResult::check(&Sense::invalid_cdb_field(6, None), false);
    }
    let list: Vec<u64> = match select {
        0x00 | 0x02 => luns.to_vec(),
        // Well-known LUNs: this target has none.
        0x01 => Vec::new(),
        _ => return ScsiResult::check(&Sense::invalid_cdb_field(2, None), false),
    };
    let mut out = Vec::with_capacity(8 + list.len() * 8);
    out.extend_from_slice(&((list.len() * 8) as u32).to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    for l in list {
        out.extend_from_slice(&encode_lun(l));
    }
    out.truncate(alloc);
    ScsiResult::good(out)
}

fn timeouts(c: &OpInfo) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[0..2].copy_from_slice(&0x0Au16.to_be_bytes());
    t[4..8].copy_from_slice(&c.timeout_s.to_be_bytes());
    t[8..12].copy_from_slice(&c.timeout_s.to_be_bytes());
    t
}

/// REPORT SUPPORTED OPERATION CODES (SPC-4 6.35).
pub fn supported_opcodes(cdb: &[u8]) -> Result<Vec<u8>, Sense> {
    let rctd = cdb[2] & 0x80 != 0;
    let options = cdb[2] & 0x07;
    let req_op = cdb[3];
    let req_sa = cdb::be16(&cdb[4..6]);
    let mut out = Vec::new();
    match options {
        0 => {
            out.extend_from_slice(&[0; 4]);
            for c in COMMANDS {
                out.push(c.op);
                out.push(0);
                out.extend_from_slice(&c.sa.unwrap_or(0).to_be_bytes());
                out.push(0);
                out.push(if rctd { 0x02 } else { 0 } | if c.sa.is_some() { 0x01 } else { 0 });
                out.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
                if rctd {
                    out.extend_from_slice(&timeouts(c));
                }
            }
            let len = (out.len() - 4) as u32;
            out[0..4].copy_from_slice(&len.to_be_bytes());
        }
        1..=3 => {
            let has_sa = cdb::has_service_action(req_op);
            let found = match options {
                // Opcode only: an opcode with service actions is asked wrong.
                1 if has_sa => return Err(Sense::invalid_cdb_field(3, None)),
                1 => cdb::find(req_op, None),
                2 if !has_sa => return Err(Sense::invalid_cdb_field(3, None)),
                2 => cdb::find(req_op, Some(req_sa)),
                _ if has_sa => cdb::find(req_op, Some(req_sa)),
                _ => {
                    if req_sa != 0 {
                        None
                    } else {
                        cdb::find(req_op, None)
                    }
                }
            };
            match found {
                Some(c) => {
                    out.push(0);
                    out.push(if rctd { 0x80 } else { 0 } | 0x03); // supported per standard
                    out.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
                    out.extend_from_slice(c.usage);
                    if rctd {
                        out.extend_from_slice(&timeouts(c));
                    }
                }
                None => out.extend_from_slice(&[0, 0x01, 0, 0]), // not supported
            }
        }
        _ => return Err(Sense::invalid_cdb_field(2, Some(2))),
    }
    let alloc = cdb::be32(&cdb[6..10]) as usize;
    out.truncate(alloc);
    Ok(out)
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 6.37): ABORT TASK,
/// ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET, I_T NEXUS RESET
/// (through iSCSI's TARGET WARM RESET semantics) and QUERY TASK is not.
pub fn supported_tmfs(cdb: &[u8]) -> Vec<u8> {
    let repd = cdb[2] & 0x80 != 0;
    // Byte 0: ATS ATSS CACAS CTSS LURS QTS TRS WAKES.
    let mut out = vec![0x80 | 0x40 | 0x10 | 0x08 | 0x02, 0, 0, 0];
    if repd {
        out.resize(16, 0);
        out[3] = 0x0C;
    }
    let alloc = cdb::be32(&cdb[6..10]) as usize;
    out.truncate(alloc);
    out
}

/// One target port group as REPORT TARGET PORT GROUPS lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortGroup {
    pub id: u16,
    pub state: AccessState,
    pub rel_ports: Vec<u16>,
}

/// REPORT TARGET PORT GROUPS (SPC-4 6.36).
pub fn target_port_groups(cdb: &[u8], groups: &[PortGroup]) -> Result<Vec<u8>, Sense> {
    let format = cdb[1] >> 5;
    let extended = match format {
        0 => false,
        1 => true,
        _ => return Err(Sense::invalid_cdb_field(1, Some(7))),
    };
    let mut out = Vec::new();
    out.extend_from_slice(&[0; 4]);
    if extended {
        out.extend_from_slice(&[0x10, 0, 0, 0]); // format 1, implicit transition time 0
    }
    for g in groups {
        let state = match g.state {
            AccessState::Optimized => 0x0,
            AccessState::NonOptimized => 0x1,
            AccessState::Inaccessible => 0x3,
        };
        out.push(state);
        // Supported states: unavailable, non-optimized, optimized.
        out.push(0x08 | 0x02 | 0x01);
        out.extend_from_slice(&g.id.to_be_bytes());
        out.push(0);
        out.push(0x02); // status: altered by implicit ALUA behaviour
        out.push(0);
        out.push(g.rel_ports.len() as u8);
        for p in &g.rel_ports {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&p.to_be_bytes());
        }
    }
    let len = (out.len() - 4) as u32;
    out[0..4].copy_from_slice(&len.to_be_bytes());
    let alloc = cdb::be32(&cdb[6..10]) as usize;
    out.truncate(alloc);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_luns_lists_and_truncates() {
        let cdb = [0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 24, 0, 0];
        let r = report_luns(&cdb, &[0, 1]);
        assert_eq!(r.data_in.len(), 24);
        assert_eq!(u32::from_be_bytes(r.data_in[0..4].try_into().unwrap()), 16);
        let short = [0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0];
        assert_eq!(
            report_luns(&short, &[0]).status,
            super::super::Status::CheckCondition
        );
    }

    #[test]
    fn opcodes_report_all_and_one() {
        let all = supported_opcodes(&[0xA3, 0x0C, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]).unwrap();
        assert_eq!(
            u32::from_be_bytes(all[0..4].try_into().unwrap()) as usize,
            COMMANDS.len() * 8
        );
        let one = supported_opcodes(&[0xA3, 0x0C, 0x01, 0x28, 0, 0, 0, 0, 1, 0, 0, 0]).unwrap();
        assert_eq!(one[1] & 7, 3);
        assert_eq!(one[4], 0x28);
        assert!(supported_opcodes(&[0xA3, 0x0C, 0x01, 0x9E, 0, 0, 0, 0, 1, 0, 0, 0]).is_err());
        let none = supported_opcodes(&[0xA3, 0x0C, 0x01, 0xE7, 0, 0, 0, 0, 1, 0, 0, 0]).unwrap();
        assert_eq!(none[1] & 7, 1);
    }
}
