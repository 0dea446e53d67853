//! The numbers of the NVMe base, NVMe-oF and NVMe/TCP specifications that
//! this target uses: opcodes, status codes, identifiers. Kept in one place
//! so that every other module reads as prose.

/// The well-known NQN of a discovery subsystem.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// Ferrite's subsystem NQNs are this prefix plus the volume name.
pub const FERRITE_NQN_PREFIX: &str = "nqn.2026-11.io.ferrite:";
/// NQNs are at most 223 bytes (NVMe base spec, 4.5).
pub const NQN_MAX_LEN: usize = 223;

/// The version we report (VS): 1.3, as SPDK and Linux nvmet do. Linux
/// reads the namespace identification descriptors from 1.3 on.
pub const NVME_VERSION: u32 = 0x0001_0300;

/// Admin command opcodes.
pub mod admin {
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0a;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0c;
    pub const KEEP_ALIVE: u8 = 0x18;
    pub const FABRICS: u8 = 0x7f;
}

/// NVM command set opcodes.
pub mod nvm {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const COMPARE: u8 = 0x05;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

/// Fabrics command types (byte 4 of a fabrics command).
pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const AUTH_SEND: u8 = 0x05;
    pub const AUTH_RECV: u8 = 0x06;
    pub const DISCONNECT: u8 = 0x08;
}

/// Controller properties (registers) reachable with Property Get/Set.
pub mod prop {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1c;
    pub const NSSR: u32 = 0x20;
}

/// Identify CNS values.
pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    pub const NS_ID_DESCRIPTORS: u8 = 0x03;
    /// I/O command set specific controller (CSI in CDW11).
    pub const CS_CONTROLLER: u8 = 0x06;
    /// I/O command set independent namespace.
    pub const CS_INDEP_NAMESPACE: u8 = 0x08;
}

/// Log page identifiers.
pub mod lid {
    pub const ERROR: u8 = 0x01;
    pub const SMART: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NS_LIST: u8 = 0x04;
    pub const COMMANDS_EFFECTS: u8 = 0x05;
    pub const ANA: u8 = 0x0c;
    pub const DISCOVERY: u8 = 0x70;
}

/// Feature identifiers.
pub mod fid {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MANAGEMENT: u8 = 0x02;
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    pub const ERROR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    pub const INTERRUPT_VECTOR_CONFIG: u8 = 0x09;
    pub const WRITE_ATOMICITY: u8 = 0x0a;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
    pub const HOST_IDENTIFIER: u8 = 0x81;
}

/// Asynchronous event completion values (DW0 of an AER completion):
/// type in bits 2:0, information in 15:8, log page in 23:16.
pub mod aen {
    /// Notice: namespace attribute changed; read log page 0x04.
    pub const NS_ATTR_CHANGED: u32 = 0x0004_0002;
    /// Notice: ANA change; read log page 0x0C.
    pub const ANA_CHANGE: u32 = 0x000c_0302;
    /// OAES / Async Event Configuration bits.
    pub const CFG_NS_ATTR: u32 = 1 << 8;
    pub const CFG_ANA_CHANGE: u32 = 1 << 11;
}

/// ANA states as the ANA log page writes them.
pub mod ana_state {
    pub const OPTIMIZED: u8 = 0x01;
    pub const NON_OPTIMIZED: u8 = 0x02;
    pub const INACCESSIBLE: u8 = 0x03;
    pub const PERSISTENT_LOSS: u8 = 0x04;
    pub const CHANGE: u8 = 0x0f;
}

