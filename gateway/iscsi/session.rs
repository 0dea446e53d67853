//! Sessions (RFC 7143 4.4): the I_T nexus with its CmdSN window, its
//! tasks and its connections (one or several, MC/S). Shared by the
//! connections' coroutines, which may run on different reactors, so
//! everything here is `Send + Sync` behind short `std` locks.

use super::params::SessionParams;
use super::pdu::{sn_le, sn_lt};
use super::target::TargetNode;
use crate::scsi::Nexus;
use ferrite_engine::rt::sync::Event;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// What a session is for.
#[derive(Clone)]
pub enum SessionKind {
    Discovery,
    Normal(Arc<TargetNode>),
}

/// The command window of a session (RFC 7143 4.2.2.1).
#[derive(Debug)]
struct Window {
    exp_cmdsn: u32,
    /// Highest MaxCmdSN announced: it never goes back.
    max_cmdsn: u32,
    queue_depth: u32,
    /// Non-immediate commands received and not yet answered.
    in_flight: u32,
    /// CmdSNs received ahead of ExpCmdSN (only with several connections).
    ahead: BTreeSet<u32>,
}

/// What to do with a command, by its CmdSN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdSnVerdict {
    Accept,
    /// Outside the window: silently ignored, as RFC 7143 4.2.2.1 says.
    Ignore,
}

/// A task the session knows about, for task management.
pub struct TaskCtl {
    pub itt: u32,
    pub lun: u64,
    pub cmdsn: u32,
    /// Which connection (global id) carries it.
    pub conn_id: u64,
    pub aborted: AtomicBool,
    /// Wakes the task's coroutine (data arrived, abort, connection gone).
    pub wake: Event,
    /// Set when the task's coroutine is finished with it.
    pub done: Event,
}

impl TaskCtl {
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        self.wake.set();
    }

    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }
}

/// What others may do to a connection: shut its socket so its reader
/// wakes up and tears it down.
pub struct ConnShared {
    pub id: u64,
    /// The CID, known from the first Login Request.
    pub cid: AtomicU16,
    pub reactor: usize,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// A duplicate of the socket, only for `shutdown` from another thread.
    pub dup: Mutex<Option<std::net::TcpStream>>,
    pub closed: AtomicBool,
    /// Set by TARGET COLD RESET and reinstatement: end after the current PDU.
    pub kill_requested: AtomicBool,
}

impl ConnShared {
    pub fn new(
        id: u64,
        reactor: usize,
        peer: SocketAddr,
        local: SocketAddr,
        dup: Option<std::net::TcpStream>,
    ) -> Self {
        Self {
            id,
            cid: AtomicU16::new(0),
            reactor,
            peer,
            local,
            dup: Mutex::new(dup),
            closed: AtomicBool::new(false),
            kill_requested: AtomicBool::new(false),
        }
    }

    pub fn cid(&self) -> u16 {
        self.cid.load(Ordering::Acquire)
    }

