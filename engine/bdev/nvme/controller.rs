//! One NVMe controller behind VFIO: bring-up, the admin queue, I/O queue
//! creation and deletion, timeouts' last resort (controller reset), and
//! shutdown.
//!
//! # States
//! `Ready` → `Resetting` → `Ready` (the epoch is bumped: every I/O queue
//! of the old epoch no longer exists on the device; its owner fails what was
//! in flight and creates it again) or → `Dead` (bus mastering is switched
//! off, so the device can no longer touch memory, and every request fails).
//! `ShutDown` after a shutdown notification (drop, process exit, or an
//! explicit [`Controller::shutdown`]).
//!
//! # Waiting
//! Admin commands are rare (bring-up, queue creation, abort, reset): they
//! are polled to completion by their caller. On a reactor the caller yields
//! between polls (other coroutines run); on any other thread it sleeps.

use super::cmd::{self, admin, Command, Completion};
use super::mem::{ArenaMap, DmaAlloc, DmaSlice};
use super::queue::{Queue, QueueMem, LIST_PAGE};
use super::regs::{self, Cap};
use super::Options;
use crate::rt;
use ferrite_sys::eventfd::EventFd;
use ferrite_sys::mmio::Mmio;
use ferrite_sys::pci::{self, PciAddress};
use ferrite_sys::vfio::{self, Container, Device};
use std::io;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

const ADMIN_ENTRIES: u16 = 32;

/// Controller states (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Ready = 0,
    Resetting = 1,
    Dead = 2,
    ShutDown = 3,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Ready,
            1 => State::Resetting,
            2 => State::Dead,
            _ => State::ShutDown,
        }
    }
}

/// What Identify Controller said.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    pub vendor: u16,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    /// Maximum data transfer size in bytes (`None`: no limit).
    pub mdts_bytes: Option<usize>,
    pub cntlid: u16,
    pub version: u32,
    /// Number of namespace ids.
    pub nn: u32,
    /// Optional NVM command support (bit 2: DSM, bit 3: write zeroes).
    pub oncs: u16,
    /// A volatile write cache is present (flush matters).
    pub vwc: bool,
    /// SGL support.
    pub sgls: u32,
}

