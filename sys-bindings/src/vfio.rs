//! VFIO: handing a PCI function to user space (issue 9, the NVMe driver).
//!
//! The kernel objects, in the order a driver meets them:
//! - a *container* (`/dev/vfio/vfio`) holds the IOMMU context: type1 on a
//!   machine with an IOMMU (DMA goes to IOVAs the driver maps), or the
//!   no-IOMMU "type" (DMA goes to physical addresses; see [`crate::pagemap`]);
//! - a *group* (`/dev/vfio/N`, `/dev/vfio/noiommu-N`) is the unit of
//!   isolation; every device of it must be bound to vfio-pci;
//! - a *device* fd gives the regions (BARs, config space) and interrupts.
//!
//! Only the ioctls the NVMe driver needs are here, with the structures of
//! `<linux/vfio.h>` written out (they are part of the kernel's stable ABI).

use crate::cvt;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

// `_IO(';', 100 + n)`: no size or direction bits.
const fn vfio_io(n: u64) -> libc::c_ulong {
    ((b';' as u64) << 8 | (100 + n)) as libc::c_ulong
}
const VFIO_GET_API_VERSION: libc::c_ulong = vfio_io(0);
const VFIO_CHECK_EXTENSION: libc::c_ulong = vfio_io(1);
const VFIO_SET_IOMMU: libc::c_ulong = vfio_io(2);
const VFIO_GROUP_GET_STATUS: libc::c_ulong = vfio_io(3);
const VFIO_GROUP_SET_CONTAINER: libc::c_ulong = vfio_io(4);
const VFIO_GROUP_GET_DEVICE_FD: libc::c_ulong = vfio_io(6);
const VFIO_DEVICE_GET_REGION_INFO: libc::c_ulong = vfio_io(8);
const VFIO_DEVICE_GET_IRQ_INFO: libc::c_ulong = vfio_io(9);
const VFIO_DEVICE_SET_IRQS: libc::c_ulong = vfio_io(10);
const VFIO_DEVICE_RESET: libc::c_ulong = vfio_io(11);
const VFIO_IOMMU_MAP_DMA: libc::c_ulong = vfio_io(13);
const VFIO_IOMMU_UNMAP_DMA: libc::c_ulong = vfio_io(14);

const VFIO_API_VERSION: libc::c_int = 0;
const VFIO_TYPE1V2_IOMMU: libc::c_ulong = 3;
const VFIO_NOIOMMU_IOMMU: libc::c_ulong = 8;
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;
const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
const VFIO_IRQ_SET_DATA_NONE: u32 = 1 << 0;
const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
const VFIO_DMA_MAP_FLAG_READ: u32 = 1;
const VFIO_DMA_MAP_FLAG_WRITE: u32 = 2;

/// Region index of BAR0 (BARn is n).
pub const PCI_BAR0_REGION_INDEX: u32 = 0;
/// Region index of the PCI configuration space.
pub const PCI_CONFIG_REGION_INDEX: u32 = 7;
/// Interrupt index of MSI-X.
pub const PCI_MSIX_IRQ_INDEX: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
struct RawRegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

#[repr(C)]
#[derive(Default)]
struct IrqInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    count: u32,
}

#[repr(C)]
struct IrqSetHeader {
    argsz: u32,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
}

#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

#[repr(C)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

/// Which IOMMU model the container runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuMode {
    /// A real (or emulated) IOMMU: the device sees IOVAs mapped with
    /// [`Container::map_dma`].
    Type1,
    /// `vfio.enable_unsafe_noiommu_mode=1`: the device sees physical
    /// addresses and can reach all of memory.
    NoIommu,
}

/// A region of a VFIO device (a BAR or the config space).
#[derive(Clone, Copy, Debug)]
pub struct RegionInfo {
    pub index: u32,
    pub size: u64,
    /// Offset of the region in the device fd (for pread/pwrite/mmap).
    pub offset: u64,
    pub mmap: bool,
}

