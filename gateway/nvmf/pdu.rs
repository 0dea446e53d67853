//! NVMe/TCP PDUs (NVMe/TCP Transport Specification 1.0): parsing what a
//! host sends and encoding what the controller sends. Pure functions over
//! byte slices, so that the fuzz target and the tests drive them without a
//! socket.
//!
//! Every PDU starts with an 8-byte common header (type, flags, header
//! length, data offset, total length). A queue reads it, asks
//! [`header_rest_len`] how much more header to read, then
//! [`parse_h2c_header`] says what the PDU is and how its data is laid out.

use super::digest;
use super::spec::{fes, pdu_flags, pdu_type};

pub const CH_LEN: usize = 8;
pub const IC_LEN: usize = 128;
pub const CMD_HLEN: usize = 72;
/// Header length of H2CData, C2HData, R2T, CapsuleResp and TermReq PDUs.
pub const SHORT_HLEN: usize = 24;
pub const DIGEST_LEN: usize = 4;
/// A termination request carries at most this much of the offending header.
pub const MAX_TERM_DATA: usize = 128;
/// The largest header we ever build: 24 bytes + digest + padding for the
/// host's largest data alignment (HPDA 31 = 128 bytes).
pub const MAX_ENCODED_HDR: usize = 128;

/// The 8 bytes every PDU starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommonHeader {
    pub pdu_type: u8,
    pub flags: u8,
    pub hlen: u8,
    pub pdo: u8,
    pub plen: u32,
}

impl CommonHeader {
    pub fn parse(b: &[u8]) -> Self {
        Self {
            pdu_type: b[0],
            flags: b[1],
            hlen: b[2],
            pdo: b[3],
            plen: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    pub fn write(&self, out: &mut [u8]) {
        out[0] = self.pdu_type;
        out[1] = self.flags;
        out[2] = self.hlen;
        out[3] = self.pdo;
        out[4..8].copy_from_slice(&self.plen.to_le_bytes());
    }
}

/// A transport error that ends the queue: the controller answers with a
/// C2HTermReq carrying `fes` and `fei` (the byte offset of the bad field,
/// where there is one) and closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} (FES {fes:#x}, FEI {fei})")]
pub struct FatalError {
    pub fes: u16,
    pub fei: u32,
    pub what: String,
}

impl FatalError {
    pub fn new(fes: u16, fei: u32, what: impl Into<String>) -> Self {
        Self {
            fes,
            fei,
            what: what.into(),
        }
    }
    fn header_field(fei: u32, what: impl Into<String>) -> Self {
        Self::new(fes::INVALID_PDU_HEADER_FIELD, fei, what)
    }
}

/// What the host asked for in its ICReq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcReq {
    pub pfv: u16,
    /// Host PDU data alignment, 0's based in dwords.
    pub hpda: u8,
    pub hdgst: bool,
    pub ddgst: bool,
    /// Outstanding R2Ts per command the host accepts, 0's based.
    pub maxr2t: u32,
}

/// Parses a whole 128-byte ICReq.
pub fn parse_icreq(pdu: &[u8]) -> Result<IcReq, FatalError> {
    if pdu.len() < CH_LEN {
        return Err(FatalError::header_field(
            4,
            "ICReq shorter than a common header",
        ));
    }
    let ch = CommonHeader::parse(pdu);
    if ch.pdu_type != pdu_type::IC_REQ {
        return Err(FatalError::new(
            fes::PDU_SEQUENCE_ERROR,
            0,
            format!("expected ICReq, got PDU type {:#x}", ch.pdu_type),
        ));
    }
    if ch.hlen as usize != IC_LEN {
        return Err(FatalError::header_field(
            2,
            format!("ICReq HLEN {} is not 128", ch.hlen),
        ));
    }
    if ch.plen as usize != IC_LEN {
        return Err(FatalError::header_field(
            4,
            format!("ICReq PLEN {} is not 128", ch.plen),
        ));
    }
    if ch.pdo != 0 {
        return Err(FatalError::header_field(3, "ICReq PDO is not 0"));
    }
    if pdu.len() < IC_LEN {
        return Err(FatalError::header_field(4, "ICReq truncated"));
    }
    let pfv = u16::from_le_bytes([pdu[8], pdu[9]]);
    if pfv != 0 {
        return Err(FatalError::new(
            fes::UNSUPPORTED_PARAMETER,
            8,
            format!("PDU format version {pfv} is not supported (only 1.0)"),
        ));
    }
    let hpda = pdu[10];
    if hpda > 31 {
        return Err(FatalError::new(
            fes::UNSUPPORTED_PARAMETER,
            10,
            format!("HPDA {hpda} is above 31"),
        ));
    }
    let dgst = pdu[11];
    Ok(IcReq {
        pfv,
        hpda,
        hdgst: dgst & 1 != 0,
        ddgst: dgst & 2 != 0,
        maxr2t: u32::from_le_bytes([pdu[12], pdu[13], pdu[14], pdu[15]]),
    })
}

/// Encodes the ICResp: no data alignment asked of the host (CPDA 0, which
/// Linux requires), the digests the host asked for, and MAXH2CDATA.
pub fn encode_icresp(hdgst: bool, ddgst: bool, maxh2cdata: u32) -> [u8; IC_LEN] {
    let mut b = [0u8; IC_LEN];
    CommonHeader {
        pdu_type: pdu_type::IC_RESP,
        flags: 0,
        hlen: IC_LEN as u8,
        pdo: 0,
        plen: IC_LEN as u32,
    }
    .write(&mut b);
    // PFV 0 (1.0) at 8, CPDA 0 at 10.
    b[11] = (hdgst as u8) | ((ddgst as u8) << 1);
    b[12..16].copy_from_slice(&maxh2cdata.to_le_bytes());
    b
}

/// What a queue negotiated in the ICReq/ICResp exchange, and the limits it
/// enforces on every later PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub hdgst: bool,
    pub ddgst: bool,
    /// Host PDU data alignment (0's based dwords): pads our C2HData.
    pub hpda: u8,
    pub maxh2cdata: u32,
    /// The most in-capsule data a command capsule may carry on this queue.
    pub max_icd: u32,
}

