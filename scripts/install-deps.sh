#!/usr/bin/env bash
# Installs what Ferrite's build, `make run` and `make test` need and this
# machine lacks. Idempotent and quick when everything is there. Works as
# root or with password-less sudo, with no stdin (CI).
set -euo pipefail

# Debian packages: build tools, etcd, and the real clients the tests drive.
PKGS=(
  build-essential pkg-config protobuf-compiler libprotobuf-dev clang libclang-dev
  etcd-server etcd-client
  fio libnbd-bin nbdkit
  libiscsi-bin tgt
  python3-pip
  iproute2 procps psmisc
  libdpdk-dev dpdk
)
# Python packages (SPDK's own JSON-RPC client, `spdk_rpc`).
PIP_PKGS=(spdk)

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  # Keep package scripts from starting daemons (etcd, tgtd) on this machine:
  # the tests start their own, on their own ports.
  policy=/usr/sbin/policy-rc.d
  had_policy=0; [ -e "$policy" ] && had_policy=1
  if [ $had_policy = 0 ]; then printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null; $SUDO chmod +x "$policy"; fi
  trap '[ $had_policy = 0 ] && $SUDO rm -f "$policy"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# qemu-img/qemu-io and qemu's iSCSI driver (qemu-block-extra) must be of one
# version: the driver is a module that refuses to load into another build.
# Some images carry a qemu-utils backport with no matching qemu-block-extra,
# and Debian's qemu-system (the VM harness) breaks it anyway, so both come
# from the same Debian release.
qemu_ver=$(apt-cache policy qemu-block-extra 2>/dev/null | awk '/Candidate:/ {print $2}')
have_utils=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
have_extra=$(dpkg-query -W -f='${Version}' qemu-block-extra 2>/dev/null || true)
if [ -n "$qemu_ver" ] && { [ "$have_utils" != "$have_extra" ] || [ -z "$have_extra" ] || ! command -v qemu-io >/dev/null; }; then
  echo "install-deps: installing qemu-utils and qemu-block-extra $qemu_ver (one version for both)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -qq --no-install-recommends --allow-downgrades \
    "qemu-utils=$qemu_ver" "qemu-block-extra=$qemu_ver" >/dev/null
fi

pip_missing=()
for p in "${PIP_PKGS[@]}"; do
  python3 -m pip show -q "$p" >/dev/null 2>&1 || pip_missing+=("$p")
done
if [ ${#pip_missing[@]} -gt 0 ]; then
  echo "install-deps: pip installing ${pip_missing[*]}"
  python3 -m pip install -q --disable-pip-version-check "${pip_missing[@]}" \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages "${pip_missing[@]}"
fi
