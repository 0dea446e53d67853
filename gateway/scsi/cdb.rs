//! CDB decoding: operation codes, the table of supported commands with
//! their CDB usage masks, and field extraction.
//!
//! The usage mask of each command (SPC-4 6.35.3, "CDB USAGE DATA") is both
//! what REPORT SUPPORTED OPERATION CODES returns and what incoming CDBs are
//! checked against: a bit set outside the mask is a field we do not
//! support (protection information, NACA, ANCHOR, ...) and is refused with
//! INVALID FIELD IN CDB pointing at that bit, instead of being ignored.

use super::sense::Sense;

pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0A;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1A;
    pub const START_STOP_UNIT: u8 = 0x1B;
    pub const PREVENT_ALLOW: u8 = 0x1E;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2A;
    pub const WRITE_VERIFY_10: u8 = 0x2E;
    pub const VERIFY_10: u8 = 0x2F;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const SYNC_CACHE_10: u8 = 0x35;
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const MODE_SENSE_10: u8 = 0x5A;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
    pub const EXTENDED_COPY: u8 = 0x83;
    pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_ATOMIC_16: u8 = 0x9C;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8A;
    pub const ORWRITE_16: u8 = 0x8B;
    pub const WRITE_VERIFY_16: u8 = 0x8E;
    pub const VERIFY_16: u8 = 0x8F;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNC_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    pub const REPORT_LUNS: u8 = 0xA0;
    pub const MAINTENANCE_IN: u8 = 0xA3;
    pub const READ_12: u8 = 0xA8;
    pub const WRITE_12: u8 = 0xAA;
    pub const WRITE_VERIFY_12: u8 = 0xAE;
    pub const VERIFY_12: u8 = 0xAF;
    pub const READ_DEFECT_DATA_12: u8 = 0xB7;
}

/// Service actions of SERVICE ACTION IN(16) and MAINTENANCE IN.
pub mod sa {
    pub const READ_CAPACITY_16: u16 = 0x10;
    pub const GET_LBA_STATUS: u16 = 0x12;
    pub const REPORT_TARGET_PORT_GROUPS: u16 = 0x0A;
    pub const REPORT_SUPPORTED_OPCODES: u16 = 0x0C;
    pub const REPORT_SUPPORTED_TMFS: u16 = 0x0D;
}

/// One supported command: its opcode, service action (in byte 1, bits 4-0,
/// for the commands that have one) and CDB usage mask (byte 0 is the opcode
/// itself, and for service-action commands byte 1 holds the action).
#[derive(Debug)]
pub struct OpInfo {
    pub op: u8,
    pub sa: Option<u16>,
    pub name: &'static str,
    pub usage: &'static [u8],
    /// Nominal command timeout in seconds (for RCTD).
    pub timeout_s: u32,
}

const FF: u8 = 0xFF;

