//! NVM commands on I/O queues: Read, Write, Flush, Write Zeroes, Dataset
//! Management (deallocate), Compare, and fused Compare+Write, onto the
//! namespace's `BlockVolume`.

use super::controller::Controller;
use super::outbox::Completion;
use super::queue::Request;
use super::spec::{nvm, status, with_dnr};
use super::subsystem::Namespace;
use ferrite_engine::volume::{AccessState, IoError};
use std::sync::Arc;

/// The protocol's status for a volume error. Path-like failures are
/// retryable without DNR, so that Linux multipath tries another gateway.
pub fn status_of(e: &IoError, write: bool) -> u16 {
    match e {
        IoError::OutOfRange { .. } => with_dnr(status::LBA_OUT_OF_RANGE),
        IoError::Misaligned { .. } => with_dnr(status::INVALID_FIELD),
        IoError::Checksum { .. } => with_dnr(status::UNRECOVERED_READ_ERROR),
        IoError::NoSpace { .. } => with_dnr(status::CAPACITY_EXCEEDED),
        IoError::Unavailable { .. } => status::INTERNAL_PATH_ERROR,
        IoError::Device { .. } if write => status::WRITE_FAULT,
        IoError::Device { .. } => status::UNRECOVERED_READ_ERROR,
        IoError::Gone { .. } => with_dnr(status::INVALID_NAMESPACE),
        IoError::CompareMismatch { .. } => with_dnr(status::COMPARE_FAILURE),
    }
}

fn io_status(ctrl: &Controller, what: &str, e: IoError, write: bool) -> Completion {
    match e {
        IoError::OutOfRange { .. } | IoError::CompareMismatch { .. } => {
            log::debug!("nvmf: controller {}: {what}: {e}", ctrl.id)
        }
        _ => log::warn!("nvmf: controller {}: {what}: {e}", ctrl.id),
    }
    Completion::status(status_of(&e, write))
}

/// The namespace a command targets, if it may be served through this path.
fn namespace(ctrl: &Controller, nsid: u32) -> Result<Arc<Namespace>, Completion> {
    let ns = ctrl
        .subsys
        .namespace(nsid)
        .ok_or_else(|| Completion::status(with_dnr(status::INVALID_NAMESPACE)))?;
    if ns.volume.access_state() == AccessState::Inaccessible {
        // Linux fails the command over to another path and rereads the ANA log.
        let s = if ctrl.subsys.ana_reporting {
            status::ANA_INACCESSIBLE
        } else {
            status::NAMESPACE_NOT_READY
        };
        return Err(Completion::status(s));
    }
    Ok(ns)
}

/// A command's LBA range in bytes, checked against the namespace and the
/// transfer limit. `nlb` is a count of blocks.
fn byte_range(
    ns: &Namespace,
    slba: u64,
    nlb: u64,
    max_bytes: Option<u64>,
) -> Result<(u64, u64, u32), Completion> {
    let info = ns.volume.info();
    let bs = info.block_size as u64;
    let blocks = info.size / bs;
    let len = nlb * bs;
    if let Some(m) = max_bytes {
        if len > m {
            return Err(Completion::status(with_dnr(status::INVALID_FIELD)));
        }
    }
    match slba.checked_add(nlb) {
        Some(end) if end <= blocks => Ok((slba * bs, len, info.block_size)),
        _ => Err(Completion::status(with_dnr(status::LBA_OUT_OF_RANGE))),
    }
}

/// Runs an NVM command.
pub(crate) fn execute(ctrl: &Controller, req: &Request) -> Completion {
    match run(ctrl, req) {
        Ok(c) | Err(c) => c,
    }
}

