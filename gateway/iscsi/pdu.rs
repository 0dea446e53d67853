//! iSCSI PDUs (RFC 7143 11): the 48-byte Basic Header Segment, framing with
//! optional digests, decoding of what initiators send and building of what
//! the target sends.
//!
//! Parsing is pure (bytes in, typed request or error out) so that the
//! fuzzer and the unit tests drive exactly what the connection uses.

use std::fmt;

pub const BHS_LEN: usize = 48;
/// Reserved tag value: "no task" / "no transfer".
pub const RESERVED_TAG: u32 = 0xFFFF_FFFF;

/// Opcodes (RFC 7143 11.2.1.2).
pub mod opcode {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_CMD: u8 = 0x01;
    pub const TMF_REQ: u8 = 0x02;
    pub const LOGIN_REQ: u8 = 0x03;
    pub const TEXT_REQ: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT_REQ: u8 = 0x06;
    pub const SNACK: u8 = 0x10;
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RESP: u8 = 0x21;
    pub const TMF_RESP: u8 = 0x22;
    pub const LOGIN_RESP: u8 = 0x23;
    pub const TEXT_RESP: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RESP: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC_MSG: u8 = 0x32;
    pub const REJECT: u8 = 0x3F;
}

/// Reject reasons (RFC 7143 11.17.1).
pub mod reject {
    pub const DATA_DIGEST: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const OUT_OF_RESOURCES: u8 = 0x0A;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0C;
}

/// Why bytes are not a PDU we can act on. Each carries what a Reject (or
/// the log) needs to say why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    #[error("truncated PDU: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("data segment of {len} bytes exceeds the negotiated maximum of {max}")]
    DataTooLong { len: usize, max: usize },
    #[error("header digest mismatch (got {got:#010x}, computed {want:#010x})")]
    HeaderDigest { got: u32, want: u32 },
    #[error("data digest mismatch (got {got:#010x}, computed {want:#010x})")]
    DataDigest { got: u32, want: u32 },
    #[error("opcode {0:#04x} is not an initiator opcode this target supports")]
    UnknownOpcode(u8),
    #[error("invalid field in {opcode}: {what}")]
    InvalidField { opcode: &'static str, what: String },
}

impl PduError {
    /// The Reject reason for this error.
    pub fn reject_reason(&self) -> u8 {
        match self {
            PduError::DataDigest { .. } => reject::DATA_DIGEST,
            PduError::UnknownOpcode(_) => reject::NOT_SUPPORTED,
            PduError::InvalidField { .. } => reject::INVALID_PDU_FIELD,
            _ => reject::PROTOCOL_ERROR,
        }
    }
}

/// A raw PDU: header, additional header segments, data segment (without
/// padding and digests).
#[derive(Clone, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Vec<u8>,
    pub data: Vec<u8>,
}

impl fmt::Debug for Pdu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Pdu(op={:#04x}, itt={:#010x}, ahs={}, data={})",
            self.opcode(),
            self.itt(),
            self.ahs.len(),
            self.data.len()
        )
    }
}

pub fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

pub fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// What follows a BHS on the wire, from the BHS alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framing {
    pub ahs_len: usize,
    pub data_len: usize,
    /// Bytes after the BHS: AHS, header digest, data, padding, data digest.
    pub rest: usize,
}

/// Computes the framing of a PDU from its BHS, refusing data segments
/// longer than `max_data` (what we declared as MaxRecvDataSegmentLength).
pub fn framing(
    bhs: &[u8; BHS_LEN],
    header_digest: bool,
    data_digest: bool,
    max_data: usize,
) -> Result<Framing, PduError> {
    let ahs_len = bhs[4] as usize * 4;
    let data_len = (bhs[5] as usize) << 16 | (bhs[6] as usize) << 8 | bhs[7] as usize;
    if data_len > max_data {
        return Err(PduError::DataTooLong {
            len: data_len,
            max: max_data,
        });
    }
    let mut rest = ahs_len + if header_digest { 4 } else { 0 };
    if data_len > 0 {
        rest += data_len + pad4(data_len) + if data_digest { 4 } else { 0 };
    }
    Ok(Framing {
        ahs_len,
        data_len,
        rest,
    })
}

