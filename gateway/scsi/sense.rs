//! Sense data (SPC-4 4.4): what a CHECK CONDITION carries back to the
//! initiator. Built as fixed format (0x70) by default and as descriptor
//! format (0x72) when the initiator set D_SENSE in the control mode page.

/// Sense keys (SPC-4 table 48).
pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const ABORTED_COMMAND: u8 = 0xB;
    pub const MISCOMPARE: u8 = 0xE;
}

/// Additional sense code and qualifier pairs this target reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asc(pub u8, pub u8);

impl Asc {
    pub const NO_ADDITIONAL: Asc = Asc(0x00, 0x00);
    pub const LU_NOT_READY_UNAVAILABLE: Asc = Asc(0x04, 0x03);
    pub const LU_NOT_ACCESSIBLE_TRANSITION: Asc = Asc(0x04, 0x0A);
    pub const LU_NOT_ACCESSIBLE_UNAVAILABLE: Asc = Asc(0x04, 0x0C);
    pub const WRITE_ERROR: Asc = Asc(0x0C, 0x00);
    pub const UNEXPECTED_UNSOLICITED_DATA: Asc = Asc(0x0C, 0x0C);
    pub const PROTOCOL_CRC_ERROR: Asc = Asc(0x47, 0x05);
    pub const DATA_PHASE_ERROR: Asc = Asc(0x4B, 0x00);
    pub const INVALID_TTT: Asc = Asc(0x4B, 0x01);
    pub const TOO_MUCH_WRITE_DATA: Asc = Asc(0x4B, 0x02);
    pub const DATA_OFFSET_ERROR: Asc = Asc(0x4B, 0x05);
    pub const INVALID_FIELD_IN_IU: Asc = Asc(0x0E, 0x03);
    pub const UNRECOVERED_READ_ERROR: Asc = Asc(0x11, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: Asc = Asc(0x1D, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Asc = Asc(0x1A, 0x00);
    pub const INVALID_OPCODE: Asc = Asc(0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Asc = Asc(0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Asc = Asc(0x24, 0x00);
    pub const LUN_NOT_SUPPORTED: Asc = Asc(0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Asc = Asc(0x26, 0x00);
    pub const INVALID_RELEASE_OF_PR: Asc = Asc(0x26, 0x04);
    pub const WRITE_PROTECTED: Asc = Asc(0x27, 0x00);
    pub const POWER_ON_RESET: Asc = Asc(0x29, 0x00);
    pub const POWER_ON_OCCURRED: Asc = Asc(0x29, 0x01);
    pub const BUS_RESET: Asc = Asc(0x29, 0x02);
    pub const BUS_DEVICE_RESET: Asc = Asc(0x29, 0x03);
    pub const I_T_NEXUS_LOSS: Asc = Asc(0x29, 0x07);
    pub const MODE_PARAMETERS_CHANGED: Asc = Asc(0x2A, 0x01);
    pub const RESERVATIONS_PREEMPTED: Asc = Asc(0x2A, 0x03);
    pub const RESERVATIONS_RELEASED: Asc = Asc(0x2A, 0x04);
    pub const REGISTRATIONS_PREEMPTED: Asc = Asc(0x2A, 0x05);
    pub const ASYMMETRIC_ACCESS_STATE_CHANGED: Asc = Asc(0x2A, 0x06);
    pub const CAPACITY_DATA_CHANGED: Asc = Asc(0x2A, 0x09);
    pub const COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: Asc = Asc(0x2F, 0x00);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Asc = Asc(0x39, 0x00);
    pub const REPORTED_LUNS_DATA_CHANGED: Asc = Asc(0x3F, 0x0E);
    pub const INTERNAL_TARGET_FAILURE: Asc = Asc(0x44, 0x00);
    pub const LOGICAL_BLOCK_GUARD_CHECK_FAILED: Asc = Asc(0x10, 0x01);
    pub const INSUFFICIENT_RESOURCES: Asc = Asc(0x55, 0x03);
    pub const MEDIUM_REMOVAL_PREVENTED: Asc = Asc(0x53, 0x02);
    pub const SPACE_ALLOCATION_FAILED_WRITE_PROTECT: Asc = Asc(0x27, 0x07);
}

/// Where in the CDB or parameter list the offending field is (the
/// sense-key specific "field pointer", SPC-4 4.4.2.2): lets an initiator
/// (and a person reading a trace) see exactly which byte was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// True: the field is in the CDB; false: in the parameter data.
    pub in_cdb: bool,
    pub byte: u16,
    /// The highest bit of the field, when it is narrower than a byte.
    pub bit: Option<u8>,
}

/// One sense condition, independent of the wire format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: Asc,
    /// The INFORMATION field (e.g. the first LBA that failed, the offset of
    /// the first miscompare).
    pub info: Option<u64>,
    pub field: Option<FieldPointer>,
}

impl Sense {
    pub fn new(key: u8, asc: Asc) -> Self {
        Self {
            key,
            asc,
            info: None,
            field: None,
        }
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN CDB, pointing at `byte` (and `bit`).
    pub fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Self {
        Self {
            key: key::ILLEGAL_REQUEST,
            asc: Asc::INVALID_FIELD_IN_CDB,
            info: None,
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
        }
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST, pointing at `byte`.
    pub fn invalid_param_field(byte: u16, bit: Option<u8>) -> Self {
        Self {
            key: key::ILLEGAL_REQUEST,
            asc: Asc::INVALID_FIELD_IN_PARAMETER_LIST,
            info: None,
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
        }
    }

    pub fn illegal(asc: Asc) -> Self {
        Self::new(key::ILLEGAL_REQUEST, asc)
    }

    /// Points the sense-key specific field at byte `byte` of the parameter
    /// list.
    pub fn at_param(mut self, byte: usize) -> Self {
        self.field = Some(FieldPointer {
            in_cdb: false,
            byte: byte.min(u16::MAX as usize) as u16,
            bit: None,
        });
        self
    }

    pub fn with_info(mut self, info: u64) -> Self {
        self.info = Some(info);
        self
    }

    /// Fixed format sense data (18 bytes).
    pub fn to_fixed(&self) -> Vec<u8> {
        let mut b = vec![0u8; 18];
        b[0] = 0x70;
        b[2] = self.key & 0x0f;
        if let Some(info) = self.info {
            // The fixed format has 4 bytes of INFORMATION: VALID only when
            // the value fits (SPC-4 4.4.3).
            if info <= u32::MAX as u64 {
                b[0] |= 0x80;
                b[3..7].copy_from_slice(&(info as u32).to_be_bytes());
            }
        }
        b[7] = 10;
        b[12] = self.asc.0;
        b[13] = self.asc.1;
        if let Some(sks) = self.sks_bytes() {
            b[15..18].copy_from_slice(&sks);
        }
        b
    }

    /// Descriptor format sense data (SPC-4 4.4.2): information and
    /// sense-key specific descriptors as needed.
    pub fn to_descriptor(&self) -> Vec<u8> {
        let mut b = vec![0u8; 8];
        b[0] = 0x72;
        b[1] = self.key & 0x0f;
        b[2] = self.asc.0;
        b[3] = self.asc.1;
        if let Some(info) = self.info {
            b.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            b.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(sks) = self.sks_bytes() {
            b.extend_from_slice(&[0x02, 0x06, 0x00, 0x00]);
            b.extend_from_slice(&sks);
            b.extend_from_slice(&[0x00]);
        }
        b[7] = (b.len() - 8) as u8;
        b
    }

    /// Encodes in the format the initiator chose (`descriptor` = D_SENSE).
    pub fn encode(&self, descriptor: bool) -> Vec<u8> {
        if descriptor {
            self.to_descriptor()
        } else {
            self.to_fixed()
        }
    }

    fn sks_bytes(&self) -> Option<[u8; 3]> {
        let f = self.field?;
        let mut s = [0u8; 3];
        s[0] = 0x80; // SKSV
        if f.in_cdb {
            s[0] |= 0x40; // C/D
        }
        if let Some(bit) = f.bit {
            s[0] |= 0x08 | (bit & 0x07); // BPV + bit pointer
        }
        s[1..3].copy_from_slice(&f.byte.to_be_bytes());
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_carries_field_pointer_and_info() {
        let s = Sense::invalid_cdb_field(2, Some(5));
        let b = s.to_fixed();
        assert_eq!(b[0], 0x70);
        assert_eq!(b[2], key::ILLEGAL_REQUEST);
        assert_eq!((b[12], b[13]), (0x24, 0x00));
        assert_eq!(b[15], 0x80 | 0x40 | 0x08 | 5);
        assert_eq!(u16::from_be_bytes([b[16], b[17]]), 2);

        let m = Sense::new(key::MISCOMPARE, Asc::MISCOMPARE_DURING_VERIFY).with_info(7);
        let b = m.to_fixed();
        assert_eq!(b[0], 0xF0);
        assert_eq!(u32::from_be_bytes([b[3], b[4], b[5], b[6]]), 7);
    }

    #[test]
    fn descriptor_format_lists_descriptors() {
        let s = Sense::invalid_cdb_field(1, None).with_info(0x1_0000_0000);
        let b = s.to_descriptor();
        assert_eq!(b[0], 0x72);
        assert_eq!(b[7] as usize, b.len() - 8);
        assert_eq!(&b[8..12], &[0, 0x0A, 0x80, 0]);
        assert_eq!(
            u64::from_be_bytes(b[12..20].try_into().unwrap()),
            0x1_0000_0000
        );
        assert_eq!(b[20], 0x02);
    }
}