impl Negotiated {
    pub fn hdgst_len(&self) -> usize {
        if self.hdgst {
            DIGEST_LEN
        } else {
            0
        }
    }
}

/// A host-to-controller PDU, as far as its header tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum H2c {
    /// A command capsule: the 64-byte submission queue entry.
    Cmd { sqe: [u8; 64] },
    /// Data for an R2T.
    Data {
        cccid: u16,
        ttag: u16,
        datao: u32,
        datal: u32,
        last: bool,
    },
    /// The host ends the connection.
    Term { fes: u16 },
}

/// A parsed header and the layout of the rest of the PDU: `pad` bytes to
/// skip, `data_len` bytes of data, then a data digest if `ddgst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2cHeader {
    pub pdu: H2c,
    pub pad: usize,
    pub data_len: usize,
    pub ddgst: bool,
}

/// After the common header: how many more header bytes (specific header
/// plus header digest) to read. Rejects types a host never sends.
pub fn header_rest_len(ch: &CommonHeader, neg: &Negotiated) -> Result<usize, FatalError> {
    let hlen = match ch.pdu_type {
        pdu_type::CAPSULE_CMD => CMD_HLEN,
        pdu_type::H2C_DATA => SHORT_HLEN,
        // A termination request never carries digests.
        pdu_type::H2C_TERM_REQ => return expect_hlen(ch, SHORT_HLEN).map(|_| SHORT_HLEN - CH_LEN),
        pdu_type::IC_REQ => {
            return Err(FatalError::new(
                fes::PDU_SEQUENCE_ERROR,
                0,
                "a second ICReq on an initialised queue",
            ))
        }
        t => {
            return Err(FatalError::header_field(
                0,
                format!("PDU type {t:#x} is not one a host sends"),
            ))
        }
    };
    expect_hlen(ch, hlen)?;
    Ok(hlen - CH_LEN + neg.hdgst_len())
}

fn expect_hlen(ch: &CommonHeader, hlen: usize) -> Result<(), FatalError> {
    if ch.hlen as usize != hlen {
        return Err(FatalError::header_field(
            2,
            format!(
                "PDU type {:#x} has HLEN {}, expected {hlen}",
                ch.pdu_type, ch.hlen
            ),
        ));
    }
    Ok(())
}

