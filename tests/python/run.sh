#!/usr/bin/env bash
# Runs the Python client tests against the release binary: the service as seen by a client
# written in another language (generated stubs, reflection only, PyJWT, plain HTTP), and its
# JSON routes as ConductorOne's own Python SDK sees them.
#
#   bash tests/python/run.sh [extra pytest arguments]
#
# Needs python3 (with venv) and cargo on PATH, and PyPI for the first run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
VENV="$TARGET/python-venv"
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
# Exactly these packages; pip is quick when they are already installed, so a venv left half
# set up by an interrupted run mends itself.
# conductorone-sdk is pinned: test_sdk.py works around what this version lacks (List paging),
# and another version may lack other things or have gained them. authlib is pinned for the same
# reason: test_authlib.py names where its defaults differ from the service's rules.
"$VENV/bin/python" -m pip install -q \
    grpcio grpcio-tools grpcio-reflection grpcio-health-checking PyJWT cryptography pytest \
    conductorone-sdk==0.17.2 openapi-spec-validator authlib==1.9.10 requests
PYTHON="$VENV/bin/python"

# The release binary, built when missing or stale (an old one lacking the health service fails
# every test here), or the one PC_BINARY names.
. "$ROOT/tests/release-binary.sh"
release_binary
export PC_BINARY="$BINARY"

# Stubs go to a fresh directory each run, so they always match proto/ as it is now.
STUBS="$(mktemp -d)"
trap 'rm -rf "$STUBS"' EXIT
# grpc_tools ships the well-known types (google/protobuf/*.proto) and adds them to the include
# path itself, so only proto/ is named here. google/api/*.proto are not among them: the service
# protos import annotations.proto (for google.api.http), whose module the stubs import in turn,
# and none of the packages above provides it (googleapis-common-protos would), so it is
# generated from proto/ beside them.
"$PYTHON" -m grpc_tools.protoc \
    --proto_path="$ROOT/proto" \
    --python_out="$STUBS" \
    --grpc_python_out="$STUBS" \
    c1/api/iam/v1/personal_client.proto \
    c1/api/auth/v1/token.proto \
    google/api/annotations.proto \
    google/api/http.proto
export PYTHONPATH="$STUBS${PYTHONPATH:+:$PYTHONPATH}"

# Keep the work tree clean: no __pycache__ beside the tests, pytest's cache under target/.
export PYTHONDONTWRITEBYTECODE=1
# No `exec`: the EXIT trap must still remove the stubs. pytest's status is the script's status.
status=0
"$PYTHON" -m pytest -q -o cache_dir="$TARGET/pytest-cache" tests/python "$@" || status=$?
exit "$status"