/// Splits `rest` (the bytes after the BHS, `framing.rest` long) into a PDU,
/// checking digests.
pub fn assemble(
    bhs: [u8; BHS_LEN],
    rest: &[u8],
    f: Framing,
    header_digest: bool,
    data_digest: bool,
) -> Result<Pdu, PduError> {
    if rest.len() < f.rest {
        return Err(PduError::Truncated {
            need: f.rest,
            have: rest.len(),
        });
    }
    let ahs = rest[..f.ahs_len].to_vec();
    let mut at = f.ahs_len;
    if header_digest {
        let got = u32::from_le_bytes(rest[at..at + 4].try_into().expect("4 bytes"));
        let want = crc32c::crc32c_append(crc32c::crc32c(&bhs), &ahs);
        if got != want {
            return Err(PduError::HeaderDigest { got, want });
        }
        at += 4;
    }
    let mut data = Vec::new();
    if f.data_len > 0 {
        let padded = f.data_len + pad4(f.data_len);
        data = rest[at..at + f.data_len].to_vec();
        if data_digest {
            let got = u32::from_le_bytes(
                rest[at + padded..at + padded + 4]
                    .try_into()
                    .expect("4 bytes"),
            );
            let want = crc32c::crc32c(&rest[at..at + padded]);
            if got != want {
                return Err(PduError::DataDigest { got, want });
            }
        }
    }
    Ok(Pdu { bhs, ahs, data })
}

/// Parses one whole PDU from the front of `buf`; returns it and the bytes
/// it took.
pub fn parse(
    buf: &[u8],
    header_digest: bool,
    data_digest: bool,
    max_data: usize,
) -> Result<(Pdu, usize), PduError> {
    if buf.len() < BHS_LEN {
        return Err(PduError::Truncated {
            need: BHS_LEN,
            have: buf.len(),
        });
    }
    let bhs: [u8; BHS_LEN] = buf[..BHS_LEN].try_into().expect("48 bytes");
    let f = framing(&bhs, header_digest, data_digest, max_data)?;
    let pdu = assemble(bhs, &buf[BHS_LEN..], f, header_digest, data_digest)?;
    Ok((pdu, BHS_LEN + f.rest))
}

