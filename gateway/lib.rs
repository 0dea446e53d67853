//! `ferrite-gateway`: Ferrite's front ends. Each serves volumes of the
//! engine's volume layer to a family of initiators:
//! - `nbd`: the NBD protocol (issue 4);
//! - `scsi`: the SCSI block command set, apart from any transport (issue 6);
//! - `iscsi`: iSCSI (RFC 7143) over `scsi` (issue 6);
//! - `nvmf`: NVMe over TCP (issue 7).

pub mod iscsi;
pub mod nbd;
pub mod nvmf;
pub mod scsi;
pub mod server;
