//! Data pointers: a command's data as PRP entries (and a PRP list in the
//! command's list page) or, where the controller supports them and PRPs
//! cannot describe the data, as an SGL.
//!
//! PRP rules: the first piece may start anywhere (dword aligned); every
//! other piece starts on a page; every piece but the last ends on one. The
//! list page holds 512 entries, so one command moves at most 2 MiB here
//! (the caller splits larger requests, and at MDTS anyway).

use super::cmd::{sgl_data_block, sgl_last_segment, Command};
use super::mem::DmaSlice;

const PAGE: u64 = 4096;
/// Entries of one PRP list page.
pub const PRP_LIST_ENTRIES: usize = 512;
/// Descriptors of one SGL segment page.
pub const SGL_ENTRIES: usize = 256;

/// Whether device-contiguous `pieces` can be described with PRPs.
pub fn prp_compatible(pieces: &[(u64, usize)]) -> bool {
    let n = pieces.len();
    pieces.iter().enumerate().all(|(i, &(iova, len))| {
        (i == 0 && iova % 4 == 0 || iova % PAGE == 0)
            && (i + 1 == n || (iova + len as u64) % PAGE == 0)
            && len > 0
    })
}

fn prp_pages(pieces: &[(u64, usize)]) -> Vec<u64> {
    let mut pages = Vec::new();
    for &(iova, len) in pieces {
        let end = iova + len as u64;
        let mut p = iova;
        while p < end {
            pages.push(p);
            p = (p & !(PAGE - 1)) + PAGE;
        }
    }
    pages
}

/// How a command's data was described.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dptr {
    /// PRP1 (and PRP2 as a second entry).
    Prp,
    /// PRP1 and a PRP list in the command's list page.
    PrpList,
    /// An SGL.
    Sgl,
}

/// Fills the command's data pointer for `pieces`, using `list` (the
/// command's own page) for a PRP list or an SGL segment. Returns `None`
/// when the pieces cannot be described (the caller bounces the data).
pub fn set_data_pointer(
    cmd: &mut Command,
    pieces: &[(u64, usize)],
    list: &DmaSlice,
    sgl_supported: bool,
) -> Option<Dptr> {
    if pieces.is_empty() {
        return None;
    }
    if prp_compatible(pieces) {
        let pages = prp_pages(pieces);
        match pages.len() {
            1 => cmd.set_prp(pages[0], 0),
            2 => cmd.set_prp(pages[0], pages[1]),
            n if n - 1 <= PRP_LIST_ENTRIES => {
                for (i, p) in pages[1..].iter().enumerate() {
                    list.mem.write64(list.off + i * 8, *p);
                }
                cmd.set_prp(pages[0], list.iova);
                return Some(Dptr::PrpList);
            }
            _ => return None,
        }
        return Some(Dptr::Prp);
    }
    if !sgl_supported || pieces.len() > SGL_ENTRIES {
        return None;
    }
    if pieces.len() == 1 {
        cmd.set_sgl(sgl_data_block(pieces[0].0, pieces[0].1 as u32));
        return Some(Dptr::Sgl);
    }
    for (i, &(iova, len)) in pieces.iter().enumerate() {
        list.mem
            .write_words(list.off + i * 16, &sgl_data_block(iova, len as u32));
    }
    cmd.set_sgl(sgl_last_segment(list.iova, pieces.len() as u32));
    Some(Dptr::Sgl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prp_rules() {
        assert!(prp_compatible(&[(0x1000, 8192)]));
        assert!(prp_compatible(&[(0x1200, 0xe00), (0x5000, 100)]));
        assert!(!prp_compatible(&[(0x1000, 100), (0x5000, 4096)]));
        assert!(!prp_compatible(&[(0x1000, 4096), (0x5200, 4096)]));
        assert_eq!(prp_pages(&[(0x1200, 0x2000)]), vec![0x1200, 0x2000, 0x3000]);
        assert_eq!(
            prp_pages(&[(0x1000, 4096), (0x9000, 8192)]),
            vec![0x1000, 0x9000, 0xa000]
        );
    }
}