    /// Closes the connection from anywhere: its reader sees EOF.
    pub fn kill(&self) {
        self.kill_requested.store(true, Ordering::Release);
        if let Some(s) = self.dup.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

pub struct Session {
    pub tsih: u16,
    pub isid: [u8; 6],
    pub initiator_name: String,
    pub kind: SessionKind,
    pub tpgt: u16,
    pub params: SessionParams,
    /// The I_T nexus (normal sessions).
    pub nexus: Option<Nexus>,
    window: Mutex<Window>,
    tasks: Mutex<HashMap<u32, Arc<TaskCtl>>>,
    conns: Mutex<Vec<Arc<ConnShared>>>,
    nexus_released: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tsih: u16,
        isid: [u8; 6],
        initiator_name: String,
        kind: SessionKind,
        tpgt: u16,
        params: SessionParams,
        nexus: Option<Nexus>,
        cmdsn: u32,
        queue_depth: u32,
    ) -> Arc<Self> {
        let qd = queue_depth.max(1);
        Arc::new(Self {
            tsih,
            isid,
            initiator_name,
            kind,
            tpgt,
            params,
            nexus,
            window: Mutex::new(Window {
                exp_cmdsn: cmdsn,
                max_cmdsn: cmdsn.wrapping_add(qd - 1),
                queue_depth: qd,
                in_flight: 0,
                ahead: BTreeSet::new(),
            }),
            tasks: Mutex::new(HashMap::new()),
            conns: Mutex::new(Vec::new()),
            nexus_released: AtomicBool::new(false),
        })
    }

    pub fn node(&self) -> Option<&Arc<TargetNode>> {
        match &self.kind {
            SessionKind::Normal(n) => Some(n),
            SessionKind::Discovery => None,
        }
    }

    pub fn is_discovery(&self) -> bool {
        matches!(self.kind, SessionKind::Discovery)
    }

    /// Checks a command's CmdSN and, if it is in the window, counts it.
    pub fn admit(&self, cmdsn: u32, immediate: bool) -> CmdSnVerdict {
        let mut w = lock(&self.window);
        if immediate {
            return CmdSnVerdict::Accept;
        }
        if !(sn_le(w.exp_cmdsn, cmdsn) && sn_le(cmdsn, w.max_cmdsn)) {
            return CmdSnVerdict::Ignore;
        }
        if cmdsn == w.exp_cmdsn {
            w.exp_cmdsn = w.exp_cmdsn.wrapping_add(1);
            loop {
                let e = w.exp_cmdsn;
                if !w.ahead.remove(&e) {
                    break;
                }
                w.exp_cmdsn = e.wrapping_add(1);
            }
        } else if !w.ahead.insert(cmdsn) {
            // A duplicate of a command already received: ignore it.
            return CmdSnVerdict::Ignore;
        }
        w.in_flight += 1;
        CmdSnVerdict::Accept
    }

    /// A non-immediate command admitted with [`Self::admit`] is answered:
    /// its slot in the window opens again.
    pub fn command_done(&self) {
        let mut w = lock(&self.window);
        w.in_flight = w.in_flight.saturating_sub(1);
    }

    /// ExpCmdSN and MaxCmdSN to stamp into an outgoing PDU.
    pub fn window(&self) -> (u32, u32) {
        let mut w = lock(&self.window);
        let open = w.queue_depth.saturating_sub(w.in_flight);
        let max = w.exp_cmdsn.wrapping_add(open).wrapping_sub(1);
        if sn_lt(w.max_cmdsn, max) {
            w.max_cmdsn = max;
        }
        (w.exp_cmdsn, w.max_cmdsn)
    }

    /// Registers a task; `false` if its ITT is already in use.
    pub fn add_task(&self, t: Arc<TaskCtl>) -> bool {
        let mut tasks = lock(&self.tasks);
        if tasks.contains_key(&t.itt) {
            return false;
        }
        tasks.insert(t.itt, t);
        true
    }

    pub fn remove_task(&self, itt: u32) {
        lock(&self.tasks).remove(&itt);
    }

    pub fn task(&self, itt: u32) -> Option<Arc<TaskCtl>> {
        lock(&self.tasks).get(&itt).cloned()
    }

    /// Tasks matching `pred` (snapshot).
    pub fn tasks_where(&self, pred: impl Fn(&TaskCtl) -> bool) -> Vec<Arc<TaskCtl>> {
        lock(&self.tasks)
            .values()
            .filter(|t| pred(t))
            .cloned()
            .collect()
    }

    pub fn add_conn(&self, c: Arc<ConnShared>) {
        lock(&self.conns).push(c);
    }

    /// Removes a connection; returns how many remain.
    pub fn remove_conn(&self, id: u64) -> usize {
        let mut c = lock(&self.conns);
        c.retain(|x| x.id != id);
        c.len()
    }

    pub fn conns(&self) -> Vec<Arc<ConnShared>> {
        lock(&self.conns).clone()
    }

    pub fn conn_count(&self) -> usize {
        lock(&self.conns).len()
    }

    /// I_T nexus loss, once: every LUN forgets the nexus (SPC-2
    /// reservation, unit attentions). Called when the last connection
    /// goes and, earlier, when a new login reinstates the session.
    pub fn release_nexus(&self) {
        if self.nexus_released.swap(true, Ordering::AcqRel) {
            return;
        }
        if let (Some(node), Some(nexus)) = (self.node(), &self.nexus) {
            for l in node.luns() {
                l.lun.detach(nexus);
            }
        }
    }

    /// Closes every connection (logout of the session, reinstatement,
    /// target reset, node deletion).
    pub fn kill(&self) {
        for c in self.conns() {
            c.kill();
        }
        for t in self.tasks_where(|_| true) {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(qd: u32) -> Arc<Session> {
        Session::new(
            1,
            [0; 6],
            "iqn.i".into(),
            SessionKind::Discovery,
            1,
            SessionParams::default(),
            None,
            10,
            qd,
        )
    }

    #[test]
    fn window_admits_in_range_and_ignores_outside() {
        let s = s(4);
        assert_eq!(s.window(), (10, 13));
        assert_eq!(s.admit(9, false), CmdSnVerdict::Ignore);
        assert_eq!(s.admit(14, false), CmdSnVerdict::Ignore);
        assert_eq!(s.admit(10, false), CmdSnVerdict::Accept);
        assert_eq!(s.window(), (11, 13), "one in flight keeps MaxCmdSN");
        s.command_done();
        assert_eq!(s.window(), (11, 14));
        // Out of order (MC/S): 12 before 11.
        assert_eq!(s.admit(12, false), CmdSnVerdict::Accept);
        assert_eq!(s.admit(12, false), CmdSnVerdict::Ignore);
        assert_eq!(s.admit(11, false), CmdSnVerdict::Accept);
        assert_eq!(s.window().0, 13);
        assert_eq!(s.admit(99, true), CmdSnVerdict::Accept, "immediate");
    }

    #[test]
    fn max_cmdsn_never_goes_back() {
        let s = s(2);
        assert_eq!(s.admit(10, false), CmdSnVerdict::Accept);
        assert_eq!(s.admit(11, false), CmdSnVerdict::Accept);
        assert_eq!(s.window(), (12, 11), "closed window");
        s.command_done();
        s.command_done();
        assert_eq!(s.window(), (12, 13));
    }
}
