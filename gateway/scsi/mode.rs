//! MODE SENSE and MODE SELECT (SPC-4 6.11-6.14) with the pages initiators
//! ask for: caching (08h), control (0Ah) and informational exceptions
//! control (1Ch), alone or through "all pages" (3Fh).
//!
//! Changeable fields: WCE (accepted and reported; every write is durable
//! when acknowledged anyway, so a write-back setting is always honoured),
//! D_SENSE (descriptor sense data) and SWP (software write protect).

use super::sense::{Asc, Sense};

/// Mode parameters shared by every nexus of the logical unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModeState {
    pub wce: bool,
    pub d_sense: bool,
    pub swp: bool,
}

pub const PAGE_CACHING: u8 = 0x08;
pub const PAGE_CONTROL: u8 = 0x0A;
pub const PAGE_INFO_EXCEPTIONS: u8 = 0x1C;
pub const PAGE_ALL: u8 = 0x3F;

/// Pages in the order "all pages" returns them.
const PAGES: &[u8] = &[PAGE_CACHING, PAGE_CONTROL, PAGE_INFO_EXCEPTIONS];

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PageControl {
    Current,
    Changeable,
    Default,
}

fn caching(pc: PageControl, st: &ModeState) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = PAGE_CACHING;
    p[1] = 18;
    match pc {
        PageControl::Changeable => p[2] = 0x04,
        PageControl::Current => p[2] = if st.wce { 0x04 } else { 0 },
        PageControl::Default => {}
    }
    // No prefetch limits worth advertising; all-ones "maximum prefetch
    // ceiling" style fields are left at zero (no cache segmentation).
    p
}

fn control(pc: PageControl, st: &ModeState) -> Vec<u8> {
    let mut p = vec![0u8; 12];
    p[0] = PAGE_CONTROL;
    p[1] = 10;
    match pc {
        PageControl::Changeable => {
            p[2] = 0x04; // D_SENSE
            p[4] = 0x08; // SWP
        }
        PageControl::Current | PageControl::Default => {
            let st = if pc == PageControl::Default {
                ModeState::default()
            } else {
                *st
            };
            p[2] = if st.d_sense { 0x04 } else { 0 };
            p[3] = 0x10; // queue algorithm modifier 1: unrestricted reordering
            p[4] = if st.swp { 0x08 } else { 0 };
            p[8..10].copy_from_slice(&0xFFFFu16.to_be_bytes()); // busy timeout: unlimited
        }
    }
    p
}

fn info_exceptions(pc: PageControl) -> Vec<u8> {
    let mut p = vec![0u8; 12];
    p[0] = PAGE_INFO_EXCEPTIONS;
    p[1] = 10;
    if pc != PageControl::Changeable {
        p[2] = 0x08; // DEXCPT: no informational exception reporting
    }
    p
}

fn one_page(code: u8, pc: PageControl, st: &ModeState) -> Vec<u8> {
    match code {
        PAGE_CACHING => caching(pc, st),
        PAGE_CONTROL => control(pc, st),
        _ => info_exceptions(pc),
    }
}

/// A decoded MODE SENSE request.
pub struct SenseRequest {
    pub ten: bool,
    pub dbd: bool,
    pub llbaa: bool,
    pub pc: u8,
    pub page: u8,
    pub subpage: u8,
    pub alloc: usize,
}

impl SenseRequest {
    pub fn parse(cdb: &[u8]) -> Self {
        let ten = cdb[0] == super::cdb::op::MODE_SENSE_10;
        Self {
            ten,
            dbd: cdb[1] & 0x08 != 0,
            llbaa: ten && cdb[1] & 0x10 != 0,
            pc: cdb[2] >> 6,
            page: cdb[2] & 0x3F,
            subpage: cdb[3],
            alloc: if ten {
                u16::from_be_bytes([cdb[7], cdb[8]]) as usize
            } else {
                cdb[4] as usize
            },
        }
    }
}