/// Parses a whole header (`hdr`: the common header, the specific header and
/// the header digest when negotiated).
pub fn parse_h2c_header(hdr: &[u8], neg: &Negotiated) -> Result<H2cHeader, FatalError> {
    let ch = CommonHeader::parse(hdr);
    let rest = header_rest_len(&ch, neg)?;
    if hdr.len() != CH_LEN + rest {
        return Err(FatalError::header_field(
            2,
            "header length does not match its type",
        ));
    }
    let hlen = ch.hlen as usize;
    let plen = ch.plen as usize;

    if ch.pdu_type == pdu_type::H2C_TERM_REQ {
        if !(SHORT_HLEN..=SHORT_HLEN + MAX_TERM_DATA).contains(&plen) {
            return Err(FatalError::header_field(
                4,
                format!("H2CTermReq PLEN {plen} out of range"),
            ));
        }
        let fes = u16::from_le_bytes([hdr[8], hdr[9]]);
        return Ok(H2cHeader {
            pdu: H2c::Term { fes },
            pad: 0,
            data_len: plen - SHORT_HLEN,
            ddgst: false,
        });
    }

    // Digest flags must match what was negotiated.
    let hflag = ch.flags & pdu_flags::HDGSTF != 0;
    if hflag != neg.hdgst {
        return Err(FatalError::header_field(
            1,
            format!(
                "HDGSTF is {} but header digests are {}",
                hflag as u8,
                if neg.hdgst { "on" } else { "off" }
            ),
        ));
    }
    if neg.hdgst {
        let (h, d) = hdr.split_at(hlen);
        if !digest::verify(h, d) {
            return Err(FatalError::new(
                fes::HEADER_DIGEST_ERROR,
                0,
                "header digest mismatch",
            ));
        }
    }
    let dflag = ch.flags & pdu_flags::DDGSTF != 0;
    if dflag && !neg.ddgst {
        return Err(FatalError::header_field(
            1,
            "DDGSTF set but data digests are off",
        ));
    }
    let ddgst_len = if dflag { DIGEST_LEN } else { 0 };
    let hdr_end = hlen + neg.hdgst_len();

    // Data layout: PDO 0 means no data; otherwise data starts at PDO, which
    // lies at or after the header (and digest) and on a dword boundary
    // (CPDA 0).
    let (pad, data_len) = if ch.pdo == 0 {
        if plen != hdr_end {
            return Err(FatalError::header_field(
                4,
                format!("PLEN {plen} with no data should be {hdr_end}"),
            ));
        }
        (0, 0)
    } else {
        let pdo = ch.pdo as usize;
        if pdo < hdr_end || !pdo.is_multiple_of(4) {
            return Err(FatalError::header_field(
                3,
                format!("PDO {pdo} is inside the header or not dword aligned"),
            ));
        }
        if plen < pdo + ddgst_len {
            return Err(FatalError::header_field(
                4,
                format!("PLEN {plen} is shorter than PDO {pdo} and the data digest"),
            ));
        }
        (pdo - hdr_end, plen - pdo - ddgst_len)
    };
    if data_len > 0 && neg.ddgst && !dflag {
        return Err(FatalError::header_field(
            1,
            "data present without DDGSTF while data digests are on",
        ));
    }

    let pdu = match ch.pdu_type {
        pdu_type::CAPSULE_CMD => {
            if data_len > neg.max_icd as usize {
                return Err(FatalError::new(
                    fes::DATA_TRANSFER_LIMIT_EXCEEDED,
                    4,
                    format!(
                        "{data_len} bytes of in-capsule data, at most {} allowed",
                        neg.max_icd
                    ),
                ));
            }
            let mut sqe = [0u8; 64];
            sqe.copy_from_slice(&hdr[CH_LEN..CMD_HLEN]);
            H2c::Cmd { sqe }
        }
        _ => {
            let cccid = u16::from_le_bytes([hdr[8], hdr[9]]);
            let ttag = u16::from_le_bytes([hdr[10], hdr[11]]);
            let datao = u32::from_le_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]);
            let datal = u32::from_le_bytes([hdr[16], hdr[17], hdr[18], hdr[19]]);
            if datal as usize != data_len || datal == 0 {
                return Err(FatalError::header_field(
                    16,
                    format!("H2CData DATAL {datal} does not match the PDU's {data_len} data bytes"),
                ));
            }
            if datal > neg.maxh2cdata {
                return Err(FatalError::new(
                    fes::DATA_TRANSFER_LIMIT_EXCEEDED,
                    16,
                    format!("H2CData DATAL {datal} above MAXH2CDATA {}", neg.maxh2cdata),
                ));
            }
            H2c::Data {
                cccid,
                ttag,
                datao,
                datal,
                last: ch.flags & pdu_flags::DATA_LAST != 0,
            }
        }
    };
    Ok(H2cHeader {
        pdu,
        pad,
        data_len,
        ddgst: dflag,
    })
}

