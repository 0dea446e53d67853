//! The SCSI block command set (SPC-4, SBC-3) on a [`BlockVolume`], apart
//! from any transport: iSCSI today, others later.
//!
//! A transport hands each command to [`Lun::execute`] with the I_T nexus it
//! arrived on, the CDB and the data-out buffer it collected, and sends back
//! the [`ScsiResult`]: status, sense data, data-in. Everything the logical
//! unit remembers between commands (unit attentions per nexus,
//! reservations, mode parameters) lives in the `Lun`; the transport tells
//! it about sessions coming and going and about task management resets.
//!
//! [`BlockVolume`]: ferrite_engine::volume::BlockVolume

pub mod cdb;
#[doc(hidden)]
pub mod fuzzing;
pub mod inquiry;
pub mod lun;
pub mod mode;
pub mod pr;
pub mod report;
pub mod sense;
mod ua;
pub mod xcopy;

pub use lun::Lun;
pub use sense::{Asc, Sense};

/// SCSI status codes (SAM-5 table 33).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Good = 0x00,
    CheckCondition = 0x02,
    ConditionMet = 0x04,
    Busy = 0x08,
    ReservationConflict = 0x18,
    TaskSetFull = 0x28,
    TaskAborted = 0x40,
}

/// What a command produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiResult {
    pub status: Status,
    /// Sense data (already in the format the initiator chose), for CHECK
    /// CONDITION.
    pub sense: Option<Vec<u8>>,
    /// Data for the initiator, already cut to the CDB's allocation length.
    pub data_in: Vec<u8>,
    /// How many data-out bytes the CDB asked for (for writes), so the
    /// transport can report an overflow or underflow residual against what
    /// the initiator actually sent.
    pub data_out_wanted: usize,
}

impl ScsiResult {
    pub fn good(data_in: Vec<u8>) -> Self {
        Self {
            status: Status::Good,
            sense: None,
            data_in,
            data_out_wanted: 0,
        }
    }

    pub fn status(status: Status) -> Self {
        Self {
            status,
            sense: None,
            data_in: Vec::new(),
            data_out_wanted: 0,
        }
    }

    pub fn check(sense: &Sense, descriptor: bool) -> Self {
        Self {
            status: Status::CheckCondition,
            sense: Some(sense.encode(descriptor)),
            data_in: Vec::new(),
            data_out_wanted: 0,
        }
    }
}

/// An I_T nexus: which initiator port reaches the logical unit through
/// which target port. Unit attentions and reservations are kept per nexus.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// SCSI initiator port name; for iSCSI "<initiator name>,i,0x<ISID>".
    pub initiator_port: String,
    /// SCSI target port name; for iSCSI "<target name>,t,0x<TPGT>".
    pub target_port: String,
    /// Relative target port identifier (VPD 0x83, READ FULL STATUS).
    pub rel_port_id: u16,
    /// Target port group (ALUA).
    pub port_group: u16,
    /// SPC protocol identifier of the transport (5 = iSCSI).
    pub protocol_id: u8,
}

impl Nexus {
    /// The nexus of an iSCSI session: initiator name + ISID, target name +
    /// portal group tag (RFC 7143 10.1).
    pub fn iscsi(initiator: &str, isid: [u8; 6], target: &str, tpgt: u16, port_group: u16) -> Self {
        let isid_hex: String = isid.iter().map(|b| format!("{b:02x}")).collect();
        Self {
            initiator_port: format!("{initiator},i,0x{isid_hex}"),
            target_port: format!("{target},t,0x{tpgt:04x}"),
            rel_port_id: tpgt,
            port_group,
            protocol_id: inquiry::PROTOCOL_ISCSI,
        }
    }

    /// A stable key naming this nexus.
    pub fn key(&self) -> String {
        format!("{}|{}", self.initiator_port, self.target_port)
    }
}

/// The 8-byte LUN field for a LUN number (SAM-5 4.7: peripheral device
/// addressing below 256, flat space addressing up to 16383).
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    if lun < 256 {
        b[1] = lun as u8;
    } else {
        b[0] = 0x40 | ((lun >> 8) as u8 & 0x3F);
        b[1] = lun as u8;
    }
    b
}

/// The LUN number of an 8-byte LUN field, `None` for addressing methods
/// this target does not use (so such a LUN is reported as not present).
pub fn decode_lun(b: [u8; 8]) -> Option<u64> {
    if b[2..].iter().any(|&x| x != 0) {
        return None;
    }
    match b[0] >> 6 {
        0 if b[0] == 0 => Some(b[1] as u64),
        1 => Some((((b[0] & 0x3F) as u64) << 8) | b[1] as u64),
        _ => None,
    }
}

/// The answer for a LUN that does not exist (SPC-4 and SAM-5): INQUIRY
/// still answers, with "no logical unit here"; REPORT LUNS is answered by
/// the transport with [`report::report_luns`]; everything else is LOGICAL
/// UNIT NOT SUPPORTED.
pub fn lun_not_present(cdb: &[u8]) -> ScsiResult {
    match cdb.first() {
        Some(&cdb::op::INQUIRY) if cdb.len() >= 6 => {
            if cdb[1] & 0x01 != 0 {
                return ScsiResult::check(&Sense::illegal(Asc::LUN_NOT_SUPPORTED), false);
            }
            let alloc = u16::from_be_bytes([cdb[3], cdb[4]]) as usize;
            let mut d = inquiry::not_present();
            d.truncate(alloc);
            ScsiResult::good(d)
        }
        Some(&cdb::op::REQUEST_SENSE) if cdb.len() >= 6 => {
            let mut d = Sense::illegal(Asc::LUN_NOT_SUPPORTED).encode(cdb[1] & 1 != 0);
            d.truncate(cdb[4] as usize);
            ScsiResult::good(d)
        }
        _ => ScsiResult::check(&Sense::illegal(Asc::LUN_NOT_SUPPORTED), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_encoding_round_trips() {
        for lun in [0u64, 1, 255, 256, 16383] {
            assert_eq!(decode_lun(encode_lun(lun)), Some(lun));
        }
        assert_eq!(decode_lun([0, 0, 0, 0, 0, 0, 0, 1]), None);
        assert_eq!(decode_lun([0x80, 0, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn nexus_names_follow_rfc7143() {
        let n = Nexus::iscsi("iqn.a", [0x23, 0xd0, 0, 0, 0, 1], "iqn.b", 1, 1);
        assert_eq!(n.initiator_port, "iqn.a,i,0x23d000000001");
        assert_eq!(n.target_port, "iqn.b,t,0x0001");
    }
}
