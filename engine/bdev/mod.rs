//! Block devices under the chunk store: the `BlockDevice` interface and its
//! backends (io_uring on files and block devices, RAM, and later the VFIO
//! NVMe driver and SPDK). Lands with issue 3.