/// A header we send, built in place: header, then room for its digest and
/// the padding before data. The writer fills the digest.
#[derive(Clone)]
pub struct OutHeader {
    pub bytes: [u8; MAX_ENCODED_HDR],
    /// Header length proper (HLEN).
    pub hlen: u8,
    /// Bytes from the start of the PDU to its data (or its end): HLEN plus
    /// header digest plus padding.
    pub data_at: u8,
}

impl OutHeader {
    /// The header bytes the digest covers.
    pub fn header(&self) -> &[u8] {
        &self.bytes[..self.hlen as usize]
    }
}

impl std::fmt::Debug for OutHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OutHeader({:02x?})",
            &self.bytes[..self.data_at as usize]
        )
    }
}

fn out_header(pdu_type: u8, mut flags: u8, data_len: usize, neg: &Negotiated) -> OutHeader {
    let hlen = SHORT_HLEN;
    let hd = neg.hdgst_len();
    if neg.hdgst {
        flags |= pdu_flags::HDGSTF;
    }
    let (pdo, ddgst) = if data_len > 0 {
        // Our data must start where the host's alignment (HPDA) wants it.
        let align = (neg.hpda as usize + 1) * 4;
        let pdo = (hlen + hd).div_ceil(align) * align;
        if neg.ddgst {
            flags |= pdu_flags::DDGSTF;
        }
        (pdo, if neg.ddgst { DIGEST_LEN } else { 0 })
    } else {
        (0, 0)
    };
    let data_at = if data_len > 0 { pdo } else { hlen + hd };
    let plen = data_at + data_len + ddgst;
    let mut bytes = [0u8; MAX_ENCODED_HDR];
    CommonHeader {
        pdu_type,
        flags,
        hlen: hlen as u8,
        pdo: pdo as u8,
        plen: plen as u32,
    }
    .write(&mut bytes);
    OutHeader {
        bytes,
        hlen: hlen as u8,
        data_at: data_at as u8,
    }
}

/// A response capsule carrying a 16-byte completion queue entry.
pub fn encode_capsule_resp(cqe: &[u8; 16], neg: &Negotiated) -> OutHeader {
    let mut h = out_header(pdu_type::CAPSULE_RESP, 0, 0, neg);
    h.bytes[8..24].copy_from_slice(cqe);
    h
}

/// A C2HData PDU header for `datal` bytes at `datao` of command `cccid`.
pub fn encode_c2h_data(
    cccid: u16,
    datao: u32,
    datal: u32,
    last: bool,
    success: bool,
    neg: &Negotiated,
) -> OutHeader {
    let mut flags = 0;
    if last {
        flags |= pdu_flags::DATA_LAST;
    }
    if success {
        flags |= pdu_flags::DATA_SUCCESS;
    }
    let mut h = out_header(pdu_type::C2H_DATA, flags, datal as usize, neg);
    h.bytes[8..10].copy_from_slice(&cccid.to_le_bytes());
    h.bytes[12..16].copy_from_slice(&datao.to_le_bytes());
    h.bytes[16..20].copy_from_slice(&datal.to_le_bytes());
    h
}