fn ctx(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A VFIO container with one group and one device of it attached.
#[derive(Debug)]
pub struct Container {
    container: File,
    group: File,
    group_path: PathBuf,
    mode: IommuMode,
    /// Memory mapped with [`Container::map_devmem`]: kept alive here, after
    /// the fds in field order, so it outlives every mapping of it.
    pinned: std::sync::Mutex<Vec<std::sync::Arc<crate::devmem::DevMem>>>,
}

impl Container {
    /// Opens the group of IOMMU group number `group` (as named by the PCI
    /// function's `iommu_group` link), attaches it to a new container and
    /// sets the IOMMU model: type1 for `/dev/vfio/N`, no-IOMMU for
    /// `/dev/vfio/noiommu-N`.
    pub fn open(group: &str) -> io::Result<Container> {
        let container = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/vfio/vfio")
            .map_err(ctx(
                "/dev/vfio/vfio (is the vfio module loaded? modprobe vfio-pci)",
            ))?;
        // SAFETY: VFIO_GET_API_VERSION takes no argument.
        let v = unsafe { libc::ioctl(container.as_raw_fd(), VFIO_GET_API_VERSION) };
        if v != VFIO_API_VERSION {
            return Err(io::Error::other(format!(
                "/dev/vfio/vfio: API version {v}, expected {VFIO_API_VERSION}"
            )));
        }
        let plain = PathBuf::from(format!("/dev/vfio/{group}"));
        let noiommu = PathBuf::from(format!("/dev/vfio/noiommu-{group}"));
        let (group_path, mode) = if plain.exists() {
            (plain, IommuMode::Type1)
        } else if noiommu.exists() {
            (noiommu, IommuMode::NoIommu)
        } else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no VFIO group device {} or {} (bind the device to vfio-pci: scripts/setup.sh)",
                    plain.display(),
                    noiommu.display()
                ),
            ));
        };
        let gfile = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&group_path)
            .map_err(ctx(format!(
                "{} (EBUSY: another process or container holds the group)",
                group_path.display()
            )))?;
        let mut st = GroupStatus {
            argsz: std::mem::size_of::<GroupStatus>() as u32,
            flags: 0,
        };
        // SAFETY: `st` is a valid vfio_group_status the kernel fills in.
        cvt(unsafe { libc::ioctl(gfile.as_raw_fd(), VFIO_GROUP_GET_STATUS, &mut st) }).map_err(
            ctx(format!("{}: VFIO_GROUP_GET_STATUS", group_path.display())),
        )?;
        if st.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(io::Error::other(format!(
                "{}: group not viable: bind every device of IOMMU group {group} to vfio-pci",
                group_path.display()
            )));
        }
        let cfd: RawFd = container.as_raw_fd();
        // SAFETY: the argument is a pointer to the container's fd, as the
        // ioctl expects; both fds are open.
        cvt(unsafe { libc::ioctl(gfile.as_raw_fd(), VFIO_GROUP_SET_CONTAINER, &cfd) }).map_err(
            ctx(format!(
                "{}: VFIO_GROUP_SET_CONTAINER",
                group_path.display()
            )),
        )?;
        let ty = match mode {
            IommuMode::Type1 => VFIO_TYPE1V2_IOMMU,
            IommuMode::NoIommu => VFIO_NOIOMMU_IOMMU,
        };
        // SAFETY: CHECK_EXTENSION takes an integer argument.
        let ok = unsafe { libc::ioctl(cfd, VFIO_CHECK_EXTENSION, ty) };
        if ok <= 0 {
            return Err(io::Error::other(format!(
                "/dev/vfio/vfio: IOMMU model {mode:?} not supported by this kernel{}",
                if mode == IommuMode::NoIommu {
                    " (needs CONFIG_VFIO_NOIOMMU and vfio.enable_unsafe_noiommu_mode=1)"
                } else {
                    " (vfio_iommu_type1 not loaded?)"
                }
            )));
        }
        // SAFETY: SET_IOMMU takes an integer argument.
        cvt(unsafe { libc::ioctl(cfd, VFIO_SET_IOMMU, ty) })
            .map_err(ctx(format!("/dev/vfio/vfio: VFIO_SET_IOMMU({mode:?})")))?;
        Ok(Container {
            container,
            group: gfile,
            group_path,
            mode,
            pinned: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The IOMMU model in use.
    pub fn mode(&self) -> IommuMode {
        self.mode
    }

    /// The group device opened.
    pub fn group_path(&self) -> &Path {
        &self.group_path
    }

    /// Opens the device `bdf` (e.g. `0000:00:04.0`) of the group.
    pub fn device(&self, bdf: &str) -> io::Result<Device> {
        let name = CString::new(bdf)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a PCI address"))?;
        // SAFETY: the argument is a NUL-terminated string that outlives the call.
        let fd = cvt(unsafe {
            libc::ioctl(
                self.group.as_raw_fd(),
                VFIO_GROUP_GET_DEVICE_FD,
                name.as_ptr(),
            )
        })
        .map_err(ctx(format!(
            "{}: VFIO_GROUP_GET_DEVICE_FD({bdf})",
            self.group_path.display()
        )))?;
        // SAFETY: the ioctl returned a new fd that nobody else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(Device {
            file,
            bdf: bdf.to_string(),
        })
    }

    /// Maps `len` bytes at `vaddr` for device access at `iova` (type1 only;
    /// pins the pages).
    ///
    /// # Safety
    /// `[vaddr, vaddr+len)` must be a mapping the caller keeps alive until
    /// [`Container::unmap_dma`] (or the container's end): the device may
    /// read and write it at any time meanwhile.
    pub unsafe fn map_dma(&self, vaddr: usize, iova: u64, len: usize) -> io::Result<()> {
        let m = DmaMap {
            argsz: std::mem::size_of::<DmaMap>() as u32,
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr: vaddr as u64,
            iova,
            size: len as u64,
        };
        // SAFETY: `m` is a valid vfio_iommu_type1_dma_map; the memory
        // contract is the caller's (see above).
        cvt(unsafe { libc::ioctl(self.container.as_raw_fd(), VFIO_IOMMU_MAP_DMA, &m) }).map_err(
            ctx(format!("VFIO_IOMMU_MAP_DMA({len} bytes at iova {iova:#x})")),
        )?;
        Ok(())
    }

    /// Maps device-shared memory at `iova` (type1). The container keeps the
    /// memory alive for as long as it exists, so the mapping can never point
    /// at freed memory.
    pub fn map_devmem(
        &self,
        mem: std::sync::Arc<crate::devmem::DevMem>,
        iova: u64,
    ) -> io::Result<()> {
        // SAFETY: `mem` is kept in `self.pinned` until the container's fds
        // are closed (which removes every mapping), so the memory outlives
        // the mapping; device writes into it are what DevMem is made for.
        unsafe { self.map_dma(mem.addr(), iova, mem.len())? };
        self.pinned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(mem);
        Ok(())
    }

    /// Removes a mapping made with [`Container::map_dma`].
    pub fn unmap_dma(&self, iova: u64, len: usize) -> io::Result<()> {
        let m = DmaUnmap {
            argsz: std::mem::size_of::<DmaUnmap>() as u32,
            flags: 0,
            iova,
            size: len as u64,
        };
        // SAFETY: `m` is a valid vfio_iommu_type1_dma_unmap; unmapping can
        // only take access away from the device.
        cvt(unsafe { libc::ioctl(self.container.as_raw_fd(), VFIO_IOMMU_UNMAP_DMA, &m) })
            .map_err(ctx(format!("VFIO_IOMMU_UNMAP_DMA(iova {iova:#x})")))?;
        Ok(())
    }
}