/// Builds the MODE SENSE(6/10) parameter data (before truncation).
pub fn sense(
    req: &SenseRequest,
    st: &ModeState,
    blocks: u64,
    block_size: u32,
) -> Result<Vec<u8>, Sense> {
    let pc = match req.pc {
        0 => PageControl::Current,
        1 => PageControl::Changeable,
        2 => PageControl::Default,
        // Saved values: nothing is saved across power loss.
        _ => return Err(Sense::illegal(Asc::SAVING_PARAMETERS_NOT_SUPPORTED).tap_field(2, 7)),
    };
    let mut pages = Vec::new();
    match (req.page, req.subpage) {
        (PAGE_ALL, 0x00) | (PAGE_ALL, 0xFF) => {
            for &p in PAGES {
                pages.extend(one_page(p, pc, st));
            }
        }
        (p, 0x00) | (p, 0xFF) if PAGES.contains(&p) => pages.extend(one_page(p, pc, st)),
        (p, _) if PAGES.contains(&p) || p == PAGE_ALL => {
            return Err(Sense::invalid_cdb_field(3, None))
        }
        _ => return Err(Sense::invalid_cdb_field(2, Some(5))),
    }
    // Device-specific parameter: WP (software write protect) and DPOFUA.
    let dev_specific = if st.swp { 0x80 } else { 0 } | 0x10;
    let mut desc = Vec::new();
    if !req.dbd {
        if req.llbaa {
            desc.extend_from_slice(&blocks.to_be_bytes());
            desc.extend_from_slice(&[0, 0, 0, 0]);
            desc.extend_from_slice(&block_size.to_be_bytes());
        } else {
            let n = if blocks > u32::MAX as u64 {
                u32::MAX
            } else {
                blocks as u32
            };
            desc.extend_from_slice(&n.to_be_bytes());
            desc.push(0);
            desc.extend_from_slice(&block_size.to_be_bytes()[1..4]);
        }
    }
    let mut out = Vec::new();
    if req.ten {
        let len = 6 + desc.len() + pages.len();
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.push(0); // medium type
        out.push(dev_specific);
        out.push(if req.llbaa && !req.dbd { 0x01 } else { 0 }); // LONGLBA
        out.push(0);
        out.extend_from_slice(&(desc.len() as u16).to_be_bytes());
    } else {
        let len = 3 + desc.len() + pages.len();
        out.push(len.min(255) as u8);
        out.push(0);
        out.push(dev_specific);
        out.push(desc.len() as u8);
    }
    out.extend(desc);
    out.extend(pages);
    Ok(out)
}

