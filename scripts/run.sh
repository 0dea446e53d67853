#!/usr/bin/env bash
# `make run`: a one-node Ferrite in the foreground. Ctrl-C stops it cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
mkdir -p run
echo "ferrite: starting ferrited (2 reactors, adaptive polling). Ctrl-C stops it."
exec "$BIN/ferrited" --cores 0-1 --poll-mode adaptive --no-pin -r run/ferrite.sock