/// A Ready to Transfer PDU: asks for `r2tl` bytes at `r2to` of `cccid`.
pub fn encode_r2t(cccid: u16, ttag: u16, r2to: u32, r2tl: u32, neg: &Negotiated) -> OutHeader {
    let mut h = out_header(pdu_type::R2T, 0, 0, neg);
    h.bytes[8..10].copy_from_slice(&cccid.to_le_bytes());
    h.bytes[10..12].copy_from_slice(&ttag.to_le_bytes());
    h.bytes[12..16].copy_from_slice(&r2to.to_le_bytes());
    h.bytes[16..20].copy_from_slice(&r2tl.to_le_bytes());
    h
}

/// A C2HTermReq: never digested; carries the start of the offending PDU
/// header for the host's log.
pub fn encode_c2h_term(e: &FatalError, offending: &[u8]) -> Vec<u8> {
    let extra = &offending[..offending.len().min(MAX_TERM_DATA)];
    let mut b = vec![0u8; SHORT_HLEN + extra.len()];
    CommonHeader {
        pdu_type: pdu_type::C2H_TERM_REQ,
        flags: 0,
        hlen: SHORT_HLEN as u8,
        pdo: 0,
        plen: b.len() as u32,
    }
    .write(&mut b);
    b[8..10].copy_from_slice(&e.fes.to_le_bytes());
    b[10..14].copy_from_slice(&e.fei.to_le_bytes());
    b[SHORT_HLEN..].copy_from_slice(extra);
    b
}

