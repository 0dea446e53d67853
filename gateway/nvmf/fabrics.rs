//! Fabrics commands: Connect (which creates a controller or joins a queue
//! to one), Property Get/Set (the controller's registers), Disconnect.

use super::capsule::{connect_field, ConnectData, Sqe};
use super::controller::Controller;
use super::outbox::Completion;
use super::spec::{self, fctype, status, with_dnr};
use super::subsystem::ListenAddress;
use super::target::NvmfTarget;
use std::sync::Arc;

/// A successful Connect.
pub(crate) struct Connected {
    pub ctrl: Arc<Controller>,
    pub qid: u16,
    /// Entries of the queue (SQSIZE + 1).
    pub entries: u32,
    /// The host disabled SQ flow control (CATTR bit 2).
    pub sq_flow_disabled: bool,
}

/// "Connect Invalid Parameters" pointing at the offending field: IATTR 1
/// when it is in the Connect data, 0 when in the command.
fn invalid_param(in_data: bool, offset: u16) -> Completion {
    Completion {
        status: with_dnr(status::CONNECT_INVALID_PARAMETERS),
        dw0: ((in_data as u32) << 16) | offset as u32,
        ..Default::default()
    }
}

/// Handles a Connect capsule on a queue that is not connected yet.
pub(crate) fn connect(
    target: &NvmfTarget,
    listener: &ListenAddress,
    sqe: &Sqe,
    data: &[u8],
) -> Result<Connected, Completion> {
    if sqe.connect_recfmt() != 0 {
        log::warn!(
            "nvmf: Connect with record format {} refused",
            sqe.connect_recfmt()
        );
        return Err(Completion {
            status: with_dnr(status::CONNECT_INCOMPATIBLE_FORMAT),
            ..Default::default()
        });
    }
    let d = ConnectData::parse(data).map_err(|(off, why)| {
        log::warn!("nvmf: Connect from {listener}: {why}");
        invalid_param(true, off)
    })?;
    let opts = target
        .transport()
        .ok_or_else(|| Completion::status(with_dnr(status::INTERNAL_ERROR)))?;
    let Some(subsys) = target
        .subsystem(&d.subnqn)
        .filter(|s| s.reachable_through(listener))
    else {
        log::warn!(
            "nvmf: host {} asked for subsystem {} which is not served on {listener}",
            d.hostnqn,
            d.subnqn
        );
        return Err(invalid_param(true, connect_field::SUBNQN));
    };
    if !subsys.host_allowed(&d.hostnqn) {
        log::warn!(
            "nvmf: host {} is not allowed to connect to {}",
            d.hostnqn,
            subsys.nqn
        );
        return Err(Completion::status(with_dnr(status::CONNECT_INVALID_HOST)));
    }
    let qid = sqe.connect_qid();
    let sqsize = sqe.connect_sqsize() as u32;
    let sq_flow_disabled = sqe.connect_cattr() & 0x4 != 0;
    if qid == 0 {
        // A new controller (dynamic model: the host asks for 0xFFFF).
        if d.cntlid != 0xffff {
            log::warn!(
                "nvmf: host {} asked for static controller {} (only the dynamic model is served)",
                d.hostnqn,
                d.cntlid
            );
            return Err(invalid_param(true, connect_field::CNTLID));
        }
        if sqsize == 0 || sqsize >= opts.max_aq_depth as u32 {
            return Err(invalid_param(false, connect_field::SQSIZE));
        }
        let Some(id) = subsys.allocate_cntlid() else {
            log::warn!(
                "nvmf: {} has no free controller id in {}..={}",
                subsys.nqn,
                subsys.min_cntlid,
                subsys.max_cntlid
            );
            return Err(Completion::status(status::CONNECT_CONTROLLER_BUSY));
        };
        // KATO is in milliseconds; Linux sends 0 for a one-shot discovery.
        let ctrl = Controller::new(
            id,
            subsys.clone(),
            d.hostnqn,
            d.hostid,
            listener.clone(),
            opts,
            sqe.connect_kato(),
        );
        subsys.register_controller(&ctrl);
        ctrl.touch();
        log::info!(
            "nvmf: controller {id} of {} created for host {} on {listener} (KATO {} ms)",
            subsys.nqn,
            ctrl.hostnqn,
            ctrl.kato_ms()
        );
        return Ok(Connected {
            ctrl,
            qid,
            entries: sqsize + 1,
            sq_flow_disabled,
        });
    }
    if subsys.is_discovery() {
        return Err(invalid_param(false, connect_field::QID));
    }
    let Some(ctrl) = subsys
        .controller(d.cntlid)
        .filter(|c| c.hostnqn == d.hostnqn && !c.is_dead())
    else {
        log::warn!(
            "nvmf: I/O queue {qid} of host {} names controller {} which it does not own",
            d.hostnqn,
            d.cntlid
        );
        return Err(invalid_param(true, connect_field::CNTLID));
    };
    if !ctrl.is_ready() {
        log::warn!(
            "nvmf: I/O queue {qid} for controller {} before it is enabled",
            ctrl.id
        );
        return Err(Completion::status(with_dnr(status::COMMAND_SEQUENCE_ERROR)));
    }
    if qid > ctrl.io_queues() || ctrl.has_queue(qid) {
        log::warn!(
            "nvmf: controller {}: I/O queue {qid} is beyond the {} granted or already connected",
            ctrl.id,
            ctrl.io_queues()
        );
        return Err(invalid_param(false, connect_field::QID));
    }
    if sqsize == 0 || sqsize >= opts.max_queue_depth as u32 {
        return Err(invalid_param(false, connect_field::SQSIZE));
    }
    ctrl.touch();
    Ok(Connected {
        ctrl,
        qid,
        entries: sqsize + 1,
        sq_flow_disabled,
    })
}

/// Fabrics commands on a connected queue: Property Get/Set on the admin
/// queue, Disconnect on any. Returns the completion and whether the queue
/// should close after it.
pub(crate) fn execute(ctrl: &Controller, qid: u16, sqe: &Sqe) -> (Completion, bool) {
    let eight = sqe.prop_attrib() & 1 != 0;
    match (sqe.fctype(), qid) {
        (fctype::PROPERTY_GET, 0) => match ctrl.property_get(sqe.prop_offset(), eight) {
            Ok(v) => (
                Completion {
                    dw0: v as u32,
                    dw1: (v >> 32) as u32,
                    ..Default::default()
                },
                false,
            ),
            Err(s) => (Completion::status(s), false),
        },
        (fctype::PROPERTY_SET, 0) => {
            match ctrl.property_set(sqe.prop_offset(), eight, sqe.prop_value()) {
                Ok(()) => (Completion::ok(), false),
                Err(s) => (Completion::status(s), false),
            }
        }
        (fctype::DISCONNECT, _) => (Completion::ok(), true),
        (fctype::CONNECT, _) => (
            Completion::status(with_dnr(status::COMMAND_SEQUENCE_ERROR)),
            false,
        ),
        (fctype::AUTH_SEND | fctype::AUTH_RECV, _) => {
            (Completion::status(with_dnr(status::INVALID_FIELD)), false)
        }
        _ => (Completion::status(with_dnr(status::INVALID_OPCODE)), false),
    }
}

/// Whether a discovery controller accepts admin opcode `opc`.
pub(crate) fn discovery_allows(opc: u8) -> bool {
    use spec::admin::*;
    matches!(
        opc,
        GET_LOG_PAGE
            | IDENTIFY
            | SET_FEATURES
            | GET_FEATURES
            | ASYNC_EVENT_REQUEST
            | KEEP_ALIVE
            | FABRICS
    )
}
