//! The store's errors: every variant names what it is about (extent,
//! offset, device) so that a log line or an RPC error is actionable alone.

/// What a store call can fail with.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// Not enough free space for the write (nothing already stored is harmed).
    #[error("no space: extent {extent} needs {needed} more bytes, {free} bytes free")]
    NoSpace { extent: u64, needed: u64, free: u64 },
    /// The metadata areas (checkpoint) cannot hold more extents.
    #[error(
        "no metadata space for extent {extent}: the checkpoint area ({capacity} bytes) is full"
    )]
    NoMetadataSpace { extent: u64, capacity: u64 },
    /// A block's crc32c did not match: the data is not returned.
    #[error("checksum mismatch in extent {extent} at offset {offset} (device {device}, byte {device_offset})")]
    Checksum {
        extent: u64,
        offset: u64,
        device: String,
        device_offset: u64,
    },
    #[error("no extent {extent}")]
    NoSuchExtent { extent: u64 },
    #[error("extent {extent} already exists")]
    ExtentExists { extent: u64 },
    /// The range lies (partly) beyond the extent's size.
    #[error("extent {extent}: range at {offset} of {len} bytes is beyond its size {size}")]
    OutOfRange {
        extent: u64,
        offset: u64,
        len: u64,
        size: u64,
    },
    /// Offsets, lengths and sizes are multiples of 4 KiB.
    #[error("extent {extent}: offset {offset} / length {len} not a multiple of {align} bytes")]
    Misaligned {
        extent: u64,
        offset: u64,
        len: u64,
        align: u64,
    },
    /// An extent size of 0 or above the store's maximum.
    #[error("extent {extent}: size {size} is not in 4 KiB .. {max}")]
    BadSize { extent: u64, size: u64, max: u64 },
    /// The device holds something else, another version, or a damaged store.
    #[error("device {device}: {reason}")]
    Format { device: String, reason: String },
    /// A device request failed.
    #[error("I/O error on device {device} at byte {offset}: {reason}")]
    Io {
        device: String,
        offset: u64,
        reason: String,
    },
    /// Bad options or arguments (not about one extent).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// An earlier device failure left this worker's journal unusable; the
    /// store must be reopened (recovery replays what was durable).
    #[error("worker {worker} stopped after an earlier failure: {reason}")]
    Failed { worker: usize, reason: String },
    /// The store is closing or closed.
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    pub(crate) fn io(device: &str, offset: u64, e: &std::io::Error) -> Self {
        StoreError::Io {
            device: device.to_string(),
            offset,
            reason: e.to_string(),
        }
    }
}
