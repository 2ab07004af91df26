#!/usr/bin/env bash
# Runs standard OAuth libraries for Node.js against the release binary: openid-client and
# oauth4webapi as a client and as a resource server, jose, express-oauth2-jwt-bearer in a real
# Express app, and the README's "Resource servers and OAuth libraries" blocks as written. The
# packages are the versions tests/node/package-lock.json pins.
#
#   bash tests/node/run.sh [extra `node --test` arguments]
#
# Needs node (20 or newer) with npm, cargo (unless PC_BINARY names a binary), and the npm
# registry for the first run. Two servers are started on free loopback ports, each over a SQLite
# file of its own in a temporary directory, and stopped however the tests end.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
HERE="$ROOT/tests/node"

fail() { echo "node: $*" >&2; exit 1; }

command -v node >/dev/null || fail "node is not installed: these tests need Node.js 20 or newer"
command -v npm >/dev/null || fail "npm is not installed"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
(( node_major >= 20 )) || fail "Node.js $(node --version) is too old: 20 or newer is needed (WebCrypto Ed25519, fetch)"

. "$ROOT/tests/release-binary.sh"
release_binary || fail "no binary to test"
BINARY="$(cd "$(dirname "$BINARY")" && pwd)/$(basename "$BINARY")"
export PC_BINARY="$BINARY"

# Exactly the locked versions, every run: npm ci checks the lock against package.json and
# refuses a mismatch, and a node_modules left by an interrupted run is replaced.
(cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || fail "npm ci failed in tests/node"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/pc-node.XXXXXX")"
PIDS=()
NAMES=()

# The binary reads a PC_* twin of every flag: none of this shell's may reach it. A command, not
# a function, so that `$CLEAN ... &` leaves $! the server's own pid.
CLEAN=(env)
for name in $(compgen -e); do
    if [[ "$name" == PC_* ]]; then CLEAN+=(-u "$name"); fi
done
CLEAN+=(NO_COLOR=1)

free_port() {
    node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'
}

# The status line of GET PATH on 127.0.0.1:PORT, by bash alone (no curl needed). A subshell,
# so that its redirections stay its own.
http_status() (
    port="$1" path="$2" line=""
    exec 2>/dev/null
    exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$path" "$port" >&3
    IFS= read -r -t 2 line <&3 || true
    printf '%s' "${line%$'\r'}"
)

# Starts server NAME (A or B) and exports SERVER_<NAME>_* for the tests.
start_server() {
    local name="$1" port db log pid status=""
    port="$(free_port)"
    db="sqlite://$WORK/$name.db?mode=rwc"
    log="$WORK/server-$name.log"
    "${CLEAN[@]}" "$BINARY" migrate --database-url "$db" >"$log" 2>&1 \
        || { cat "$log" >&2; fail "migrate failed for server $name (log above)"; }
    "${CLEAN[@]}" "$BINARY" serve --listen "127.0.0.1:$port" --database-url "$db" \
        --issuer "http://127.0.0.1:$port" --public-host "127.0.0.1:$port" >>"$log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    NAMES+=("$name")
    # Up to 10 s (100 × 0.1 s) for /healthz to answer 200.
    for _ in $(seq 1 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$log" >&2
            fail "server $name exited while starting (log above)"
        fi
        status="$(http_status "$port" /healthz || true)"
        [[ "$status" == "HTTP/1."?" 200"* ]] && break
        sleep 0.1
    done
    if [[ "$status" != "HTTP/1."?" 200"* ]]; then
        cat "$log" >&2
        fail "server $name not healthy on 127.0.0.1:$port within 10 s (last answer: ${status:-none}; log above)"
    fi
    export "SERVER_${name}_ISSUER=http://127.0.0.1:$port"
    export "SERVER_${name}_PUBLIC_HOST=127.0.0.1:$port"
    export "SERVER_${name}_DATABASE_URL=$db"
    export "SERVER_${name}_LOG=$log"
}

# Stops every server started (SIGTERM, then SIGKILL after 15 s); a server that did not exit 0
# after SIGTERM fails the run, as the README promises it does. The logs are kept when anything
# failed, and their path printed.
stop_servers() {
    local status=$? i pid code
    for i in "${!PIDS[@]}"; do
        pid="${PIDS[$i]}"
        kill -TERM "$pid" 2>/dev/null || true
    done
    for i in "${!PIDS[@]}"; do
        pid="${PIDS[$i]}"
        for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
            echo "node: server ${NAMES[$i]} still running 15 s after SIGTERM; killed" >&2
            status=1
        fi
        code=0
        wait "$pid" 2>/dev/null || code=$?
        if [[ $code -ne 0 ]]; then
            echo "node: server ${NAMES[$i]} exited $code after SIGTERM" >&2
            status=1
        fi
    done
    if [[ $status -ne 0 ]]; then
        for name in "${NAMES[@]}"; do
            echo "--- server $name: last lines of $WORK/server-$name.log ---" >&2
            tail -n 40 "$WORK/server-$name.log" >&2 || true
        done
        echo "node: the servers' databases and logs are kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap stop_servers EXIT

start_server A
start_server B

# Every test file, in one run; node's own closing lines (tests, pass, fail) are the summary.
# A file that cannot load, or a test that throws, is a failure: nothing is skipped silently.
node --test --test-reporter=spec "$@" "$HERE"/*.test.mjs
