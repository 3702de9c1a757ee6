#!/usr/bin/env bash
# Runs the fuzz targets one after the other (called by `make fuzz`; see docs/fuzzing.md).
#   FUZZ_SECONDS    seconds per target (default 600)
#   FUZZ_TARGETS    which targets (default: all five)
#   FUZZ_SANITIZER  cargo-fuzz sanitizer: none (default) or address
#   FUZZ_LOG_DIR    where the libFuzzer logs go (default fuzz/logs)
# Each target starts from its committed seeds (fuzz/seeds/<target>) plus what earlier runs
# kept (fuzz/corpus/<target>, not committed). A crash is written to fuzz/artifacts/<target>/
# and makes the script exit 1 after all targets ran.
set -uo pipefail

cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${FUZZ_SECONDS:-600}
TARGETS=${FUZZ_TARGETS:-"mcp_body jose jwks config listing"}
SANITIZER=${FUZZ_SANITIZER:-none}
LOG_DIR=${FUZZ_LOG_DIR:-fuzz/logs}
# cargo-fuzz passes -Z flags to rustc; only the stable toolchain is installed.
export RUSTC_BOOTSTRAP=1

mkdir -p "$LOG_DIR"
echo "building fuzz targets (sanitizer: $SANITIZER)"
nice -n 19 cargo fuzz build -s "$SANITIZER" || exit 2

summary=()
failed=0
for target in $TARGETS; do
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    log="$LOG_DIR/$target.log"
    before=$(find "fuzz/artifacts/$target" -type f | wc -l)
    echo "fuzzing $target for ${SECONDS_PER_TARGET}s (log: $log)"
    start=$(date +%s)
    nice -n 19 cargo fuzz run -s "$SANITIZER" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        >"$log" 2>&1
    rc=$?
    elapsed=$(( $(date +%s) - start ))
    after=$(find "fuzz/artifacts/$target" -type f | wc -l)
    crashes=$((after - before))
    fuzzed=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    execs=$(awk '/stat::number_of_executed_units:/ {print $2}' "$log" | tail -1)
    rate=$(awk '/stat::average_exec_per_sec:/ {print $2}' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    units=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<<"$last")
    files=$(find "fuzz/corpus/$target" -type f | wc -l)
    if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ]; then
        failed=1
        echo "  $target: libFuzzer exit $rc; new artifacts:"
        ls -t "fuzz/artifacts/$target" | head -n "$crashes" | sed "s|^|    fuzz/artifacts/$target/|"
        grep -m3 -E "panicked at|ERROR: |SUMMARY" "$log" | sed 's/^/    /'
    fi
    summary+=("$(printf '%-9s %5ss (fuzzing %5ss) %12s execs %8s exec/s  corpus %5s (%s files)  cov %6s  ft %7s  crashes %s' \
        "$target" "$elapsed" "${fuzzed:-?}" "${execs:-?}" "${rate:-?}" "${units:-?}" "$files" "${cov:-?}" "${ft:-?}" "$crashes")")
done

{
    echo "fuzz summary (sanitizer $SANITIZER, ${SECONDS_PER_TARGET}s per target, $(date -u +%FT%TZ)):"
    printf '  %s\n' "${summary[@]}"
} | tee "$LOG_DIR/summary.txt"
if [ "$failed" -ne 0 ]; then
    echo "crashes found: reproduce with RUSTC_BOOTSTRAP=1 cargo fuzz run -s $SANITIZER <target> fuzz/artifacts/<target>/<file>"
    exit 1
fi