/// Parses a stream of host-to-controller PDUs as a queue would (an ICReq
/// first when the stream starts with one, then headers, data, digests,
/// command fields and Connect data), without acting on any. Returns how
/// many PDUs were parsed and the fatal error that stopped it, if any. For
/// the fuzz target and the malformed-input tests.
pub fn decode_stream(bytes: &[u8], neg: &Negotiated) -> (usize, Option<FatalError>) {
    use super::capsule::{ConnectData, Sqe};
    let mut at = 0usize;
    let mut count = 0usize;
    if bytes.first() == Some(&pdu_type::IC_REQ) {
        if bytes.len() < IC_LEN {
            return (0, None);
        }
        if let Err(e) = parse_icreq(&bytes[..IC_LEN]) {
            return (0, Some(e));
        }
        at = IC_LEN;
        count = 1;
    }
    while bytes.len() - at >= CH_LEN {
        let ch = CommonHeader::parse(&bytes[at..]);
        let rest = match header_rest_len(&ch, neg) {
            Ok(r) => r,
            Err(e) => return (count, Some(e)),
        };
        if bytes.len() - at < CH_LEN + rest {
            break;
        }
        let h = match parse_h2c_header(&bytes[at..at + CH_LEN + rest], neg) {
            Ok(h) => h,
            Err(e) => return (count, Some(e)),
        };
        let body = at + CH_LEN + rest + h.pad;
        let end = body + h.data_len + if h.ddgst { DIGEST_LEN } else { 0 };
        if end > bytes.len() {
            break;
        }
        let data = &bytes[body..body + h.data_len];
        if h.ddgst {
            let _ = digest::verify(data, &bytes[body + h.data_len..end]);
        }
        if let H2c::Cmd { sqe } = h.pdu {
            let s = Sqe(sqe);
            let sgl = s.sgl();
            let _ = (
                s.direction(),
                s.fuse(),
                s.slba(),
                s.nlb(),
                s.cdw(15),
                sgl.is_in_capsule(),
                sgl.is_transport(),
            );
            if s.is_fabrics() && s.fctype() == super::spec::fctype::CONNECT {
                let off = (sgl.addr as usize).min(data.len());
                let _ = ConnectData::parse(&data[off..]);
            }
        }
        count += 1;
        at = end;
    }
    (count, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(hdgst: bool, ddgst: bool) -> Negotiated {
        Negotiated {
            hdgst,
            ddgst,
            hpda: 0,
            maxh2cdata: 131072,
            max_icd: 8192,
        }
    }

    fn icreq(dgst: u8) -> [u8; 128] {
        let mut b = [0u8; 128];
        CommonHeader {
            pdu_type: 0,
            flags: 0,
            hlen: 128,
            pdo: 0,
            plen: 128,
        }
        .write(&mut b);
        b[11] = dgst;
        b
    }

    #[test]
    fn icreq_round_trip() {
        let r = parse_icreq(&icreq(3)).unwrap();
        assert!(r.hdgst && r.ddgst);
        let mut bad = icreq(0);
        bad[4] = 129;
        assert_eq!(parse_icreq(&bad).unwrap_err().fei, 4);
        let resp = encode_icresp(true, false, 65536);
        assert_eq!(resp[0], pdu_type::IC_RESP);
        assert_eq!(resp[11], 1);
        assert_eq!(u32::from_le_bytes(resp[12..16].try_into().unwrap()), 65536);
    }

    fn capsule(n: &Negotiated, data: &[u8]) -> Vec<u8> {
        let hd = n.hdgst_len();
        let dd = if n.ddgst && !data.is_empty() { 4 } else { 0 };
        let pdo = if data.is_empty() { 0 } else { 72 + hd };
        let plen = 72 + hd + data.len() + dd;
        let mut flags = 0;
        if n.hdgst {
            flags |= 1;
        }
        if dd > 0 {
            flags |= 2;
        }
        let mut b = vec![0u8; 72];
        CommonHeader {
            pdu_type: 4,
            flags,
            hlen: 72,
            pdo: pdo as u8,
            plen: plen as u32,
        }
        .write(&mut b);
        b[8] = 0x02;
        if n.hdgst {
            let c = digest::to_wire(digest::crc(&b));
            b.extend_from_slice(&c);
        }
        b
    }

    #[test]
    fn capsule_headers_with_and_without_digests() {
        for (h, d) in [(false, false), (true, false), (true, true), (false, true)] {
            let n = neg(h, d);
            let hdr = capsule(&n, &[1u8; 512]);
            let ch = CommonHeader::parse(&hdr);
            assert_eq!(header_rest_len(&ch, &n).unwrap(), hdr.len() - 8);
            let p = parse_h2c_header(&hdr, &n).unwrap();
            assert_eq!(p.data_len, 512);
            assert_eq!(p.ddgst, d);
            assert!(matches!(p.pdu, H2c::Cmd { sqe } if sqe[0] == 2));
        }
    }

    #[test]
    fn bad_headers_are_fatal() {
        let n = neg(true, false);
        let mut hdr = capsule(&n, &[]);
        hdr[20] ^= 1; // corrupt the SQE under the digest
        assert_eq!(
            parse_h2c_header(&hdr, &n).unwrap_err().fes,
            fes::HEADER_DIGEST_ERROR
        );
        let ch = CommonHeader {
            pdu_type: 0x05,
            flags: 0,
            hlen: 24,
            pdo: 0,
            plen: 24,
        };
        assert_eq!(header_rest_len(&ch, &n).unwrap_err().fei, 0);
        let ch = CommonHeader {
            pdu_type: 0x04,
            flags: 0,
            hlen: 70,
            pdo: 0,
            plen: 70,
        };
        assert_eq!(header_rest_len(&ch, &n).unwrap_err().fei, 2);
        // Too much in-capsule data.
        let n = neg(false, false);
        let mut hdr = capsule(&n, &[0u8; 16]);
        hdr[4..8].copy_from_slice(&(72u32 + 9000).to_le_bytes());
        assert_eq!(
            parse_h2c_header(&hdr, &n).unwrap_err().fes,
            fes::DATA_TRANSFER_LIMIT_EXCEEDED
        );
    }

    #[test]
    fn c2h_data_honours_host_alignment() {
        let mut n = neg(true, true);
        n.hpda = 7; // 32-byte alignment
        let h = encode_c2h_data(5, 0, 4096, true, false, &n);
        let ch = CommonHeader::parse(&h.bytes);
        assert_eq!(ch.pdo, 32);
        assert_eq!(h.data_at, 32);
        assert_eq!(ch.plen, 32 + 4096 + 4);
        assert_eq!(
            ch.flags,
            pdu_flags::HDGSTF | pdu_flags::DDGSTF | pdu_flags::DATA_LAST
        );
        let r = encode_r2t(1, 2, 0, 8192, &neg(false, false));
        assert_eq!(CommonHeader::parse(&r.bytes).plen, 24);
    }
}
