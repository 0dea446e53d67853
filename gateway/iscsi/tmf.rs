//! Task management functions (RFC 7143 11.5, SAM-5 7): aborting tasks and
//! resetting logical units or the target. A function answers only after
//! every task it terminates has stopped, as RFC 7143 4.2.3.3 requires.

use super::pdu::{sn_lt, TmfReq};
use super::session::{Session, TaskCtl};
use super::target::IscsiTarget;
use crate::scsi::lun::ResetKind;
use crate::scsi::{decode_lun, Asc};
use std::sync::Arc;

pub mod function {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LOGICAL_UNIT_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;
}

pub mod response {
    pub const COMPLETE: u8 = 0;
    pub const NO_TASK: u8 = 1;
    pub const NO_LUN: u8 = 2;
    pub const NO_REASSIGN: u8 = 4;
    pub const NOT_SUPPORTED: u8 = 5;
    pub const REJECTED: u8 = 255;
}

/// What a task management function did.
pub struct Outcome {
    pub response: u8,
    /// TARGET COLD RESET: after the response, drop every session of the node.
    pub drop_sessions: bool,
}

fn complete() -> Outcome {
    Outcome {
        response: response::COMPLETE,
        drop_sessions: false,
    }
}

fn only(r: u8) -> Outcome {
    Outcome {
        response: r,
        drop_sessions: false,
    }
}

/// Aborts `tasks` and waits until each has stopped (its coroutine will not
/// answer the initiator).
fn abort_and_wait(tasks: Vec<Arc<TaskCtl>>) {
    for t in &tasks {
        t.abort();
    }
    for t in &tasks {
        t.done.wait();
    }
}

/// Executes a task management request that arrived on `session`.
/// `exp_cmdsn` is the session's ExpCmdSN when the request arrived.
pub fn execute(
    target: &IscsiTarget,
    session: &Arc<Session>,
    req: &TmfReq,
    exp_cmdsn: u32,
) -> Outcome {
    let Some(node) = session.node().cloned() else {
        return only(response::NOT_SUPPORTED);
    };
    let lun_id = decode_lun(req.lun);
    let lun = lun_id.and_then(|id| node.lun(id).cloned());
    let needs_lun = matches!(
        req.function,
        function::ABORT_TASK
            | function::ABORT_TASK_SET
            | function::CLEAR_TASK_SET
            | function::LOGICAL_UNIT_RESET
    );
    if needs_lun && lun.is_none() {
        return only(response::NO_LUN);
    }
    let lun_id = lun_id.unwrap_or(0);
    let everyone = || target.sessions_of(&node);
    match req.function {
        function::ABORT_TASK => match session.task(req.ref_itt) {
            Some(t) if t.lun == lun_id => {
                log::info!(
                    "iscsi: ABORT TASK itt {:#x} (tsih {})",
                    req.ref_itt,
                    session.tsih
                );
                abort_and_wait(vec![t]);
                complete()
            }
            // Already answered (or never seen): RFC 7143 11.5.1 b) and c).
            _ => {
                if sn_lt(req.ref_cmdsn, exp_cmdsn) {
                    only(response::NO_TASK)
                } else {
                    complete()
                }
            }
        },
        function::ABORT_TASK_SET => {
            abort_and_wait(session.tasks_where(|t| t.lun == lun_id));
            complete()
        }
        function::CLEAR_TASK_SET => {
            let mut tasks = Vec::new();
            for s in everyone() {
                tasks.extend(s.tasks_where(|t| t.lun == lun_id));
            }
            abort_and_wait(tasks);
            if let (Some(l), Some(nx)) = (&lun, &session.nexus) {
                l.unit_attention_others(nx, Asc::COMMANDS_CLEARED_BY_ANOTHER_INITIATOR);
            }
            complete()
        }
        function::LOGICAL_UNIT_RESET => {
            log::info!(
                "iscsi: LOGICAL UNIT RESET of {} lun {lun_id} by {}",
                node.name,
                session.initiator_name
            );
            let mut tasks = Vec::new();
            for s in everyone() {
                tasks.extend(s.tasks_where(|t| t.lun == lun_id));
            }
            abort_and_wait(tasks);
            if let Some(l) = &lun {
                l.reset(ResetKind::LogicalUnit);
            }
            complete()
        }
        function::TARGET_WARM_RESET | function::TARGET_COLD_RESET => {
            let cold = req.function == function::TARGET_COLD_RESET;
            log::info!(
                "iscsi: TARGET {} RESET of {} by {}",
                if cold { "COLD" } else { "WARM" },
                node.name,
                session.initiator_name
            );
            let mut tasks = Vec::new();
            for s in everyone() {
                tasks.extend(s.tasks_where(|_| true));
            }
            abort_and_wait(tasks);
            for l in node.luns() {
                l.lun.reset(if cold {
                    ResetKind::TargetCold
                } else {
                    ResetKind::TargetWarm
                });
            }
            Outcome {
                response: response::COMPLETE,
                drop_sessions: cold,
            }
        }
        function::CLEAR_ACA => only(response::NOT_SUPPORTED),
        // ERL 0: no task reassignment (RFC 7143 11.5.1).
        function::TASK_REASSIGN => only(response::NO_REASSIGN),
        _ => only(response::NOT_SUPPORTED),
    }
}
