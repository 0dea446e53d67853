//! Admin commands (other than fabrics commands): Identify, Get Log Page,
//! Set/Get Features, Asynchronous Event Request, Keep Alive, Abort.

use super::ana;
use super::capsule::Sqe;
use super::controller::Controller;
use super::discovery;
use super::fabrics;
use super::identify;
use super::outbox::Completion;
use super::queue::Request;
use super::spec::{admin, cns, fid, lid, status, with_dnr};
use super::target::NvmfTarget;

/// Runs an admin command. `None`: it completes later (an AER).
pub(crate) fn execute(target: &NvmfTarget, ctrl: &Controller, req: &Request) -> Option<Completion> {
    let sqe = &req.sqe;
    let opc = sqe.opcode();
    if ctrl.subsys.is_discovery() && !fabrics::discovery_allows(opc) {
        return Some(Completion::status(with_dnr(status::INVALID_OPCODE)));
    }
    Some(match opc {
        admin::IDENTIFY => identify(ctrl, sqe),
        admin::GET_LOG_PAGE => get_log_page(target, ctrl, sqe),
        admin::SET_FEATURES => set_features(ctrl, sqe),
        admin::GET_FEATURES => get_features(ctrl, sqe),
        admin::ASYNC_EVENT_REQUEST => return ctrl.push_aer(sqe.cid()),
        // The reader already counted it as a sign of life.
        admin::KEEP_ALIVE => Completion::ok(),
        // Commands complete too fast to abort: "not aborted" (DW0 bit 0).
        admin::ABORT => Completion::dw0(1),
        _ => {
            log::debug!(
                "nvmf: controller {}: admin opcode {opc:#04x} is not supported",
                ctrl.id
            );
            Completion::status(with_dnr(status::INVALID_OPCODE))
        }
    })
}

fn identify(ctrl: &Controller, sqe: &Sqe) -> Completion {
    let cns = (sqe.cdw(10) & 0xff) as u8;
    let nsid = sqe.nsid();
    let s = &ctrl.subsys;
    if s.is_discovery() && cns != cns::CONTROLLER {
        return Completion::status(with_dnr(status::INVALID_FIELD));
    }
    match cns {
        cns::CONTROLLER => Completion::data(identify::controller(ctrl)),
        cns::NAMESPACE => {
            if nsid == 0 || nsid > s.max_namespaces {
                return Completion::status(with_dnr(status::INVALID_NAMESPACE));
            }
            // An inactive id reads as zeroes.
            Completion::data(
                s.namespace(nsid)
                    .map(|ns| identify::namespace(&ns, s.ana_reporting))
                    .unwrap_or_else(|| vec![0u8; 4096]),
            )
        }
        cns::ACTIVE_NS_LIST => {
            if nsid >= 0xffff_fffe {
                return Completion::status(with_dnr(status::INVALID_NAMESPACE));
            }
            Completion::data(identify::active_ns_list(
                s.namespaces().iter().map(|ns| ns.nsid),
                nsid,
            ))
        }
        cns::NS_ID_DESCRIPTORS => match s.namespace(nsid) {
            Some(ns) => Completion::data(identify::ns_descriptors(&ns)),
            None => Completion::status(with_dnr(status::INVALID_NAMESPACE)),
        },
        // NVM command set specific controller data: no limits to report
        // (zeroes), which Linux reads from NVMe 1.3 on.
        cns::CS_CONTROLLER if sqe.cdw(11) >> 24 == 0 => Completion::data(vec![0u8; 4096]),
        _ => Completion::status(with_dnr(status::INVALID_FIELD)),
    }
}