/// A VFIO device fd.
#[derive(Debug)]
pub struct Device {
    file: File,
    bdf: String,
}

impl Device {
    /// The PCI address.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// Facts about region `index`.
    pub fn region_info(&self, index: u32) -> io::Result<RegionInfo> {
        let mut r = RawRegionInfo {
            argsz: std::mem::size_of::<RawRegionInfo>() as u32,
            index,
            ..Default::default()
        };
        // SAFETY: `r` is a valid vfio_region_info the kernel fills in; its
        // argsz keeps the kernel from writing capabilities past it.
        cvt(unsafe { libc::ioctl(self.file.as_raw_fd(), VFIO_DEVICE_GET_REGION_INFO, &mut r) })
            .map_err(ctx(format!(
                "{}: VFIO_DEVICE_GET_REGION_INFO({index})",
                self.bdf
            )))?;
        Ok(RegionInfo {
            index,
            size: r.size,
            offset: r.offset,
            mmap: r.flags & VFIO_REGION_INFO_FLAG_MMAP != 0,
        })
    }

    /// Reads `buf.len()` bytes of PCI config space at `off`.
    pub fn config_read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let cfg = self.region_info(PCI_CONFIG_REGION_INDEX)?;
        self.file
            .read_exact_at(buf, cfg.offset + off)
            .map_err(ctx(format!("{}: config read at {off:#x}", self.bdf)))
    }

    /// Writes `buf` to PCI config space at `off`.
    pub fn config_write(&self, off: u64, buf: &[u8]) -> io::Result<()> {
        let cfg = self.region_info(PCI_CONFIG_REGION_INDEX)?;
        self.file
            .write_all_at(buf, cfg.offset + off)
            .map_err(ctx(format!("{}: config write at {off:#x}", self.bdf)))
    }

    /// The PCI command register.
    pub fn pci_command(&self) -> io::Result<u16> {
        let mut b = [0u8; 2];
        self.config_read(crate::pci::PCI_COMMAND, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Sets the PCI command register.
    pub fn set_pci_command(&self, v: u16) -> io::Result<()> {
        self.config_write(crate::pci::PCI_COMMAND, &v.to_le_bytes())
    }

    /// Maps region `index` (a BAR) read-write.
    pub fn map_region(&self, index: u32) -> io::Result<crate::mmio::Mmio> {
        let r = self.region_info(index)?;
        if !r.mmap {
            return Err(io::Error::other(format!(
                "{}: region {index} cannot be mmap()ed",
                self.bdf
            )));
        }
        if r.size == 0 {
            return Err(io::Error::other(format!(
                "{}: region {index} is empty",
                self.bdf
            )));
        }
        // SAFETY: a shared mapping of the device fd at the region's offset,
        // as VFIO documents; the kernel checks offset and size.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                r.size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                r.offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(ctx(format!("{}: mmap region {index}", self.bdf))(
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: `p` is a fresh mapping of `size` bytes owned by the Mmio.
        Ok(unsafe { crate::mmio::Mmio::from_raw(p as *mut u8, r.size as usize) })
    }

    /// How many vectors interrupt index `index` has (0: none).
    pub fn irq_count(&self, index: u32) -> io::Result<u32> {
        let mut i = IrqInfo {
            argsz: std::mem::size_of::<IrqInfo>() as u32,
            index,
            ..Default::default()
        };
        // SAFETY: `i` is a valid vfio_irq_info the kernel fills in.
        cvt(unsafe { libc::ioctl(self.file.as_raw_fd(), VFIO_DEVICE_GET_IRQ_INFO, &mut i) })
            .map_err(ctx(format!(
                "{}: VFIO_DEVICE_GET_IRQ_INFO({index})",
                self.bdf
            )))?;
        Ok(i.count)
    }

    /// Enables vectors `0..fds.len()` of interrupt index `index`, each
    /// signalling its eventfd.
    pub fn enable_irqs(&self, index: u32, fds: &[RawFd]) -> io::Result<()> {
        let hdr = std::mem::size_of::<IrqSetHeader>();
        let mut buf = vec![0u8; hdr + 4 * fds.len()];
        let h = IrqSetHeader {
            argsz: buf.len() as u32,
            flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            start: 0,
            count: fds.len() as u32,
        };
        for (i, v) in [h.argsz, h.flags, h.index, h.start, h.count]
            .iter()
            .enumerate()
        {
            buf[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        for (i, fd) in fds.iter().enumerate() {
            buf[hdr + i * 4..hdr + i * 4 + 4].copy_from_slice(&fd.to_ne_bytes());
        }
        // SAFETY: `buf` is a vfio_irq_set header followed by `count` s32
        // eventfds, with argsz its full length.
        cvt(unsafe { libc::ioctl(self.file.as_raw_fd(), VFIO_DEVICE_SET_IRQS, buf.as_ptr()) })
            .map_err(ctx(format!(
                "{}: VFIO_DEVICE_SET_IRQS({} vectors of index {index})",
                self.bdf,
                fds.len()
            )))?;
        Ok(())
    }

    /// Disables every vector of interrupt index `index`.
    pub fn disable_irqs(&self, index: u32) -> io::Result<()> {
        let h = IrqSetHeader {
            argsz: std::mem::size_of::<IrqSetHeader>() as u32,
            flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            start: 0,
            count: 0,
        };
        // SAFETY: `h` is a valid vfio_irq_set without data.
        cvt(unsafe { libc::ioctl(self.file.as_raw_fd(), VFIO_DEVICE_SET_IRQS, &h) })
            .map_err(ctx(format!("{}: disable interrupts", self.bdf)))?;
        Ok(())
    }

    /// A function-level reset through VFIO, where the device supports one.
    pub fn reset(&self) -> io::Result<()> {
        // SAFETY: VFIO_DEVICE_RESET takes no argument.
        cvt(unsafe { libc::ioctl(self.file.as_raw_fd(), VFIO_DEVICE_RESET) })
            .map_err(ctx(format!("{}: VFIO_DEVICE_RESET", self.bdf)))?;
        Ok(())
    }
}
