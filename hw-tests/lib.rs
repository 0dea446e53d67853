//! Tests that need hardware or a VM (`make hw-test`): Linux kernel
//! initiators against Ferrite's targets, the VFIO NVMe driver against QEMU's
//! emulated controller, and DPDK on virtual devices. Driven through
//! `../shared/vm/`. Lands with issues 7, 8 and 9.