fn run(ctrl: &Controller, req: &Request) -> Result<Completion, Completion> {
    let sqe = &req.sqe;
    let max = ctrl.opts.max_io_size as u64;
    match sqe.opcode() {
        nvm::READ => {
            let ns = namespace(ctrl, sqe.nsid())?;
            let (off, len, _) = byte_range(&ns, sqe.slba(), sqe.nlb() as u64, Some(max))?;
            if req.xfer_len as u64 != len {
                return Err(Completion::status(with_dnr(
                    status::SGL_DATA_LENGTH_INVALID,
                )));
            }
            let mut buf = vec![0u8; len as usize];
            ns.volume
                .read(off, &mut buf)
                .map_err(|e| io_status(ctrl, "read", e, false))?;
            Ok(Completion::data(buf))
        }
        nvm::WRITE => {
            let ns = namespace(ctrl, sqe.nsid())?;
            let (off, len, _) = byte_range(&ns, sqe.slba(), sqe.nlb() as u64, Some(max))?;
            if req.data.len() as u64 != len {
                return Err(Completion::status(with_dnr(
                    status::SGL_DATA_LENGTH_INVALID,
                )));
            }
            ns.volume
                .write(off, &req.data)
                .map_err(|e| io_status(ctrl, "write", e, true))?;
            Ok(Completion::ok())
        }
        nvm::FLUSH => {
            // Writes are durable when they complete; flush for the record.
            if sqe.nsid() == 0xffff_ffff {
                for ns in ctrl.subsys.namespaces() {
                    ns.volume
                        .flush()
                        .map_err(|e| io_status(ctrl, "flush", e, true))?;
                }
            } else {
                namespace(ctrl, sqe.nsid())?
                    .volume
                    .flush()
                    .map_err(|e| io_status(ctrl, "flush", e, true))?;
            }
            Ok(Completion::ok())
        }
        nvm::WRITE_ZEROES => {
            let ns = namespace(ctrl, sqe.nsid())?;
            let (off, len, _) = byte_range(&ns, sqe.slba(), sqe.nlb() as u64, None)?;
            let deallocate = sqe.cdw(12) & (1 << 25) != 0;
            ns.volume
                .write_zeroes(off, len, deallocate)
                .map_err(|e| io_status(ctrl, "write zeroes", e, true))?;
            Ok(Completion::ok())
        }
        nvm::DATASET_MANAGEMENT => {
            let ns = namespace(ctrl, sqe.nsid())?;
            let nr = (sqe.cdw(10) & 0xff) as usize + 1;
            if req.data.len() < nr * 16 {
                return Err(Completion::status(with_dnr(
                    status::SGL_DATA_LENGTH_INVALID,
                )));
            }
            // Check every range before changing anything.
            let mut ranges = Vec::with_capacity(nr);
            for r in req.data[..nr * 16].chunks_exact(16) {
                let nlb = u32::from_le_bytes(r[4..8].try_into().expect("4 bytes")) as u64;
                let slba = u64::from_le_bytes(r[8..16].try_into().expect("8 bytes"));
                if nlb > 0 {
                    ranges.push(byte_range(&ns, slba, nlb, None)?);
                }
            }
            // Only Deallocate (AD) does anything; the hints (IDR/IDW) are hints.
            if sqe.cdw(11) & (1 << 2) != 0 {
                for (off, len, _) in ranges {
                    ns.volume
                        .unmap(off, len)
                        .map_err(|e| io_status(ctrl, "deallocate", e, true))?;
                }
            }
            Ok(Completion::ok())
        }
        nvm::COMPARE => {
            let ns = namespace(ctrl, sqe.nsid())?;
            let (off, len, _) = byte_range(&ns, sqe.slba(), sqe.nlb() as u64, Some(max))?;
            if req.data.len() as u64 != len {
                return Err(Completion::status(with_dnr(
                    status::SGL_DATA_LENGTH_INVALID,
                )));
            }
            let mut cur = vec![0u8; len as usize];
            ns.volume
                .read(off, &mut cur)
                .map_err(|e| io_status(ctrl, "compare", e, false))?;
            if cur != req.data {
                return Err(Completion::status(with_dnr(status::COMPARE_FAILURE)));
            }
            Ok(Completion::ok())
        }
        opc => {
            log::debug!(
                "nvmf: controller {}: I/O opcode {opc:#04x} is not supported",
                ctrl.id
            );
            Err(Completion::status(with_dnr(status::INVALID_OPCODE)))
        }
    }
}

/// A fused Compare (first) + Write (second): atomically, write only if the
/// compare matches. Returns the completions of both.
pub(crate) fn execute_fused(
    ctrl: &Controller,
    cmp: &Request,
    wr: &Request,
) -> (Completion, Completion) {
    let failed = || Completion::status(status::ABORTED_FAILED_FUSED);
    if cmp.sqe.opcode() != nvm::COMPARE || wr.sqe.opcode() != nvm::WRITE {
        let bad = Completion::status(with_dnr(status::INVALID_FIELD));
        return (bad.clone(), bad);
    }
    if cmp.sqe.nsid() != wr.sqe.nsid()
        || cmp.sqe.slba() != wr.sqe.slba()
        || cmp.sqe.nlb() != wr.sqe.nlb()
    {
        return (
            Completion::status(with_dnr(status::INVALID_FIELD)),
            failed(),
        );
    }
    let r = (|| {
        let ns = namespace(ctrl, cmp.sqe.nsid())?;
        let (off, len, _) = byte_range(
            &ns,
            cmp.sqe.slba(),
            cmp.sqe.nlb() as u64,
            Some(ctrl.opts.max_io_size as u64),
        )?;
        if cmp.data.len() as u64 != len || wr.data.len() as u64 != len {
            return Err(Completion::status(with_dnr(
                status::SGL_DATA_LENGTH_INVALID,
            )));
        }
        ns.volume
            .compare_and_write(off, &cmp.data, &wr.data)
            .map_err(|e| io_status(ctrl, "compare and write", e, true))
    })();
    match r {
        Ok(()) => (Completion::ok(), Completion::ok()),
        Err(c) => (c, failed()),
    }
}
