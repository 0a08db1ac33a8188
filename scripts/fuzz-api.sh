#!/usr/bin/env bash
# Fuzzes `llm-cxr serve` from its own OpenAPI document with schemathesis (PyPI): every answer must
# be a designed one (no 5xx), with a status, content type and body schema the document declares.
#
#   scripts/fuzz-api.sh [BINARY]      # default target/release/llm-cxr; builds nothing
#
# It writes the tests' tiny model and random VQ-GAN (the ignored `write_fixture` of
# tests/serve_hardening.rs; cargo builds that test binary if it is missing), starts the server on a
# free port with a random API key, installs schemathesis into target/schemathesis-venv, and runs it
# with a fixed budget: FUZZ_MAX_EXAMPLES cases per operation (default 30) and FUZZ_MAX_TIME seconds
# in all (default 120). Prints the requests the server answered, by status; exits non-zero on any
# failed check.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/llm-cxr}
max_examples=${FUZZ_MAX_EXAMPLES:-30}
max_time=${FUZZ_MAX_TIME:-120}
[ -x "$bin" ] || { echo "no binary at $bin (cargo build --release -p llm-cxr)" >&2; exit 2; }

work=$(mktemp -d)
server=
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

LLMCXR_FIXTURE_DIR="$work" cargo test --release -q --workspace --test serve_hardening \
  -- --ignored --exact write_fixture >/dev/null

key=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
LLM_CXR_API_KEY="$key" RUST_LOG=info "$bin" serve --model "$work/llm-cxr-tiny" \
  --vqgan "$work/vq64.safetensors" --config "$work/vq64.json" --port 0 \
  --max-tokens 8 --timeout 60 >"$work/stdout" 2>"$work/server.log" &
server=$!
addr=
for _ in $(seq 300); do
  addr=$(sed -n 's|^llm-cxr serving on http://||p' "$work/stdout")
  [ -n "$addr" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "the server did not start" >&2; exit 1; }

venv=target/schemathesis-venv
[ -x "$venv/bin/schemathesis" ] || {
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q schemathesis==4.32.5
}
# The document needs the key too; schemathesis reads it from a file.
curl -sf -H "Authorization: Bearer $key" "http://$addr/openapi.json" >"$work/openapi.json"

status=0
"$venv/bin/schemathesis" --no-color run "$work/openapi.json" --url "http://$addr" \
  --header "Authorization: Bearer $key" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$max_examples" --max-time "$max_time" --seed 16 \
  --request-timeout 60 --suppress-health-check all || status=$?

echo
echo "requests the server answered: $(grep -c ' -> [0-9]' "$work/server.log" || true)"
grep -o ' -> [0-9]*' "$work/server.log" | sort | uniq -c | sed 's/ -> / status /'
if grep -q "panicked" "$work/server.log"; then
  echo "the server panicked:" >&2
  grep -A3 "panicked" "$work/server.log" >&2
  status=1
fi
kill -0 "$server" 2>/dev/null || { echo "the server died" >&2; status=1; }
exit "$status"