/// Applies MODE SELECT(6/10) parameter data to `st`. Every field that is
/// not changeable must carry its current value, else the whole list is
/// refused (INVALID FIELD IN PARAMETER LIST pointing at the byte).
pub fn select(
    ten: bool,
    pf: bool,
    sp: bool,
    data: &[u8],
    st: &mut ModeState,
    block_size: u32,
) -> Result<(), Sense> {
    if sp {
        return Err(Sense::invalid_cdb_field(1, Some(0)));
    }
    let hdr = if ten { 8 } else { 4 };
    if data.is_empty() {
        return Ok(());
    }
    if data.len() < hdr {
        return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    if !pf {
        // Vendor-specific page format: we only speak SPC pages.
        return Err(Sense::invalid_cdb_field(1, Some(4)));
    }
    let bdl = if ten {
        u16::from_be_bytes([data[6], data[7]]) as usize
    } else {
        data[3] as usize
    };
    let mut at = hdr;
    if bdl != 0 {
        if bdl != 8 && bdl != 16 || data.len() < hdr + bdl {
            return Err(Sense::invalid_param_field(if ten { 6 } else { 3 }, None));
        }
        // The block length in the descriptor may only restate ours (or 0).
        let d = &data[hdr..hdr + bdl];
        let bl = if bdl == 8 {
            u32::from_be_bytes([0, d[5], d[6], d[7]])
        } else {
            u32::from_be_bytes([d[12], d[13], d[14], d[15]])
        };
        if bl != 0 && bl != block_size {
            return Err(Sense::invalid_param_field((hdr + bdl - 3) as u16, None));
        }
        at += bdl;
    }
    let mut next = *st;
    while at < data.len() {
        if data.len() < at + 2 {
            return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let code = data[at] & 0x3F;
        if data[at] & 0x40 != 0 {
            // SPF: no subpages are changeable here.
            return Err(Sense::invalid_param_field(at as u16, Some(6)));
        }
        let len = data[at + 1] as usize + 2;
        if data.len() < at + len {
            return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let given = &data[at..at + len];
        if !PAGES.contains(&code) {
            return Err(Sense::invalid_param_field(at as u16, Some(5)));
        }
        let cur = one_page(code, PageControl::Current, st);
        let mask = one_page(code, PageControl::Changeable, st);
        if given.len() != cur.len() {
            return Err(Sense::invalid_param_field(at as u16 + 1, None));
        }
        // Byte 0 bit 7 is PS (parameters savable), which the initiator must
        // send as zero; it is not compared.
        for i in 1..cur.len() {
            if (given[i] ^ cur[i]) & !mask[i] != 0 {
                return Err(Sense::invalid_param_field((at + i) as u16, None));
            }
        }
        match code {
            PAGE_CACHING => next.wce = given[2] & 0x04 != 0,
            PAGE_CONTROL => {
                next.d_sense = given[2] & 0x04 != 0;
                next.swp = given[4] & 0x08 != 0;
            }
            _ => {}
        }
        at += len;
    }
    *st = next;
    Ok(())
}

trait TapField {
    fn tap_field(self, byte: u16, bit: u8) -> Self;
}

impl TapField for Sense {
    fn tap_field(mut self, byte: u16, bit: u8) -> Self {
        self.field = Some(super::sense::FieldPointer {
            in_cdb: true,
            byte,
            bit: Some(bit),
        });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(cdb: &[u8]) -> SenseRequest {
        SenseRequest::parse(cdb)
    }

    #[test]
    fn all_pages_have_consistent_length() {
        let st = ModeState::default();
        let b = sense(&req(&[0x1A, 0, 0x3F, 0, 255, 0]), &st, 1000, 512).unwrap();
        assert_eq!(b[0] as usize + 1, b.len());
        assert_eq!(b[3], 8);
        let b10 = sense(
            &req(&[0x5A, 0x10, 0x3F, 0, 0, 0, 0, 1, 0, 0]),
            &st,
            1000,
            512,
        )
        .unwrap();
        assert_eq!(u16::from_be_bytes([b10[0], b10[1]]) as usize + 2, b10.len());
        assert_eq!(b10[4] & 1, 1);
    }

    #[test]
    fn select_changes_only_changeable_fields() {
        let mut st = ModeState::default();
        let mut cur = sense(&req(&[0x1A, 0x08, 0x0A, 0, 255, 0]), &st, 1000, 512).unwrap();
        cur[0] = 0;
        cur[2] = 0;
        cur[4 + 2] |= 0x04; // D_SENSE
        select(false, true, false, &cur, &mut st, 512).unwrap();
        assert!(st.d_sense);
        cur[4 + 3] = 0x00; // queue algorithm modifier: not changeable
        assert!(select(false, true, false, &cur, &mut st, 512).is_err());
    }

    #[test]
    fn saved_values_are_refused() {
        let e = sense(
            &req(&[0x1A, 0, 0xC0 | 0x08, 0, 255, 0]),
            &ModeState::default(),
            1,
            512,
        )
        .unwrap_err();
        assert_eq!(e.asc, Asc::SAVING_PARAMETERS_NOT_SUPPORTED);
    }
}
