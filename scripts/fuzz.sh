#!/usr/bin/env bash
# Fuzzes every parser for a fixed time each: libFuzzer through cargo-fuzz, on seeds written by
# the tests' own file builders. Any panic, abort, allocation over the limit or timeout fails the
# run and leaves the input under target/fuzz-artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]     (default: 5 s, every target)
#
# FUZZ_SEED=N fixes libFuzzer's random seed (CI uses 1, so that a CI failure replays on any
# machine from a clean clone); unset, every run mutates differently and explores further.
#
# Prints one JSON line per target ({"target", "runs", "seconds", "corpus"}) and writes them all to
# target/fuzz-report.json. Runs on the stable toolchain: cargo-fuzz passes nightly-only flags, and
# RUSTC_BOOTSTRAP=1 lets stable accept them (no second toolchain needs to be fetched).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-5}
seed=${FUZZ_SEED:-0} # 0: libFuzzer picks one
shift || true
if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --version 0.13.2
fi

corpus=target/fuzz-corpus
artifacts=target/fuzz-artifacts
mkdir -p "$corpus" "$artifacts"
# Seeds: small valid files of every kind, written by the tests that build such files (--workspace:
# the features the test run compiled with, so nothing is built again).
LLM_CXR_FUZZ_SEEDS="$PWD/$corpus" cargo test --release --locked -q --workspace --test fuzz_seeds \
    -- --ignored --exact write_fuzz_seeds >/dev/null
LLM_CXR_FUZZ_SEEDS="$PWD/$corpus" cargo test --release --locked -q --workspace --test dicom_variants \
    -- --ignored --exact write_fuzz_seeds >/dev/null

# RUSTC_BOOTSTRAP for cargo-fuzz only: the build scripts of proc-macro2, anyhow and thiserror rerun
# when it changes, so setting it for the seed writers above rebuilt the whole workspace (and
# fuzz-api.sh, without it, rebuilt it once more).
(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build -O)

report=target/fuzz-report.json
: >"$report"
for t in "${targets[@]}"; do
    mkdir -p "$corpus/$t" "$artifacts/$t"
    log="$artifacts/$t/run.log"
    # 2 GiB of resident memory, 1 GiB in one allocation, 10 s for one input: each is a failure.
    if ! (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$t" "../$corpus/$t" -- \
        -max_total_time="$seconds" -seed="$seed" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
        -artifact_prefix="../$artifacts/$t/" -print_final_stats=1) >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz: $t failed; the input is under $artifacts/$t/" >&2
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    files=$(find "$corpus/$t" -type f | wc -l)
    line="{\"target\": \"$t\", \"runs\": $runs, \"seconds\": $seconds, \"corpus\": $files}"
    echo "$line" | tee -a "$report"
done