impl Identity {
    fn parse(d: &[u8], mps: usize) -> Identity {
        let text = |r: std::ops::Range<usize>| String::from_utf8_lossy(&d[r]).trim().to_string();
        let u16_at = |o: usize| u16::from_le_bytes([d[o], d[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([d[o], d[o + 1], d[o + 2], d[o + 3]]);
        let mdts = d[77];
        Identity {
            vendor: u16_at(0),
            serial: text(4..24),
            model: text(24..64),
            firmware: text(64..72),
            mdts_bytes: (mdts != 0).then(|| mps << mdts.min(20)),
            cntlid: u16_at(78),
            version: u32_at(80),
            nn: u32_at(516),
            oncs: u16_at(520),
            vwc: d[525] & 1 == 1,
            sgls: u32_at(536),
        }
    }

    pub fn supports_dsm(&self) -> bool {
        self.oncs & (1 << 2) != 0
    }
    pub fn supports_write_zeroes(&self) -> bool {
        self.oncs & (1 << 3) != 0
    }
    pub fn supports_sgl(&self) -> bool {
        self.sgls & 3 != 0
    }
}

struct AdminQ {
    q: Queue<()>,
}

/// One attached controller.
pub struct Controller {
    pub(super) id: u64,
    /// `nvme 0000:00:03.0`, the prefix of every message.
    pub name: String,
    pub addr: PciAddress,
    pub(super) opts: Options,
    pub(super) cap: Cap,
    pub ident: Identity,
    pub(super) bar: Arc<Mmio>,
    pub(super) alloc: DmaAlloc,
    pub(super) arena: Option<ArenaMap>,
    /// Largest transfer of one command (bytes, a multiple of 4 KiB).
    pub(super) max_transfer: usize,
    admin: Mutex<AdminQ>,
    state: AtomicU8,
    epoch: AtomicU64,
    dead_reason: Mutex<String>,
    /// I/O queues the controller granted (queue ids 1..=granted).
    granted: AtomicU16,
    qids: Mutex<Vec<bool>>,
    /// MSI-X eventfds by vector (= queue id); empty without interrupts.
    irq_fds: Vec<Arc<EventFd>>,
    /// Wakes a queue owner without interrupts (reset, death), by queue id.
    kick_fds: Mutex<Vec<Arc<EventFd>>>,
    reset_lock: Mutex<()>,
    pub(super) resets: AtomicU64,
    /// Commands by data pointer: PRP entries only, PRP list, SGL, bounced.
    dptr: [AtomicU64; 4],
    pub(super) timeouts: AtomicU64,
    pub(super) shared: Mutex<Option<super::bdev::SharedQueue>>,
    device: Device,
    // Last: the container keeps driver memory alive until its fds close.
    _container: Arc<Container>,
}

/// Whether the caller is a coroutine on a reactor (where it must not block
/// the thread).
pub(super) fn on_reactor() -> bool {
    rt::in_coroutine() && rt::current_reactor().is_some()
}

/// One step of a polling wait: yield or sleep as the caller's context
/// allows, longer as the wait goes on.
pub(super) fn pause(spins: &mut u32) {
    *spins += 1;
    if on_reactor() {
        if *spins < 32 {
            rt::yield_now();
        } else {
            rt::sleep(Duration::from_micros(500));
        }
    } else if *spins < 32 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Locks a mutex without blocking a reactor thread: on a reactor the
/// caller yields while another coroutine holds it.
pub(super) fn lock_cooperative<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    if !on_reactor() {
        return m.lock().unwrap_or_else(|e| e.into_inner());
    }
    let mut spins = 0;
    loop {
        match m.try_lock() {
            Ok(g) => return g,
            Err(TryLockError::Poisoned(e)) => return e.into_inner(),
            Err(TryLockError::WouldBlock) => pause(&mut spins),
        }
    }
}

fn err(kind: io::ErrorKind, msg: String) -> io::Error {
    io::Error::new(kind, msg)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Controller {
    /// Takes over the controller at `addr` (bound to vfio-pci): VFIO setup,
    /// reset, admin queue, Identify, number of queues.
    pub fn attach(addr: PciAddress, opts: Options) -> io::Result<Arc<Controller>> {
        let name = format!("nvme {addr}");
        let ctx = |what: &str| {
            let name = name.clone();
            let what = what.to_string();
            move |e: io::Error| err(e.kind(), format!("{name}: {what}: {e}"))
        };
        if !addr.exists() {
            return Err(err(
                io::ErrorKind::NotFound,
                format!(
                    "{name}: no such PCI function ({} is missing)",
                    addr.sysfs().display()
                ),
            ));
        }
        let class = addr.class().map_err(ctx("PCI class"))?;
        if class >> 8 != 0x0108 {
            return Err(err(
                io::ErrorKind::InvalidInput,
                format!("{name}: PCI class {class:#08x} is not an NVMe controller (0x0108xx)"),
            ));
        }
        match addr.driver().as_deref() {
            Some("vfio-pci") => {}
            other => {
                return Err(err(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{name}: bound to {}, not vfio-pci: run `scripts/setup.sh {addr}` first",
                        other.unwrap_or("no driver")
                    ),
                ))
            }
        }
        let group = addr.iommu_group()?;
        let container = Arc::new(Container::open(&group).map_err(ctx("VFIO"))?);
        let device = container.device(&addr.to_string()).map_err(ctx("VFIO"))?;
        // Memory decoding for BAR0, bus mastering for DMA, no legacy INTx.
        let cmdreg = device.pci_command().map_err(ctx("PCI command register"))?;
        device
            .set_pci_command(
                cmdreg
                    | pci::PCI_COMMAND_MEMORY
                    | pci::PCI_COMMAND_MASTER
                    | pci::PCI_COMMAND_INTX_DISABLE,
            )
            .map_err(ctx("PCI command register"))?;
        let bar = Arc::new(
            device
                .map_region(vfio::PCI_BAR0_REGION_INDEX)
                .map_err(ctx("BAR0"))?,
        );
        let cap_raw = bar.read64(regs::CAP);
        if cap_raw == u64::MAX {
            return Err(err(
                io::ErrorKind::Other,
                format!("{name}: CAP reads all ones: the device does not answer"),
            ));
        }
        let cap = Cap::decode(cap_raw);
        if !cap.css_nvm {
            return Err(err(
                io::ErrorKind::Unsupported,
                format!("{name}: the NVM command set is not supported (CAP={cap_raw:#x})"),
            ));
        }
        if cap.mps_min_shift > 12 || cap.mps_max_shift < 12 {
            return Err(err(
                io::ErrorKind::Unsupported,
                format!("{name}: 4 KiB memory pages not supported (CAP={cap_raw:#x})"),
            ));
        }
        let max_qid = opts.max_io_queues.clamp(1, 1024);
        if !regs::bar_fits(&bar, max_qid, cap.dstrd) {
            return Err(err(
                io::ErrorKind::Other,
                format!(
                    "{name}: BAR0 of {} bytes is too small for the doorbells of {max_qid} queues",
                    bar.len()
                ),
            ));
        }
        let alloc = DmaAlloc::new(&name, container.clone())?;
        let vs = bar.read32(regs::VS);

        // Interrupts: one MSI-X vector per queue id, each an eventfd that
        // wakes the reactor owning the queue. Optional: without them queues
        // are polled on a short timer when the reactor would sleep.
        let mut irq_fds = Vec::new();
        if opts.interrupts != Some(false) {
            match device.irq_count(vfio::PCI_MSIX_IRQ_INDEX) {
                Ok(n) if n > 0 => {
                    let want = (n as usize).min(max_qid as usize + 1);
                    let fds: io::Result<Vec<Arc<EventFd>>> =
                        (0..want).map(|_| EventFd::new().map(Arc::new)).collect();
                    match fds.and_then(|fds| {
                        let raw: Vec<i32> = fds
                            .iter()
                            .map(|f| std::os::fd::AsRawFd::as_raw_fd(&**f))
                            .collect();
                        device.enable_irqs(vfio::PCI_MSIX_IRQ_INDEX, &raw)?;
                        Ok(fds)
                    }) {
                        Ok(fds) => irq_fds = fds,
                        Err(e) => log::warn!("{name}: no MSI-X interrupts ({e}); polling only"),
                    }
                }
                Ok(_) => log::info!("{name}: no MSI-X vectors; polling only"),
                Err(e) => log::warn!("{name}: MSI-X info: {e}; polling only"),
            }
        }

        let entries = ADMIN_ENTRIES.min(cap.mqes as u16);
        let amem = alloc_queue_mem(&alloc, entries)?;
        let aq = Queue::new(0, entries, amem, bar.clone(), cap.dstrd);
        let arena = alloc.map_arena();
        let ctrl = Controller {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.clone(),
            addr,
            opts,
            cap,
            ident: Identity::default(),
            bar,
            alloc,
            arena,
            max_transfer: 0,
            admin: Mutex::new(AdminQ { q: aq }),
            state: AtomicU8::new(State::Resetting as u8),
            epoch: AtomicU64::new(1),
            dead_reason: Mutex::new(String::new()),
            granted: AtomicU16::new(0),
            qids: Mutex::new(Vec::new()),
            irq_fds,
            kick_fds: Mutex::new(Vec::new()),
            reset_lock: Mutex::new(()),
            resets: AtomicU64::new(0),
            dptr: Default::default(),
            timeouts: AtomicU64::new(0),
            shared: Mutex::new(None),
            device,
            _container: container,
        };
        let mut ctrl = ctrl;
        {
            let mut a = ctrl.admin.lock().unwrap_or_else(|e| e.into_inner());
            ctrl.disable().map_err(ctx("reset"))?;
            ctrl.enable(&mut a).map_err(ctx("enable"))?;
            drop(a);
        }
        ctrl.ident = ctrl.identify_controller()?;
        let mps = 4096usize;
        let prp_max = super::prp::PRP_LIST_ENTRIES * mps;
        ctrl.max_transfer = ctrl.ident.mdts_bytes.unwrap_or(prp_max).min(prp_max);
        {
            let mut a = ctrl.admin.lock().unwrap_or_else(|e| e.into_inner());
            ctrl.set_num_queues(&mut a)?;
        }
        ctrl.state.store(State::Ready as u8, Ordering::Release);
        log::info!(
            "{name}: {} (serial {}, firmware {}), NVMe {}.{}, {} I/O queues of up to {} entries, max transfer {} KiB, {} namespace ids, {} interrupts, DMA via {}{}",
            ctrl.ident.model,
            ctrl.ident.serial,
            ctrl.ident.firmware,
            vs >> 16,
            vs >> 8 & 0xff,
            ctrl.granted.load(Ordering::Relaxed),
            cap.mqes,
            ctrl.max_transfer >> 10,
            ctrl.ident.nn,
            if ctrl.irq_fds.is_empty() { "no" } else { "MSI-X" },
            match ctrl.alloc.mode() {
                vfio::IommuMode::Type1 => "IOMMU type1 (IOVAs)",
                vfio::IommuMode::NoIommu => "no-IOMMU (physical addresses)",
            },
            if ctrl.arena.is_some() { "" } else { "; data buffers bounced" }
        );
        Ok(Arc::new(ctrl))
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Bumped by every successful reset.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Why the controller is dead or shut down, for errors.
    pub fn unusable(&self) -> Option<io::Error> {
        match self.state() {
            State::Dead => Some(err(
                io::ErrorKind::BrokenPipe,
                format!(
                    "{}: controller is dead ({})",
                    self.name,
                    self.dead_reason.lock().unwrap_or_else(|e| e.into_inner())
                ),
            )),
            State::ShutDown => Some(err(
                io::ErrorKind::BrokenPipe,
                format!("{}: controller was shut down", self.name),
            )),
            _ => None,
        }
    }

    pub fn csts(&self) -> u32 {
        self.bar.read32(regs::CSTS)
    }

    /// I/O queues the controller granted.
    pub fn io_queues(&self) -> u16 {
        self.granted.load(Ordering::Relaxed)
    }

    /// Controller resets so far (after timeouts or fatal status).
    pub fn reset_count(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }

    pub(super) fn count_dptr(&self, k: super::prp::Dptr) {
        let i = match k {
            super::prp::Dptr::Prp => 0,
            super::prp::Dptr::PrpList => 1,
            super::prp::Dptr::Sgl => 2,
        };
        self.dptr[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_dptr_bounce(&self) {
        self.dptr[3].fetch_add(1, Ordering::Relaxed);
    }

    /// Data commands so far by how their data was described:
    /// `(PRP entries only, PRP list, SGL, bounced)`.
    pub fn data_pointer_counts(&self) -> (u64, u64, u64, u64) {
        let l = |i: usize| self.dptr[i].load(Ordering::Relaxed);
        (l(0), l(1), l(2), l(3))
    }

    /// Timeouts so far.
    pub fn timeout_count(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    /// The IOMMU model in use.
    pub fn iommu_mode(&self) -> vfio::IommuMode {
        self.alloc.mode()
    }

    /// Whether MSI-X interrupts are set up.
    pub fn has_interrupts(&self) -> bool {
        !self.irq_fds.is_empty()
    }

    /// The PCI command register (for tests that take bus mastering away).
    pub fn pci_command(&self) -> io::Result<u16> {
        self.device.pci_command()
    }

    /// Writes the PCI command register (for tests).
    pub fn set_pci_command(&self, v: u16) -> io::Result<()> {
        self.device.set_pci_command(v)
    }

    fn wait_csts(&self, what: &str, done: impl Fn(u32) -> bool) -> io::Result<()> {
        let limit = Duration::from_millis(self.cap.timeout_ms.max(500));
        let start = Instant::now();
        let mut spins = 0;
        loop {
            let c = self.csts();
            if done(c) {
                return Ok(());
            }
            if c == u32::MAX {
                return Err(err(
                    io::ErrorKind::BrokenPipe,
                    format!("waiting for {what}: {}", regs::csts_text(c)),
                ));
            }
            if start.elapsed() > limit {
                return Err(err(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{what} not reached within CAP.TO ({limit:?}): {}",
                        regs::csts_text(c)
                    ),
                ));
            }
            pause(&mut spins);
        }
    }

    /// CC.EN = 0 and wait for CSTS.RDY = 0 (every queue is gone after it).
    fn disable(&self) -> io::Result<()> {
        let cc = self.bar.read32(regs::CC);
        if cc & regs::CC_EN != 0 {
            self.bar.write32(regs::CC, cc & !regs::CC_EN);
        }
        self.wait_csts("CSTS.RDY=0", |c| c & regs::CSTS_RDY == 0)
    }

    /// Programs the admin queue and enables the controller.
    fn enable(&self, a: &mut AdminQ) -> io::Result<()> {
        let stale = a.q.reset();
        drop(stale);
        let e = a.q.entries() as u32 - 1;
        self.bar.write32(regs::INTMS, u32::MAX);
        self.bar.write32(regs::AQA, e << 16 | e);
        self.bar.write64(regs::ASQ, a.q.mem.sq.iova);
        self.bar.write64(regs::ACQ, a.q.mem.cq.iova);
        self.bar.write32(regs::CC, regs::cc_enable());
        self.wait_csts("CSTS.RDY=1", |c| {
            c & regs::CSTS_RDY != 0 || c & regs::CSTS_CFS != 0
        })?;
        let c = self.csts();
        if c & regs::CSTS_CFS != 0 {
            return Err(err(
                io::ErrorKind::Other,
                format!("fatal status on enable: {}", regs::csts_text(c)),
            ));
        }
        Ok(())
    }

    /// Runs one admin command to completion with the admin queue held.
    fn admin_locked(&self, a: &mut AdminQ, cmd: Command) -> io::Result<Completion> {
        let what = cmd::admin_opcode_name(cmd.opcode());
        let Some(cid) = a.q.alloc_cid() else {
            // Only abandoned commands can fill it: start it afresh.
            return Err(err(
                io::ErrorKind::Other,
                format!("{}: admin queue full", self.name),
            ));
        };
        a.q.push(cid, cmd, ());
        a.q.ring();
        let start = Instant::now();
        let mut spins = 0;
        let mut out = Vec::new();
        loop {
            out.clear();
            a.q.reap(ADMIN_ENTRIES as usize, &mut out);
            if let Some((_, c)) = out.iter().find(|(_, c)| c.cid == cid) {
                if c.status.ok() {
                    return Ok(*c);
                }
                return Err(err(
                    io::ErrorKind::Other,
                    format!("{}: {what} failed: {}", self.name, c.status),
                ));
            }
            if spins % 16 == 15 {
                let c = self.csts();
                if c & regs::CSTS_CFS != 0 || c == u32::MAX {
                    return Err(err(
                        io::ErrorKind::Other,
                        format!(
                            "{}: {what}: controller fatal status, {}",
                            self.name,
                            regs::csts_text(c)
                        ),
                    ));
                }
            }
            if start.elapsed() > self.opts.admin_timeout {
                return Err(err(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{}: {what} timed out after {:?}",
                        self.name, self.opts.admin_timeout
                    ),
                ));
            }
            pause(&mut spins);
        }
    }

    /// Runs one admin command (the controller must be ready).
    pub fn admin(&self, cmd: Command) -> io::Result<Completion> {
        if let Some(e) = self.unusable() {
            return Err(e);
        }
        let mut a = lock_cooperative(&self.admin);
        self.admin_locked(&mut a, cmd)
    }

    fn identify(&self, cns: u32, nsid: u32) -> io::Result<Vec<u8>> {
        let buf = self.alloc.alloc(4096)?;
        let mut c = Command::new(admin::IDENTIFY, nsid);
        c.set_prp(buf.iova, 0);
        c.dw[10] = cns;
        let r = self.admin(c);
        let mut out = vec![0u8; 4096];
        buf.mem.read_bytes(buf.off, &mut out);
        self.alloc.free(buf);
        r.map(|_| out)
    }

    fn identify_controller(&self) -> io::Result<Identity> {
        let d = self.identify(cmd::CNS_CONTROLLER, 0)?;
        Ok(Identity::parse(&d, 4096))
    }

    /// Identify Namespace data of `nsid`.
    pub(super) fn identify_namespace(&self, nsid: u32) -> io::Result<Vec<u8>> {
        self.identify(cmd::CNS_NAMESPACE, nsid)
    }

    fn set_num_queues(&self, a: &mut AdminQ) -> io::Result<()> {
        let want = self.opts.max_io_queues.clamp(1, 1024) as u32 - 1;
        let mut c = Command::new(admin::SET_FEATURES, 0);
        c.dw[10] = cmd::FEAT_NUM_QUEUES;
        c.dw[11] = want << 16 | want;
        let r = self.admin_locked(a, c)?;
        let nsq = (r.result & 0xffff) + 1;
        let ncq = (r.result >> 16) + 1;
        let granted = nsq.min(ncq).min(want + 1) as u16;
        self.granted.store(granted, Ordering::Release);
        let mut q = self.qids.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() < granted as usize + 1 {
            q.resize(granted as usize + 1, false);
        }
        Ok(())
    }

    /// Takes a free I/O queue id.
    pub(super) fn alloc_qid(&self) -> Option<u16> {
        let granted = self.io_queues() as usize;
        let mut q = self.qids.lock().unwrap_or_else(|e| e.into_inner());
        (1..=granted.min(q.len().saturating_sub(1)))
            .find(|&i| !q[i])
            .map(|i| {
                q[i] = true;
                i as u16
            })
    }

    pub(super) fn free_qid(&self, qid: u16) {
        let mut q = self.qids.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(x) = q.get_mut(qid as usize) {
            *x = false;
        }
    }

    /// The eventfd that MSI-X vector `qid` signals, if interrupts are on.
    pub(super) fn irq_fd(&self, qid: u16) -> Option<Arc<EventFd>> {
        self.irq_fds.get(qid as usize).cloned()
    }

    /// Registers an eventfd to be signalled on reset and death (queues
    /// without an interrupt eventfd).
    pub(super) fn add_kick(&self, fd: Arc<EventFd>) {
        self.kick_fds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(fd);
    }

    fn kick_all(&self) {
        for f in &self.irq_fds {
            f.notify();
        }
        for f in self
            .kick_fds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            f.notify();
        }
    }

    /// Creates I/O completion queue and submission queue `qid` on `mem`.
    pub(super) fn create_io_queue(
        &self,
        qid: u16,
        mem: &QueueMem,
        entries: u16,
        irq: bool,
    ) -> io::Result<()> {
        let mut c = Command::new(admin::CREATE_CQ, 0);
        c.set_prp(mem.cq.iova, 0);
        c.dw[10] = (entries as u32 - 1) << 16 | qid as u32;
        c.dw[11] = 1 | if irq { 2 | (qid as u32) << 16 } else { 0 };
        self.admin(c)
            .map_err(|e| err(e.kind(), format!("I/O queue {qid}: {e}")))?;
        let mut s = Command::new(admin::CREATE_SQ, 0);
        s.set_prp(mem.sq.iova, 0);
        s.dw[10] = (entries as u32 - 1) << 16 | qid as u32;
        s.dw[11] = 1 | (qid as u32) << 16;
        if let Err(e) = self.admin(s) {
            let mut d = Command::new(admin::DELETE_CQ, 0);
            d.dw[10] = qid as u32;
            let _ = self.admin(d);
            return Err(err(e.kind(), format!("I/O queue {qid}: {e}")));
        }
        Ok(())
    }

    /// Deletes I/O queue `qid` (the device completes or aborts what was in
    /// flight on it first).
    pub(super) fn delete_io_queue(&self, qid: u16) -> io::Result<()> {
        let mut s = Command::new(admin::DELETE_SQ, 0);
        s.dw[10] = qid as u32;
        self.admin(s)?;
        let mut c = Command::new(admin::DELETE_CQ, 0);
        c.dw[10] = qid as u32;
        self.admin(c)?;
        Ok(())
    }

    /// Asks the controller to abort command `cid` of queue `qid`.
    pub(super) fn abort(&self, qid: u16, cid: u16) -> io::Result<bool> {
        let mut c = Command::new(admin::ABORT, 0);
        c.dw[10] = qid as u32 | (cid as u32) << 16;
        let r = self.admin(c)?;
        // Bit 0 of the result set: the command was not aborted.
        Ok(r.result & 1 == 0)
    }

    /// Resets the controller (disable, bus mastering on again, admin queue,
    /// enable, number of queues); I/O queues are re-created by their owners
    /// when they see the new epoch. A reset that fails leaves it dead.
    pub fn reset(&self, reason: &str) -> io::Result<()> {
        let seen = self.epoch();
        let _g = lock_cooperative(&self.reset_lock);
        if self.epoch() != seen {
            return Ok(()); // another caller reset it meanwhile
        }
        if let Some(e) = self.unusable() {
            return Err(e);
        }
        self.state.store(State::Resetting as u8, Ordering::Release);
        self.resets.fetch_add(1, Ordering::Relaxed);
        log::warn!("{}: resetting the controller: {reason}", self.name);
        let start = Instant::now();
        let mut a = lock_cooperative(&self.admin);
        let r = (|| {
            self.disable()?;
            // The kernel's driver re-enables bus mastering on every reset
            // too: a device that lost it (an error, a stray config write)
            // stays mute otherwise.
            let c = self.device.pci_command()?;
            self.device
                .set_pci_command(c | pci::PCI_COMMAND_MEMORY | pci::PCI_COMMAND_MASTER)?;
            self.enable(&mut a)?;
            self.set_num_queues(&mut a)
        })();
        drop(a);
        match r {
            Ok(()) => {
                self.epoch.fetch_add(1, Ordering::AcqRel);
                self.state.store(State::Ready as u8, Ordering::Release);
                self.kick_all();
                log::warn!(
                    "{}: controller reset done in {:?}",
                    self.name,
                    start.elapsed()
                );
                Ok(())
            }
            Err(e) => {
                let msg = format!("reset after '{reason}' failed: {e}");
                self.mark_dead(&msg);
                Err(err(e.kind(), format!("{}: {msg}", self.name)))
            }
        }
    }

    /// Gives up on the controller: no more DMA (bus mastering off), every
    /// request fails from now on.
    pub fn mark_dead(&self, reason: &str) {
        *self.dead_reason.lock().unwrap_or_else(|e| e.into_inner()) = reason.to_string();
        self.state.store(State::Dead as u8, Ordering::Release);
        log::error!("{}: controller is dead: {reason}", self.name);
        self.stop_dma();
        self.kick_all();
    }

    fn stop_dma(&self) {
        let cc = self.bar.read32(regs::CC);
        if cc != u32::MAX {
            self.bar.write32(regs::CC, cc & !regs::CC_EN);
        }
        match self.device.pci_command() {
            Ok(c) => {
                if let Err(e) = self.device.set_pci_command(c & !pci::PCI_COMMAND_MASTER) {
                    log::error!("{}: turning bus mastering off: {e}", self.name);
                }
            }
            Err(e) => log::error!("{}: turning bus mastering off: {e}", self.name),
        }
    }

    /// Normal shutdown: CC.SHN, wait for CSTS.SHST complete, then disable
    /// and stop DMA. Idempotent; later requests fail.
    pub fn shutdown(&self) {
        let prev = State::from_u8(self.state.swap(State::ShutDown as u8, Ordering::AcqRel));
        if prev == State::ShutDown {
            return;
        }
        if prev == State::Dead {
            self.state.store(State::Dead as u8, Ordering::Release);
            return;
        }
        let start = Instant::now();
        let cc = self.bar.read32(regs::CC);
        let mut clean = false;
        if cc != u32::MAX && cc & regs::CC_EN != 0 {
            self.bar
                .write32(regs::CC, (cc & !regs::CC_SHN_MASK) | regs::CC_SHN_NORMAL);
            match self.wait_csts("CSTS.SHST=complete", |c| {
                c & regs::CSTS_SHST_MASK == regs::CSTS_SHST_COMPLETE
            }) {
                Ok(()) => clean = true,
                Err(e) => log::error!("{}: shutdown notification: {e}", self.name),
            }
        }
        self.stop_dma();
        let _ = self.device.disable_irqs(vfio::PCI_MSIX_IRQ_INDEX);
        self.kick_all();
        if clean {
            log::info!(
                "{}: shut down cleanly (CSTS.SHST complete) in {:?}",
                self.name,
                start.elapsed()
            );
        }
    }

    /// Allocates the memory of a queue pair of `entries` entries.
    pub(super) fn queue_mem(&self, entries: u16) -> io::Result<QueueMem> {
        alloc_queue_mem(&self.alloc, entries)
    }

    /// Gives a queue pair's memory back.
    pub(super) fn free_queue_mem(&self, m: QueueMem) {
        self.alloc.free(m.sq);
        self.alloc.free(m.cq);
        for l in m.lists {
            self.alloc.free(l);
        }
    }

    pub(super) fn alloc_bounce(&self, len: usize) -> io::Result<DmaSlice> {
        self.alloc.alloc(len)
    }

    pub(super) fn free_bounce(&self, s: DmaSlice) {
        self.alloc.free(s)
    }
}

fn alloc_queue_mem(alloc: &DmaAlloc, entries: u16) -> io::Result<QueueMem> {
    let n = entries as usize;
    Ok(QueueMem {
        sq: alloc.alloc(n * super::queue::SQE)?,
        cq: alloc.alloc(n * super::queue::CQE)?,
        lists: (0..n - 1)
            .map(|_| alloc.alloc(LIST_PAGE))
            .collect::<io::Result<Vec<_>>>()?,
    })
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.shutdown();
    }
}