impl Pdu {
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3F
    }
    pub fn immediate(&self) -> bool {
        self.bhs[0] & 0x40 != 0
    }
    pub fn itt(&self) -> u32 {
        be32(&self.bhs[16..20])
    }
    pub fn lun(&self) -> [u8; 8] {
        self.bhs[8..16].try_into().expect("8 bytes")
    }

    /// Decodes an initiator PDU into a typed request.
    pub fn decode(&self) -> Result<Request, PduError> {
        let b = &self.bhs;
        let f = b[1] & 0x80 != 0;
        Ok(match self.opcode() {
            opcode::NOP_OUT => Request::NopOut(NopOut {
                immediate: self.immediate(),
                lun: self.lun(),
                itt: self.itt(),
                ttt: be32(&b[20..24]),
                cmdsn: be32(&b[24..28]),
                data: self.data.clone(),
            }),
            opcode::SCSI_CMD => {
                let read = b[1] & 0x40 != 0;
                let write = b[1] & 0x20 != 0;
                let mut cdb = b[32..48].to_vec();
                // An extended CDB AHS (type 1) carries the bytes past 16.
                let mut at = 0;
                while at + 4 <= self.ahs.len() {
                    let len = be16(&self.ahs[at..at + 2]) as usize;
                    let ty = self.ahs[at + 2];
                    let end = at + 4 + len.saturating_sub(1);
                    if end > self.ahs.len() || len == 0 {
                        return Err(PduError::InvalidField {
                            opcode: "SCSI Command",
                            what: "AHS length".into(),
                        });
                    }
                    if ty == 1 {
                        cdb.extend_from_slice(&self.ahs[at + 4..end]);
                    }
                    at = (end + 3) & !3;
                }
                let edtl = be32(&b[20..24]);
                if !write && !self.data.is_empty() {
                    return Err(PduError::InvalidField {
                        opcode: "SCSI Command",
                        what: "data segment without the W bit".into(),
                    });
                }
                Request::ScsiCmd(ScsiCmd {
                    immediate: self.immediate(),
                    final_: f,
                    read,
                    write,
                    attr: b[1] & 0x07,
                    lun: self.lun(),
                    itt: self.itt(),
                    edtl,
                    cmdsn: be32(&b[24..28]),
                    cdb,
                    data: self.data.clone(),
                })
            }
            opcode::TMF_REQ => Request::Tmf(TmfReq {
                immediate: self.immediate(),
                function: b[1] & 0x7F,
                lun: self.lun(),
                itt: self.itt(),
                ref_itt: be32(&b[20..24]),
                cmdsn: be32(&b[24..28]),
                ref_cmdsn: be32(&b[32..36]),
            }),
            opcode::LOGIN_REQ => Request::Login(LoginReq {
                transit: f,
                cont: b[1] & 0x40 != 0,
                csg: (b[1] >> 2) & 0x03,
                nsg: b[1] & 0x03,
                version_max: b[2],
                version_min: b[3],
                isid: b[8..14].try_into().expect("6 bytes"),
                tsih: be16(&b[14..16]),
                itt: self.itt(),
                cid: be16(&b[20..22]),
                cmdsn: be32(&b[24..28]),
                exp_statsn: be32(&b[28..32]),
                data: self.data.clone(),
            }),
            opcode::TEXT_REQ => Request::Text(TextReq {
                immediate: self.immediate(),
                final_: f,
                cont: b[1] & 0x40 != 0,
                itt: self.itt(),
                ttt: be32(&b[20..24]),
                cmdsn: be32(&b[24..28]),
                data: self.data.clone(),
            }),
            opcode::DATA_OUT => Request::DataOut(DataOut {
                final_: f,
                itt: self.itt(),
                ttt: be32(&b[20..24]),
                datasn: be32(&b[36..40]),
                offset: be32(&b[40..44]),
                data: self.data.clone(),
            }),
            opcode::LOGOUT_REQ => Request::Logout(LogoutReq {
                immediate: self.immediate(),
                reason: b[1] & 0x7F,
                itt: self.itt(),
                cid: be16(&b[20..22]),
                cmdsn: be32(&b[24..28]),
            }),
            opcode::SNACK => Request::Snack,
            op => return Err(PduError::UnknownOpcode(op)),
        })
    }
}