/// Completion status: status code type in bits 10:8, status code in 7:0
/// (the CQE's status field shifted right by one), DNR added on return.
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    pub const INVALID_OPCODE: u16 = 0x0001;
    pub const INVALID_FIELD: u16 = 0x0002;
    pub const CID_CONFLICT: u16 = 0x0003;
    pub const DATA_TRANSFER_ERROR: u16 = 0x0004;
    pub const INTERNAL_ERROR: u16 = 0x0006;
    pub const ABORT_REQUESTED: u16 = 0x0007;
    pub const ABORTED_FAILED_FUSED: u16 = 0x0009;
    pub const ABORTED_MISSING_FUSED: u16 = 0x000a;
    pub const INVALID_NAMESPACE: u16 = 0x000b;
    pub const COMMAND_SEQUENCE_ERROR: u16 = 0x000c;
    pub const SGL_DATA_LENGTH_INVALID: u16 = 0x000f;
    pub const SGL_DESCRIPTOR_TYPE_INVALID: u16 = 0x0011;
    pub const SGL_OFFSET_INVALID: u16 = 0x0016;
    pub const TRANSIENT_TRANSPORT_ERROR: u16 = 0x0022;
    pub const LBA_OUT_OF_RANGE: u16 = 0x0080;
    pub const CAPACITY_EXCEEDED: u16 = 0x0081;
    pub const NAMESPACE_NOT_READY: u16 = 0x0082;
    // Command specific (SCT 1).
    pub const INVALID_QUEUE_IDENTIFIER: u16 = 0x0101;
    pub const INVALID_QUEUE_SIZE: u16 = 0x0102;
    pub const AER_LIMIT_EXCEEDED: u16 = 0x0105;
    pub const INVALID_LOG_PAGE: u16 = 0x0109;
    pub const FEATURE_NOT_SAVEABLE: u16 = 0x010d;
    pub const FEATURE_NOT_CHANGEABLE: u16 = 0x010e;
    pub const CONNECT_INCOMPATIBLE_FORMAT: u16 = 0x0180;
    pub const CONNECT_CONTROLLER_BUSY: u16 = 0x0181;
    pub const CONNECT_INVALID_PARAMETERS: u16 = 0x0182;
    pub const CONNECT_INVALID_HOST: u16 = 0x0184;
    // Media and data integrity errors (SCT 2).
    pub const WRITE_FAULT: u16 = 0x0280;
    pub const UNRECOVERED_READ_ERROR: u16 = 0x0281;
    pub const COMPARE_FAILURE: u16 = 0x0285;
    // Path related (SCT 3): Linux multipath fails these over to another path.
    pub const INTERNAL_PATH_ERROR: u16 = 0x0300;
    pub const ANA_PERSISTENT_LOSS: u16 = 0x0301;
    pub const ANA_INACCESSIBLE: u16 = 0x0302;
    pub const ANA_TRANSITION: u16 = 0x0303;

    /// "Do not retry": the same command would fail the same way.
    pub const DNR: u16 = 0x4000;
}

/// NVMe/TCP PDU types.
pub mod pdu_type {
    pub const IC_REQ: u8 = 0x00;
    pub const IC_RESP: u8 = 0x01;
    pub const H2C_TERM_REQ: u8 = 0x02;
    pub const C2H_TERM_REQ: u8 = 0x03;
    pub const CAPSULE_CMD: u8 = 0x04;
    pub const CAPSULE_RESP: u8 = 0x05;
    pub const H2C_DATA: u8 = 0x06;
    pub const C2H_DATA: u8 = 0x07;
    pub const R2T: u8 = 0x09;
}

/// NVMe/TCP PDU header flags.
pub mod pdu_flags {
    pub const HDGSTF: u8 = 1 << 0;
    pub const DDGSTF: u8 = 1 << 1;
    /// H2CData / C2HData: the last PDU of a transfer.
    pub const DATA_LAST: u8 = 1 << 2;
    /// C2HData: the command succeeded; no response capsule follows.
    pub const DATA_SUCCESS: u8 = 1 << 3;
}

/// Fatal error status (FES) of a termination request PDU.
pub mod fes {
    pub const INVALID_PDU_HEADER_FIELD: u16 = 0x01;
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    pub const DATA_TRANSFER_OUT_OF_RANGE: u16 = 0x04;
    pub const DATA_TRANSFER_LIMIT_EXCEEDED: u16 = 0x05;
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

/// SGL descriptor identifiers (byte 15 of a descriptor: type << 4 | subtype).
pub mod sgl {
    /// Data block, address is an offset into the in-capsule data.
    pub const DATA_BLOCK_OFFSET: u8 = 0x01;
    /// Transport SGL data block (transport specific subtype A): the data
    /// moves in R2T/H2CData or C2HData PDUs.
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5a;
}

/// Discovery log entry values.
pub mod disc {
    pub const TRTYPE_TCP: u8 = 3;
    pub const ADRFAM_IPV4: u8 = 1;
    pub const ADRFAM_IPV6: u8 = 2;
    pub const SUBTYPE_NVME: u8 = 2;
    /// TREQ: "not specified", as Linux nvmet says for TCP. nvme-cli 2.3
    /// (libnvme 1.3) turns "required" and "not required" both into a `tls`
    /// connect option that kernels before 6.5 reject, so connect-all fails.
    pub const TREQ_NOT_SPECIFIED: u8 = 0x00;
    /// Entries are 1024 bytes after a 1024-byte header.
    pub const ENTRY_LEN: usize = 1024;
}

/// Whether a status asks the host not to retry is decided per status:
/// errors that would repeat get DNR; path and transient errors do not.
pub fn with_dnr(status: u16) -> u16 {
    status | status::DNR
}
