//! The chunk store: superblock, per-worker journals, checkpoints, extents
//! with per-4 KiB crc32c, group commit, and crash recovery. Lands with issue 3.
