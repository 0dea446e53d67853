# Ferrite: `make run` starts a one-node Ferrite; `make test` runs every test.
# Both install what is missing first (scripts/install-deps.sh).

SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never
# Tests and benchmarks use the same optimised build as `make run`. The DPDK
# replica transport (feature ferrited/dpdk, libdpdk-dev) is built and tested
# too; a plain `cargo build` leaves it out and needs no DPDK.
CARGO_FLAGS ?= --release --workspace --features ferrited/dpdk
BIN := target/release
# The VM harness (hw-tests/vm) keeps its kernel, initramfs and tools here.
export VM_CACHE ?= $(CURDIR)/.vm-cache

.PHONY: all deps build run cluster cluster-down vm-cache test hw-test unit-test crash-test bench bench-rt bench-store bench-nbd bench-iscsi bench-nvmf bench-nvme bench-cluster bench-dpdk clean fmt lint test-aarch64

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(CARGO) build $(CARGO_FLAGS) --bins

# A one-node Ferrite in the foreground (Ctrl-C stops it cleanly).
run: build
	@scripts/run.sh

# A local cluster in the background: make cluster NODES=3 RF=3; make cluster-down.
NODES ?= 3
RF ?= 3
cluster: build
	@scripts/cluster.sh up $(NODES) $(RF)

cluster-down:
	@scripts/cluster.sh down

# The VM the kernel-initiator and VFIO tests boot (built once, ~70 s).
vm-cache:
	@hw-tests/vm/vm-prepare.sh

# Every test: unit tests, the runtime's process tests, the store's crash
# test, the integration tests that drive real etcd / ferrite-meta / ferrited
# with real clients (fio, qemu-img/qemu-io, nbdinfo, libiscsi's
# iscsi-test-cu, spdk-rpc), fuzz corpora, and the Linux kernel initiators
# in the VM (a missing VM is a failure, not a skip).
test: build vm-cache
	FERRITE_REQUIRE_VM=1 $(CARGO) test $(CARGO_FLAGS) --no-fail-fast

# Tests that need the VM only: NVMe/TCP with the kernel initiator, and the
# user-space NVMe driver over VFIO against QEMU's emulated controller
# (no-IOMMU and IOMMU type1; hw-tests/tests/nvme_vm.rs, also in `make test`).
hw-test: build vm-cache
	hw-tests/nvmf/run.sh
	$(CARGO) test --release -p ferrite-hw-tests --test nvme_vm -- --nocapture

unit-test:
	$(CARGO) test $(CARGO_FLAGS) --lib

# More crash cycles than `make test` runs (20): make crash-test CYCLES=200
CYCLES ?= 100
crash-test:
	CYCLES=$(CYCLES) $(CARGO) test --release -p ferrite-engine --test store_crash -- --nocapture

# Benchmarks print their figures as `RESULT <name> <value> <unit>` lines.
bench: bench-rt bench-store bench-nbd bench-iscsi

bench-store: build
	$(BIN)/bench-store

bench-iscsi: build
	benchmarks/bench-iscsi.sh

# A local 3-node cluster: RF3 and RF1 side by side, and re-replication time.
bench-cluster: build
	cd benchmarks && python3 bench_cluster.py

# Replica round trips (4k/128k) and fio 4k randwrite QD1/QD32 on an RF2
# volume, over DPDK memif and over kernel TCP on loopback, same run.
bench-dpdk: build
	cd benchmarks && BIN=$(CURDIR)/$(BIN) python3 bench_dpdk.py

bench-nvmf: build vm-cache
	benchmarks/bench-nvmf.sh

# 4k random I/O on QEMU's emulated NVMe in the VM: the kernel's nvme driver
# (fio io_uring) and Ferrite's user-space driver, same device, same run.
bench-nvme: build vm-cache
	FERRITE_NVME_GUEST=$(BIN)/nvme-guest python3 benchmarks/bench_nvme.py

bench-rt: build
	$(BIN)/bench-rt

# fio's nbd engine against Ferrite's vol0 and against qemu-nbd, same run.
bench-nbd: build
	cd benchmarks && python3 bench_nbd.py

# The runtime's tests on aarch64 under qemu-user (not part of `make test`:
# it needs the cross toolchain: gcc-aarch64-linux-gnu libc6-dev-arm64-cross
# qemu-user, and `rustup target add aarch64-unknown-linux-gnu`).
test-aarch64:
	CARGO_TARGET_DIR=target-aarch64 \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
	$(CARGO) test --release -p ferrite-engine --target aarch64-unknown-linux-gnu --test rt_basics --test rt_process

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(CARGO_FLAGS) --all-targets -- -D warnings -A clippy::manual_is_multiple_of

clean:
	$(CARGO) clean
	rm -rf run
