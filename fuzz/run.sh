#!/usr/bin/env bash
# Fuzz every target (or the ones named) for SECONDS_PER_TARGET seconds
# each, one after the other, and print per target the executions libFuzzer
# reports in its final stats and whether it crashed.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s, all targets)
#
# Needs the nightly toolchain; installs cargo-fuzz if it is missing. Builds
# once (release, debug assertions on, AddressSanitizer) into fuzz/target.
# New inputs the fuzzer finds go to fuzz/target/corpus/<target> (not
# committed); the committed seeds in fuzz/corpus/<target> are only read.
# A crash leaves its input in fuzz/artifacts/<target>/ and the log in
# fuzz/target/logs/<target>.log; the script then exits 1.
set -uo pipefail

secs="${1:-60}"
shift || true
case "$secs" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2; exit 2 ;;
esac
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked || exit 1
fi

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# -a: debug assertions (and overflow checks) on, as in the test builds.
# Every target at once: one build, reused by each run below.
cargo +nightly fuzz build -a || exit 1

mkdir -p "$here/target/logs"
printf '%-18s %8s %12s %10s %8s %s\n' target seconds execs 'execs/s' units result
passed=0
failed=0
for t in "${targets[@]}"; do
    work="$here/target/corpus/$t"
    log="$here/target/logs/$t.log"
    mkdir -p "$work" "$here/corpus/$t"
    start=$(date +%s)
    cargo +nightly fuzz run -a "$t" "$work" "$here/corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        >"$log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    execs=$(grep -o 'stat::number_of_executed_units:[[:space:]]*[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    eps=$(grep -o 'stat::average_exec_per_sec:[[:space:]]*[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    units=$(grep -o 'stat::new_units_added:[[:space:]]*[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    if [ "$rc" -eq 0 ]; then
        result=ok
        passed=$((passed + 1))
    else
        artifact=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -1 | sed 's/Test unit written to //')
        result="CRASHED (exit $rc) ${artifact:-see $log}"
        failed=$((failed + 1))
    fi
    printf '%-18s %8s %12s %10s %8s %s\n' "$t" "$took" "${execs:-?}" "${eps:-?}" "${units:-?}" "$result"
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
