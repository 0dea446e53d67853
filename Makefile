# Ferrite: `make run` starts a one-node Ferrite; `make test` runs every test.
# Both install what is missing first (scripts/install-deps.sh).

SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never
# Tests and benchmarks use the same optimised build as `make run`.
CARGO_FLAGS ?= --release --workspace
BIN := target/release

.PHONY: all deps build run test unit-test bench bench-rt clean fmt lint

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(CARGO) build $(CARGO_FLAGS) --bins

# A one-node Ferrite in the foreground (Ctrl-C stops it cleanly).
run: build
	@scripts/run.sh

# Every test: unit tests, the runtime's process tests, and the integration
# tests that drive real etcd / ferrite-meta / ferrited with real clients.
test: build
	$(CARGO) test $(CARGO_FLAGS) --no-fail-fast

unit-test:
	$(CARGO) test $(CARGO_FLAGS) --lib

# Benchmarks print their figures as `RESULT <name> <value> <unit>` lines.
bench: bench-rt

bench-rt: build
	$(BIN)/bench-rt

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(CARGO_FLAGS) --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf run