fn get_log_page(target: &NvmfTarget, ctrl: &Controller, sqe: &Sqe) -> Completion {
    let cdw10 = sqe.cdw(10);
    let id = (cdw10 & 0xff) as u8;
    let lsp = ((cdw10 >> 8) & 0xf) as u8;
    let rae = cdw10 & (1 << 15) != 0;
    let numd = (((sqe.cdw(11) & 0xffff) as u64) << 16 | (cdw10 >> 16) as u64) + 1;
    let len = (numd * 4) as usize;
    let offset = sqe.cdw(12) as u64 | (sqe.cdw(13) as u64) << 32;
    if !offset.is_multiple_of(4) || len > ctrl.opts.max_io_size as usize {
        return Completion::status(with_dnr(status::INVALID_FIELD));
    }
    let s = &ctrl.subsys;
    let page = match (id, s.is_discovery()) {
        (lid::DISCOVERY, true) => discovery::log_page(target, &ctrl.hostnqn),
        (lid::ERROR, _) => vec![0u8; 64],
        (lid::SMART, false) => smart_log(),
        (lid::FIRMWARE_SLOT, false) => firmware_log(),
        (lid::CHANGED_NS_LIST, false) => {
            let p = ctrl.changed_ns_log();
            ctrl.log_read(id, rae);
            p
        }
        (lid::ANA, false) if s.ana_reporting => {
            let p = ana::log_page(s, ctrl.ana_change_count(), lsp & 1 != 0);
            ctrl.log_read(id, rae);
            p
        }
        _ => return Completion::status(with_dnr(status::INVALID_LOG_PAGE)),
    };
    if offset > page.len() as u64 {
        return Completion::status(with_dnr(status::INVALID_FIELD));
    }
    let start = offset as usize;
    let end = (start + len).min(page.len());
    let mut data = page[start..end].to_vec();
    data.resize(len, 0);
    Completion::data(data)
}

fn smart_log() -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[1..3].copy_from_slice(&298u16.to_le_bytes()); // composite temperature, K
    b[3] = 100; // available spare
    b[4] = 10; // available spare threshold
    b
}

fn firmware_log() -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[0] = 1; // active slot 1
    let rev = env!("CARGO_PKG_VERSION").as_bytes();
    b[8..16].fill(b' ');
    b[8..8 + rev.len().min(8)].copy_from_slice(&rev[..rev.len().min(8)]);
    b
}

fn set_features(ctrl: &Controller, sqe: &Sqe) -> Completion {
    let cdw10 = sqe.cdw(10);
    if cdw10 & (1 << 31) != 0 {
        return Completion::status(with_dnr(status::FEATURE_NOT_SAVEABLE));
    }
    let v = sqe.cdw(11);
    match (cdw10 & 0xff) as u8 {
        fid::NUMBER_OF_QUEUES => {
            let (nsq, ncq) = (v & 0xffff, v >> 16);
            if nsq == 0xffff || ncq == 0xffff {
                return Completion::status(with_dnr(status::INVALID_FIELD));
            }
            let n = ctrl.grant_io_queues(nsq.min(ncq) + 1) as u32 - 1;
            Completion::dw0(n | n << 16)
        }
        fid::ASYNC_EVENT_CONFIG => {
            ctrl.set_aec(v);
            Completion::ok()
        }
        fid::KEEP_ALIVE_TIMER => {
            ctrl.set_kato_ms(v);
            Completion::ok()
        }
        // Accepted and without effect on a fabrics target.
        fid::ARBITRATION
        | fid::POWER_MANAGEMENT
        | fid::TEMPERATURE_THRESHOLD
        | fid::ERROR_RECOVERY
        | fid::WRITE_ATOMICITY => Completion::ok(),
        // The host identifier comes with Connect.
        fid::HOST_IDENTIFIER => Completion::status(with_dnr(status::COMMAND_SEQUENCE_ERROR)),
        _ => Completion::status(with_dnr(status::INVALID_FIELD)),
    }
}

fn get_features(ctrl: &Controller, sqe: &Sqe) -> Completion {
    let cdw10 = sqe.cdw(10);
    let sel = (cdw10 >> 8) & 0x7;
    if sel == 3 {
        // Supported capabilities: nothing saveable, per namespace or changeable
        // beyond what Set Features takes.
        return Completion::dw0(0);
    }
    match (cdw10 & 0xff) as u8 {
        fid::NUMBER_OF_QUEUES => {
            let n = ctrl.io_queues() as u32 - 1;
            Completion::dw0(n | n << 16)
        }
        fid::ASYNC_EVENT_CONFIG => Completion::dw0(ctrl.aec()),
        fid::KEEP_ALIVE_TIMER => Completion::dw0(ctrl.kato_ms()),
        fid::TEMPERATURE_THRESHOLD => Completion::dw0(0x0157),
        fid::ARBITRATION
        | fid::POWER_MANAGEMENT
        | fid::ERROR_RECOVERY
        | fid::WRITE_ATOMICITY
        | fid::INTERRUPT_COALESCING => Completion::dw0(0),
        fid::HOST_IDENTIFIER => Completion::data(ctrl.hostid.to_vec()),
        fid::VOLATILE_WRITE_CACHE | fid::INTERRUPT_VECTOR_CONFIG => {
            Completion::status(with_dnr(status::INVALID_FIELD))
        }
        _ => Completion::status(with_dnr(status::INVALID_FIELD)),
    }
}