/// What an initiator asked, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    NopOut(NopOut),
    ScsiCmd(ScsiCmd),
    Tmf(TmfReq),
    Login(LoginReq),
    Text(TextReq),
    DataOut(DataOut),
    Logout(LogoutReq),
    Snack,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub cmdsn: u32,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiCmd {
    pub immediate: bool,
    pub final_: bool,
    pub read: bool,
    pub write: bool,
    pub attr: u8,
    pub lun: [u8; 8],
    pub itt: u32,
    pub edtl: u32,
    pub cmdsn: u32,
    pub cdb: Vec<u8>,
    /// Immediate data.
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmfReq {
    pub immediate: bool,
    pub function: u8,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ref_itt: u32,
    pub cmdsn: u32,
    pub ref_cmdsn: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginReq {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextReq {
    pub immediate: bool,
    pub final_: bool,
    pub cont: bool,
    pub itt: u32,
    pub ttt: u32,
    pub cmdsn: u32,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOut {
    pub final_: bool,
    pub itt: u32,
    pub ttt: u32,
    pub datasn: u32,
    pub offset: u32,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutReq {
    pub immediate: bool,
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmdsn: u32,
}

/// A target PDU being built. The connection fills in StatSN, ExpCmdSN and
/// MaxCmdSN (bytes 24..36) when it sends, under its writer lock, so they
/// go out in order.
#[derive(Clone)]
pub struct OutPdu {
    pub bhs: [u8; BHS_LEN],
    /// Whether sending this consumes a StatSN (status-bearing PDUs).
    pub takes_statsn: bool,
    /// Whether bytes 24..36 carry StatSN/ExpCmdSN/MaxCmdSN (all but
    /// Data-In without status, where 24..28 is reserved).
    pub has_sn: bool,
}

impl OutPdu {
    pub fn new(op: u8) -> Self {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = op;
        Self {
            bhs,
            takes_statsn: false,
            has_sn: true,
        }
    }

    pub fn set_u32(&mut self, at: usize, v: u32) -> &mut Self {
        self.bhs[at..at + 4].copy_from_slice(&v.to_be_bytes());
        self
    }

    pub fn set_u16(&mut self, at: usize, v: u16) -> &mut Self {
        self.bhs[at..at + 2].copy_from_slice(&v.to_be_bytes());
        self
    }

    pub fn set_data_len(&mut self, n: usize) -> &mut Self {
        self.bhs[5] = (n >> 16) as u8;
        self.bhs[6] = (n >> 8) as u8;
        self.bhs[7] = n as u8;
        self
    }

    pub fn set_lun(&mut self, lun: [u8; 8]) -> &mut Self {
        self.bhs[8..16].copy_from_slice(&lun);
        self
    }

    pub fn itt(&mut self, itt: u32) -> &mut Self {
        self.set_u32(16, itt)
    }

    /// Fills in the sequence numbers.
    pub fn stamp(&mut self, statsn: u32, exp_cmdsn: u32, max_cmdsn: u32) {
        if self.has_sn {
            self.set_u32(24, statsn);
        }
        self.set_u32(28, exp_cmdsn);
        self.set_u32(32, max_cmdsn);
    }
}

/// SCSI Response (RFC 7143 11.4).
pub fn scsi_response(
    itt: u32,
    status: u8,
    residual: Residual,
    sense_len: usize,
    exp_datasn: u32,
) -> OutPdu {
    let mut p = OutPdu::new(opcode::SCSI_RESP);
    p.bhs[1] = 0x80 | residual.flags_response();
    p.bhs[2] = 0x00; // command completed at target
    p.bhs[3] = status;
    p.itt(itt);
    p.set_u32(36, exp_datasn);
    p.set_u32(44, residual.count());
    p.set_data_len(if sense_len > 0 { sense_len + 2 } else { 0 });
    p.takes_statsn = true;
    p
}

/// Residual of a command: the expected data transfer length against what
/// the command actually moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residual {
    None,
    Underflow(u32),
    Overflow(u32),
}

impl Residual {
    /// `wanted` bytes by the command, `expected` by the initiator.
    pub fn of(wanted: usize, expected: u32) -> Self {
        let e = expected as usize;
        if wanted > e {
            Residual::Overflow((wanted - e).min(u32::MAX as usize) as u32)
        } else if wanted < e {
            Residual::Underflow((e - wanted) as u32)
        } else {
            Residual::None
        }
    }
    fn flags_response(self) -> u8 {
        match self {
            Residual::None => 0,
            Residual::Overflow(_) => 0x04,
            Residual::Underflow(_) => 0x02,
        }
    }
    pub fn count(self) -> u32 {
        match self {
            Residual::None => 0,
            Residual::Overflow(n) | Residual::Underflow(n) => n,
        }
    }
}

/// SCSI Data-In (RFC 7143 11.7). With `status` it carries the command's
/// final status too (phase collapse).
pub fn data_in(
    itt: u32,
    lun: [u8; 8],
    datasn: u32,
    offset: u32,
    len: usize,
    final_: bool,
    status: Option<(u8, Residual)>,
) -> OutPdu {
    let mut p = OutPdu::new(opcode::DATA_IN);
    p.bhs[1] = if final_ { 0x80 } else { 0 };
    p.set_lun(lun);
    p.itt(itt);
    p.set_u32(20, RESERVED_TAG);
    p.set_u32(36, datasn);
    p.set_u32(40, offset);
    p.set_data_len(len);
    match status {
        Some((st, res)) => {
            p.bhs[1] |= 0x01 | res.flags_response();
            p.bhs[3] = st;
            p.set_u32(44, res.count());
            p.takes_statsn = true;
        }
        None => p.has_sn = false,
    }
    p
}

/// Ready To Transfer (RFC 7143 11.8).
pub fn r2t(itt: u32, lun: [u8; 8], ttt: u32, r2tsn: u32, offset: u32, len: u32) -> OutPdu {
    let mut p = OutPdu::new(opcode::R2T);
    p.bhs[1] = 0x80;
    p.set_lun(lun);
    p.itt(itt);
    p.set_u32(20, ttt);
    p.set_u32(36, r2tsn);
    p.set_u32(40, offset);
    p.set_u32(44, len);
    p
}

/// NOP-In (RFC 7143 11.19): an answer to a NOP-Out (`itt` set) or a ping
/// of our own (`itt` reserved, `ttt` set).
pub fn nop_in(itt: u32, ttt: u32, lun: [u8; 8], data_len: usize) -> OutPdu {
    let mut p = OutPdu::new(opcode::NOP_IN);
    p.bhs[1] = 0x80;
    p.set_lun(lun);
    p.itt(itt);
    p.set_u32(20, ttt);
    p.set_data_len(data_len);
    // Only an answer consumes a StatSN; our own ping does not.
    p.takes_statsn = itt != RESERVED_TAG;
    p
}

/// Task Management Function Response (RFC 7143 11.6).
pub fn tmf_response(itt: u32, response: u8) -> OutPdu {
    let mut p = OutPdu::new(opcode::TMF_RESP);
    p.bhs[1] = 0x80;
    p.bhs[2] = response;
    p.itt(itt);
    p.takes_statsn = true;
    p
}

/// Login Response (RFC 7143 11.13).
#[allow(clippy::too_many_arguments)]
pub fn login_response(
    transit: bool,
    csg: u8,
    nsg: u8,
    isid: [u8; 6],
    tsih: u16,
    itt: u32,
    class: u8,
    detail: u8,
    data_len: usize,
) -> OutPdu {
    let mut p = OutPdu::new(opcode::LOGIN_RESP);
    p.bhs[1] = if transit { 0x80 } else { 0 } | (csg & 3) << 2 | if transit { nsg & 3 } else { 0 };
    p.bhs[2] = 0; // version-max
    p.bhs[3] = 0; // version-active
    p.bhs[8..14].copy_from_slice(&isid);
    p.set_u16(14, tsih);
    p.itt(itt);
    p.bhs[36] = class;
    p.bhs[37] = detail;
    p.set_data_len(data_len);
    p.takes_statsn = true;
    p
}

/// Text Response (RFC 7143 11.11).
pub fn text_response(itt: u32, ttt: u32, final_: bool, cont: bool, data_len: usize) -> OutPdu {
    let mut p = OutPdu::new(opcode::TEXT_RESP);
    p.bhs[1] = if final_ { 0x80 } else { 0 } | if cont { 0x40 } else { 0 };
    p.itt(itt);
    p.set_u32(20, ttt);
    p.set_data_len(data_len);
    p.takes_statsn = true;
    p
}

/// Logout Response (RFC 7143 11.15).
pub fn logout_response(itt: u32, response: u8, time2wait: u16, time2retain: u16) -> OutPdu {
    let mut p = OutPdu::new(opcode::LOGOUT_RESP);
    p.bhs[1] = 0x80;
    p.bhs[2] = response;
    p.itt(itt);
    p.set_u16(40, time2wait);
    p.set_u16(42, time2retain);
    p.takes_statsn = true;
    p
}

/// Reject (RFC 7143 11.17): the data segment is the offending header.
pub fn reject(reason: u8) -> OutPdu {
    let mut p = OutPdu::new(opcode::REJECT);
    p.bhs[1] = 0x80;
    p.bhs[2] = reason;
    p.itt(RESERVED_TAG);
    p.set_data_len(BHS_LEN);
    p.takes_statsn = true;
    p
}

/// Asynchronous Message (RFC 7143 11.9); event 1 asks the initiator to log
/// out within `param3` seconds.
pub fn async_logout_request(param3: u16) -> OutPdu {
    let mut p = OutPdu::new(opcode::ASYNC_MSG);
    p.bhs[1] = 0x80;
    p.itt(RESERVED_TAG);
    p.bhs[36] = 1;
    p.set_u16(42, param3);
    p.takes_statsn = true;
    p
}

/// Encodes a full PDU (header, data, padding, digests) into one buffer:
/// used for small PDUs and in tests; the connection writes large data
/// segments without copying.
pub fn encode(p: &OutPdu, data: &[u8], header_digest: bool, data_digest: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(BHS_LEN + 8 + data.len() + 4);
    out.extend_from_slice(&p.bhs);
    if header_digest {
        out.extend_from_slice(&crc32c::crc32c(&p.bhs).to_le_bytes());
    }
    if !data.is_empty() {
        out.extend_from_slice(data);
        out.resize(out.len() + pad4(data.len()), 0);
        if data_digest {
            let start = out.len() - data.len() - pad4(data.len());
            let d = crc32c::crc32c(&out[start..]);
            out.extend_from_slice(&d.to_le_bytes());
        }
    }
    out
}

/// Serial number arithmetic (RFC 1982, 32 bits): `a < b`.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}

/// `a <= b` in serial arithmetic.
pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd_pdu(data: &[u8]) -> Vec<u8> {
        let mut p = OutPdu::new(opcode::SCSI_CMD);
        p.bhs[1] = 0x80 | 0x20;
        p.itt(7);
        p.set_u32(20, 512);
        p.set_u32(24, 3);
        p.bhs[32] = 0x2A;
        p.set_data_len(data.len());
        encode(&p, data, true, true)
    }

    #[test]
    fn round_trips_with_digests_and_padding() {
        let raw = cmd_pdu(&[1, 2, 3]);
        assert_eq!(raw.len(), 48 + 4 + 4 + 4);
        let (pdu, used) = parse(&raw, true, true, 8192).unwrap();
        assert_eq!(used, raw.len());
        assert_eq!(pdu.data, vec![1, 2, 3]);
        match pdu.decode().unwrap() {
            Request::ScsiCmd(c) => {
                assert!(c.write && c.final_ && !c.read);
                assert_eq!((c.itt, c.edtl, c.cmdsn, c.cdb[0]), (7, 512, 3, 0x2A));
            }
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn digest_and_length_errors_are_reported() {
        let mut raw = cmd_pdu(&[1, 2, 3, 4]);
        raw[50] ^= 1; // header digest
        assert!(matches!(
            parse(&raw, true, true, 8192),
            Err(PduError::HeaderDigest { .. })
        ));
        let mut raw = cmd_pdu(&[1, 2, 3, 4]);
        raw[53] ^= 1; // data
        assert!(matches!(
            parse(&raw, true, true, 8192),
            Err(PduError::DataDigest { .. })
        ));
        let raw = cmd_pdu(&[0; 100]);
        assert!(matches!(
            parse(&raw, true, true, 64),
            Err(PduError::DataTooLong { .. })
        ));
        assert!(matches!(
            parse(&raw[..40], false, false, 8192),
            Err(PduError::Truncated { .. })
        ));
    }

    #[test]
    fn unknown_opcodes_and_bad_fields_are_refused() {
        let mut p = OutPdu::new(0x1C);
        let raw = encode(&p, &[], false, false);
        let (pdu, _) = parse(&raw, false, false, 0).unwrap();
        assert_eq!(
            pdu.decode().unwrap_err().reject_reason(),
            reject::NOT_SUPPORTED
        );
        p = OutPdu::new(opcode::SCSI_CMD);
        p.set_data_len(4); // data without W
        let raw = encode(&p, &[0; 4], false, false);
        let (pdu, _) = parse(&raw, false, false, 64).unwrap();
        assert!(matches!(pdu.decode(), Err(PduError::InvalidField { .. })));
    }

    #[test]
    fn serial_arithmetic_wraps() {
        assert!(sn_lt(u32::MAX, 0));
        assert!(sn_lt(5, 6));
        assert!(!sn_lt(6, 5));
        assert!(sn_le(7, 7));
    }
}