/// Every command the logical unit implements, in opcode order.
pub static COMMANDS: &[OpInfo] = &[
    OpInfo {
        op: op::TEST_UNIT_READY,
        sa: None,
        name: "TEST UNIT READY",
        usage: &[0x00, 0, 0, 0, 0, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::REQUEST_SENSE,
        sa: None,
        name: "REQUEST SENSE",
        usage: &[0x03, 0x01, 0, 0, FF, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::READ_6,
        sa: None,
        name: "READ(6)",
        usage: &[0x08, 0x1F, FF, FF, FF, 0],
        timeout_s: 30,
    },
    OpInfo {
        op: op::WRITE_6,
        sa: None,
        name: "WRITE(6)",
        usage: &[0x0A, 0x1F, FF, FF, FF, 0],
        timeout_s: 30,
    },
    OpInfo {
        op: op::INQUIRY,
        sa: None,
        name: "INQUIRY",
        usage: &[0x12, 0x01, FF, FF, FF, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::MODE_SELECT_6,
        sa: None,
        name: "MODE SELECT(6)",
        usage: &[0x15, 0x11, 0, 0, FF, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::RESERVE_6,
        sa: None,
        name: "RESERVE(6)",
        usage: &[0x16, 0, 0, 0, 0, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::RELEASE_6,
        sa: None,
        name: "RELEASE(6)",
        usage: &[0x17, 0, 0, 0, 0, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::MODE_SENSE_6,
        sa: None,
        name: "MODE SENSE(6)",
        usage: &[0x1A, 0x08, FF, FF, FF, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::START_STOP_UNIT,
        sa: None,
        name: "START STOP UNIT",
        usage: &[0x1B, 0x01, 0, 0x0F, 0xF7, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::PREVENT_ALLOW,
        sa: None,
        name: "PREVENT ALLOW MEDIUM REMOVAL",
        usage: &[0x1E, 0, 0, 0, 0x03, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::READ_CAPACITY_10,
        sa: None,
        name: "READ CAPACITY(10)",
        usage: &[0x25, 0, FF, FF, FF, FF, 0, 0, 0x01, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::READ_10,
        sa: None,
        name: "READ(10)",
        usage: &[0x28, 0x18, FF, FF, FF, FF, 0x1F, FF, FF, 0],
        timeout_s: 30,
    },
    OpInfo {
        op: op::WRITE_10,
        sa: None,
        name: "WRITE(10)",
        usage: &[0x2A, 0x18, FF, FF, FF, FF, 0x1F, FF, FF, 0],
        timeout_s: 30,
    },
    OpInfo {
        op: op::WRITE_VERIFY_10,
        sa: None,
        name: "WRITE AND VERIFY(10)",
        usage: &[0x2E, 0x12, FF, FF, FF, FF, 0x1F, FF, FF, 0],
        timeout_s: 30,
    },
    OpInfo {
        op: op::VERIFY_10,
        sa: None,
        name: "VERIFY(10)",
        usage: &[0x2F, 0x16, FF, FF, FF, FF, 0x1F, FF, FF, 0],
        timeout_s: 30,
    },
    OpInfo {
        op: op::PRE_FETCH_10,
        sa: None,
        name: "PRE-FETCH(10)",
        usage: &[0x34, 0x02, FF, FF, FF, FF, 0x1F, FF, FF, 0],
        timeout_s: 30,
    },
    OpInfo {
        op: op::SYNC_CACHE_10,
        sa: None,
        name: "SYNCHRONIZE CACHE(10)",
        usage: &[0x35, 0x06, FF, FF, FF, FF, 0x1F, FF, FF, 0],
        timeout_s: 30,
    },
    OpInfo {
        op: op::READ_DEFECT_DATA_10,
        sa: None,
        name: "READ DEFECT DATA(10)",
        usage: &[0x37, 0, 0x1F, 0, 0, 0, 0, FF, FF, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::WRITE_SAME_10,
        sa: None,
        name: "WRITE SAME(10)",
        usage: &[0x41, 0x08, FF, FF, FF, FF, 0x1F, FF, FF, 0],
        timeout_s: 60,
    },
    OpInfo {
        op: op::UNMAP,
        sa: None,
        name: "UNMAP",
        usage: &[0x42, 0, 0, 0, 0, 0, 0x1F, FF, FF, 0],
        timeout_s: 60,
    },
    OpInfo {
        op: op::MODE_SELECT_10,
        sa: None,
        name: "MODE SELECT(10)",
        usage: &[0x55, 0x11, 0, 0, 0, 0, 0, FF, FF, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::MODE_SENSE_10,
        sa: None,
        name: "MODE SENSE(10)",
        usage: &[0x5A, 0x18, FF, FF, 0, 0, 0, FF, FF, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::PERSISTENT_RESERVE_IN,
        sa: Some(0x00),
        name: "PERSISTENT RESERVE IN READ KEYS",
        usage: &[0x5E, 0x00, 0, 0, 0, 0, 0, FF, FF, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::PERSISTENT_RESERVE_IN,
        sa: Some(0x01),
        name: "PERSISTENT RESERVE IN READ RESERVATION",
        usage: &[0x5E, 0x01, 0, 0, 0, 0, 0, FF, FF, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::PERSISTENT_RESERVE_IN,
        sa: Some(0x02),
        name: "PERSISTENT RESERVE IN REPORT CAPABILITIES",
        usage: &[0x5E, 0x02, 0, 0, 0, 0, 0, FF, FF, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::PERSISTENT_RESERVE_IN,
        sa: Some(0x03),
        name: "PERSISTENT RESERVE IN READ FULL STATUS",
        usage: &[0x5E, 0x03, 0, 0, 0, 0, 0, FF, FF, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::PERSISTENT_RESERVE_OUT,
        sa: Some(0x00),
        name: "PERSISTENT RESERVE OUT REGISTER",
        usage: &[0x5F, 0x00, FF, 0, 0, FF, FF, FF, FF, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::PERSISTENT_RESERVE_OUT,
        sa: Some(0x01),
        name: "PERSISTENT RESERVE OUT RESERVE",
        usage: &[0x5F, 0x01, FF, 0, 0, FF, FF, FF, FF, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::PERSISTENT_RESERVE_OUT,
        sa: Some(0x02),
        name: "PERSISTENT RESERVE OUT RELEASE",
        usage: &[0x5F, 0x02, FF, 0, 0, FF, FF, FF, FF, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::PERSISTENT_RESERVE_OUT,
        sa: Some(0x03),
        name: "PERSISTENT RESERVE OUT CLEAR",
        usage: &[0x5F, 0x03, FF, 0, 0, FF, FF, FF, FF, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::PERSISTENT_RESERVE_OUT,
        sa: Some(0x04),
        name: "PERSISTENT RESERVE OUT PREEMPT",
        usage: &[0x5F, 0x04, FF, 0, 0, FF, FF, FF, FF, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::PERSISTENT_RESERVE_OUT,
        sa: Some(0x05),
        name: "PERSISTENT RESERVE OUT PREEMPT AND ABORT",
        usage: &[0x5F, 0x05, FF, 0, 0, FF, FF, FF, FF, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::PERSISTENT_RESERVE_OUT,
        sa: Some(0x06),
        name: "PERSISTENT RESERVE OUT REGISTER AND IGNORE EXISTING KEY",
        usage: &[0x5F, 0x06, FF, 0, 0, FF, FF, FF, FF, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::EXTENDED_COPY,
        sa: Some(0x00),
        name: "EXTENDED COPY(LID1)",
        usage: &[0x83, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, 0],
        timeout_s: 60,
    },
    OpInfo {
        op: op::RECEIVE_COPY_RESULTS,
        sa: Some(0x00),
        name: "RECEIVE COPY RESULTS COPY STATUS",
        usage: &[0x84, 0x00, FF, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::RECEIVE_COPY_RESULTS,
        sa: Some(0x03),
        name: "RECEIVE COPY RESULTS OPERATING PARAMETERS",
        usage: &[0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::READ_16,
        sa: None,
        name: "READ(16)",
        usage: &[
            0x88, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, 0,
        ],
        timeout_s: 30,
    },
    OpInfo {
        op: op::COMPARE_AND_WRITE,
        sa: None,
        name: "COMPARE AND WRITE",
        usage: &[
            0x89, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0, 0, FF, 0x1F, 0,
        ],
        timeout_s: 30,
    },
    OpInfo {
        op: op::WRITE_16,
        sa: None,
        name: "WRITE(16)",
        usage: &[
            0x8A, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, 0,
        ],
        timeout_s: 30,
    },
    OpInfo {
        op: op::ORWRITE_16,
        sa: None,
        name: "ORWRITE(16)",
        usage: &[
            0x8B, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, 0,
        ],
        timeout_s: 30,
    },
    OpInfo {
        op: op::WRITE_VERIFY_16,
        sa: None,
        name: "WRITE AND VERIFY(16)",
        usage: &[
            0x8E, 0x12, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, 0,
        ],
        timeout_s: 30,
    },
    OpInfo {
        op: op::VERIFY_16,
        sa: None,
        name: "VERIFY(16)",
        usage: &[
            0x8F, 0x16, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, 0,
        ],
        timeout_s: 30,
    },
    OpInfo {
        op: op::PRE_FETCH_16,
        sa: None,
        name: "PRE-FETCH(16)",
        usage: &[
            0x90, 0x02, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, 0,
        ],
        timeout_s: 30,
    },
    OpInfo {
        op: op::SYNC_CACHE_16,
        sa: None,
        name: "SYNCHRONIZE CACHE(16)",
        usage: &[
            0x91, 0x06, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, 0,
        ],
        timeout_s: 30,
    },
    OpInfo {
        op: op::WRITE_SAME_16,
        sa: None,
        name: "WRITE SAME(16)",
        usage: &[
            0x93, 0x09, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, 0,
        ],
        timeout_s: 60,
    },
    OpInfo {
        op: op::WRITE_ATOMIC_16,
        sa: None,
        name: "WRITE ATOMIC(16)",
        usage: &[
            0x9C, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, 0,
        ],
        timeout_s: 30,
    },
    OpInfo {
        op: op::SERVICE_ACTION_IN_16,
        sa: Some(sa::READ_CAPACITY_16),
        name: "READ CAPACITY(16)",
        usage: &[
            0x9E, 0x10, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x01, 0,
        ],
        timeout_s: 1,
    },
    OpInfo {
        op: op::SERVICE_ACTION_IN_16,
        sa: Some(sa::GET_LBA_STATUS),
        name: "GET LBA STATUS",
        usage: &[
            0x9E, 0x12, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0,
        ],
        timeout_s: 1,
    },
    OpInfo {
        op: op::REPORT_LUNS,
        sa: None,
        name: "REPORT LUNS",
        usage: &[0xA0, 0, FF, 0, 0, 0, FF, FF, FF, FF, 0, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::MAINTENANCE_IN,
        sa: Some(sa::REPORT_TARGET_PORT_GROUPS),
        name: "REPORT TARGET PORT GROUPS",
        usage: &[0xA3, 0xEA, 0, 0, 0, 0, FF, FF, FF, FF, 0, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::MAINTENANCE_IN,
        sa: Some(sa::REPORT_SUPPORTED_OPCODES),
        name: "REPORT SUPPORTED OPERATION CODES",
        usage: &[0xA3, 0x0C, 0x87, FF, FF, FF, FF, FF, FF, FF, 0, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::MAINTENANCE_IN,
        sa: Some(sa::REPORT_SUPPORTED_TMFS),
        name: "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS",
        usage: &[0xA3, 0x0D, 0x80, 0, 0, 0, FF, FF, FF, FF, 0, 0],
        timeout_s: 1,
    },
    OpInfo {
        op: op::READ_12,
        sa: None,
        name: "READ(12)",
        usage: &[0xA8, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, 0],
        timeout_s: 30,
    },
    OpInfo {
        op: op::WRITE_12,
        sa: None,
        name: "WRITE(12)",
        usage: &[0xAA, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, 0],
        timeout_s: 30,
    },
    OpInfo {
        op: op::WRITE_VERIFY_12,
        sa: None,
        name: "WRITE AND VERIFY(12)",
        usage: &[0xAE, 0x12, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, 0],
        timeout_s: 30,
    },
    OpInfo {
        op: op::VERIFY_12,
        sa: None,
        name: "VERIFY(12)",
        usage: &[0xAF, 0x16, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, 0],
        timeout_s: 30,
    },
    OpInfo {
        op: op::READ_DEFECT_DATA_12,
        sa: None,
        name: "READ DEFECT DATA(12)",
        usage: &[0xB7, 0x1F, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
        timeout_s: 1,
    },
];

/// Whether the opcode has a service action field in byte 1.
pub fn has_service_action(opcode: u8) -> bool {
    matches!(
        opcode,
        op::PERSISTENT_RESERVE_IN
            | op::PERSISTENT_RESERVE_OUT
            | op::SERVICE_ACTION_IN_16
            | op::MAINTENANCE_IN
            | op::EXTENDED_COPY
            | op::RECEIVE_COPY_RESULTS
    )
}

/// The service action of a CDB (byte 1, bits 4-0).
pub fn service_action(cdb: &[u8]) -> u16 {
    (cdb.get(1).copied().unwrap_or(0) & 0x1F) as u16
}

/// Finds the table entry for a CDB: `Err(byte)` names the field that is
/// not supported (0: the opcode, 1: the service action).
pub fn lookup(cdb: &[u8]) -> Result<&'static OpInfo, u16> {
    let opcode = *cdb.first().ok_or(0u16)?;
    if has_service_action(opcode) {
        let sa = service_action(cdb);
        let mut any = false;
        for c in COMMANDS.iter().filter(|c| c.op == opcode) {
            any = true;
            if c.sa == Some(sa) {
                return Ok(c);
            }
        }
        return Err(if any { 1 } else { 0 });
    }
    COMMANDS.iter().find(|c| c.op == opcode).ok_or(0)
}

/// Finds a command by opcode and service action (for REPORT SUPPORTED
/// OPERATION CODES).
pub fn find(opcode: u8, sa: Option<u16>) -> Option<&'static OpInfo> {
    COMMANDS
        .iter()
        .find(|c| c.op == opcode && (sa.is_none() || c.sa == sa))
}

/// Checks that `cdb` is long enough and sets no bit outside the usage mask.
/// The service action bits of byte 1 are part of the mask by construction.
pub fn check_usage(info: &OpInfo, cdb: &[u8]) -> Result<(), Sense> {
    if cdb.len() < info.usage.len() {
        // A transport gave us a short CDB: the length itself is invalid.
        return Err(Sense::invalid_cdb_field(0, None));
    }
    for (i, (&b, &m)) in cdb.iter().zip(info.usage.iter()).enumerate().skip(1) {
        let mut allowed = m;
        if i == 1 && info.sa.is_some() {
            allowed |= 0x1F;
        }
        let bad = b & !allowed;
        if bad != 0 {
            let bit = 7 - bad.leading_zeros() as u8;
            return Err(Sense::invalid_cdb_field(i as u16, Some(bit)));
        }
    }
    Ok(())
}

pub fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

pub fn be24(b: &[u8]) -> u32 {
    u32::from_be_bytes([0, b[0], b[1], b[2]])
}

pub fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

pub fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// LBA and transfer length of the block commands (READ/WRITE/VERIFY/...
/// in their 6, 10, 12 and 16 byte forms). `None` for other opcodes.
pub fn lba_and_len(cdb: &[u8]) -> Option<(u64, u32)> {
    let op = *cdb.first()?;
    match op >> 5 {
        // 6-byte: 21-bit LBA, 8-bit length where 0 means 256 for READ/WRITE(6).
        0 if cdb.len() >= 6 => {
            let lba = (be24(&cdb[1..4]) & 0x1F_FFFF) as u64;
            let len = if cdb[4] == 0 { 256 } else { cdb[4] as u32 };
            Some((lba, len))
        }
        1 | 2 if cdb.len() >= 10 => Some((be32(&cdb[2..6]) as u64, be16(&cdb[7..9]) as u32)),
        5 if cdb.len() >= 12 => Some((be32(&cdb[2..6]) as u64, be32(&cdb[6..10]))),
        // 16-byte commands that are not block transfers.
        4 if matches!(op, 0x80..=0x87 | 0x9E | 0x9F) => None,
        4 if cdb.len() >= 16 => {
            if op == op::COMPARE_AND_WRITE {
                Some((be64(&cdb[2..10]), cdb[13] as u32))
            } else if op == op::WRITE_ATOMIC_16 {
                Some((be64(&cdb[2..10]), be16(&cdb[12..14]) as u32))
            } else {
                Some((be64(&cdb[2..10]), be32(&cdb[10..14])))
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_masks_cover_the_opcode_and_have_cdb_lengths() {
        for c in COMMANDS {
            assert_eq!(c.usage[0], c.op, "{}", c.name);
            let want = match c.op >> 5 {
                0 => 6,
                1 | 2 => 10,
                4 => 16,
                5 => 12,
                _ => unreachable!(),
            };
            assert_eq!(c.usage.len(), want, "{}", c.name);
            if let Some(sa) = c.sa {
                assert_eq!(c.usage[1] & 0x1F, sa as u8, "{}", c.name);
            }
        }
    }

    #[test]
    fn reserved_bits_are_refused_with_a_pointer() {
        let info = lookup(&[op::READ_10]).unwrap();
        let mut cdb = [0u8; 10];
        cdb[0] = op::READ_10;
        cdb[1] = 0x18; // DPO FUA: fine
        assert!(check_usage(info, &cdb).is_ok());
        cdb[1] = 0x20; // RDPROTECT=1: unsupported
        let s = check_usage(info, &cdb).unwrap_err();
        assert_eq!(s.field.unwrap().byte, 1);
        assert_eq!(s.field.unwrap().bit, Some(5));
        cdb[1] = 0;
        cdb[9] = 0x04; // NACA
        assert_eq!(check_usage(info, &cdb).unwrap_err().field.unwrap().byte, 9);
    }

    #[test]
    fn decodes_lba_and_length() {
        assert_eq!(
            lba_and_len(&[0x08, 0x01, 0x02, 0x03, 0, 0]),
            Some((0x10203, 256))
        );
        let mut c16 = [0u8; 16];
        c16[0] = op::READ_16;
        c16[9] = 5;
        c16[13] = 2;
        assert_eq!(lba_and_len(&c16), Some((5, 2)));
        assert!(lookup(&[0xFF]).is_err());
        assert_eq!(lookup(&[op::MAINTENANCE_IN, 0x1F]).unwrap_err(), 1);
    }
}
