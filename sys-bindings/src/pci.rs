//! PCI functions through sysfs (`/sys/bus/pci/devices/BDF`): addresses,
//! identity, the bound driver and the IOMMU group, for the VFIO driver and
//! its setup checks.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Offset of the command register in config space.
pub const PCI_COMMAND: u64 = 0x04;
/// Command register: memory space decoding.
pub const PCI_COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus mastering (the device may DMA).
pub const PCI_COMMAND_MASTER: u16 = 1 << 2;
/// Command register: legacy INTx disabled.
pub const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;

/// A PCI address `domain:bus:device.function`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl PciAddress {
    /// Parses `0000:00:04.0` or the short `00:04.0` (domain 0).
    pub fn parse(s: &str) -> Result<PciAddress, String> {
        let bad = || format!("'{s}' is not a PCI address (DDDD:BB:DD.F)");
        let parts: Vec<&str> = s.split(':').collect();
        let (dom, bus, df) = match parts.as_slice() {
            [d, b, df] => (*d, *b, *df),
            [b, df] => ("0", *b, *df),
            _ => return Err(bad()),
        };
        let (dev, func) = df.split_once('.').ok_or_else(bad)?;
        let hex = |x: &str, max: u32| {
            if x.is_empty() || x.len() > 8 {
                return Err(bad());
            }
            u32::from_str_radix(x, 16)
                .ok()
                .filter(|&v| v <= max)
                .ok_or_else(bad)
        };
        Ok(PciAddress {
            domain: hex(dom, 0xffff)?,
            bus: hex(bus, 0xff)? as u8,
            device: hex(dev, 0x1f)? as u8,
            function: hex(func, 7)? as u8,
        })
    }

    /// The function's sysfs folder.
    pub fn sysfs(&self) -> PathBuf {
        PathBuf::from(format!("/sys/bus/pci/devices/{self}"))
    }

    fn read_hex(&self, attr: &str) -> io::Result<u32> {
        let p = self.sysfs().join(attr);
        let s = std::fs::read_to_string(&p)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
        let t = s.trim().trim_start_matches("0x");
        u32::from_str_radix(t, 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: '{}' is not hex", p.display(), s.trim()),
            )
        })
    }

    /// Whether the function exists.
    pub fn exists(&self) -> bool {
        self.sysfs().exists()
    }

    /// `(vendor, device)` ids.
    pub fn ids(&self) -> io::Result<(u16, u16)> {
        Ok((
            self.read_hex("vendor")? as u16,
            self.read_hex("device")? as u16,
        ))
    }

    /// The 24-bit class code (0x010802 for NVMe).
    pub fn class(&self) -> io::Result<u32> {
        self.read_hex("class")
    }

    /// The bound driver's name, if any.
    pub fn driver(&self) -> Option<String> {
        std::fs::read_link(self.sysfs().join("driver"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    /// The IOMMU group number (also set in no-IOMMU mode once vfio-pci
    /// bound the function).
    pub fn iommu_group(&self) -> io::Result<String> {
        let link = self.sysfs().join("iommu_group");
        let p = std::fs::read_link(&link).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{}: {e} (no IOMMU group: bind {self} to vfio-pci with scripts/setup.sh; without an IOMMU that needs vfio.enable_unsafe_noiommu_mode=1)",
                    link.display()
                ),
            )
        })?;
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| io::Error::other(format!("{}: empty link", link.display())))
    }

    /// Every function with class code `class` (e.g. 0x010802).
    pub fn list_by_class(class: u32) -> Vec<PciAddress> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/sys/bus/pci/devices") {
            for e in rd.flatten() {
                if let Ok(a) = PciAddress::parse(&e.file_name().to_string_lossy()) {
                    if a.class().ok() == Some(class) {
                        out.push(a);
                    }
                }
            }
        }
        out.sort();
        out
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl std::str::FromStr for PciAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PciAddress::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let a = PciAddress::parse("0000:00:04.0").unwrap();
        assert_eq!(a.to_string(), "0000:00:04.0");
        assert_eq!(
            PciAddress::parse("3b:00.1").unwrap().to_string(),
            "0000:3b:00.1"
        );
        for bad in [
            "",
            "0000:00:04",
            "0000:00:20.0",
            "0000:00:04.8",
            "x:y:z.w",
            "1:2:3:4.0",
        ] {
            assert!(PciAddress::parse(bad).is_err(), "{bad}");
        }
    }
}
