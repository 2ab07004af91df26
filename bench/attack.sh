#!/usr/bin/env bash
# What a peer with no credential can make the server hold: each attack of `pc-load attack`
# (bench/load) against a fresh server on a fresh SQLite database, at 100 and then 1,000
# connections, one table line per run. See bench/README.md.
# usage, from the project root after `cargo build --release`:
#   bench/attack.sh [SERVER_ARGS...]        e.g. bench/attack.sh --memory-budget 1GiB
# SERVER_ARGS: `serve` flags added to the defaults.
# Environment:
#   PC_BIN       the service binary (default: release/personal-clients in cargo's target dir)
#   ATTACKS      default: unread-answers header-flood one-address http1-heads bodies
#   CONNECTIONS  default: 100 1000
#   ATTACK_ARGS  extra `pc-load attack` flags, e.g. --hold 10s or --max-rss 4GiB
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
target_dir() { cargo metadata --format-version 1 --no-deps --manifest-path "$1" | jq -r .target_directory; }
bin=${PC_BIN:-$(target_dir "$root/Cargo.toml")/release/personal-clients}
[ -x "$bin" ] || { echo "attack.sh: no $bin: run cargo build --release, or set PC_BIN" >&2; exit 2; }
cargo build --release --quiet --manifest-path "$root/bench/load/Cargo.toml"
load=$(target_dir "$root/bench/load/Cargo.toml")/release/pc-load
# 1,000 connections of an attack, the probes and the runtime need some 2,000 descriptors in
# pc-load; the server raises its own limit to the hard limit.
want=4096
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $want ]; then
  ulimit -n $want 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/pc-attack.XXXXXX")
pid=
alive() { # running, not exited (a child that exited is a zombie until waited for)
  local status
  status=$(cat "/proc/$1/status" 2>/dev/null) || return 1
  case $status in *"(zombie)"*) return 1 ;; esac
}
stop_server() {
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=
}
trap 'stop_server; rm -rf "$work"' EXIT
start_server() { # a fresh database and a free port each time; sets pid and port
  rm -f "$work"/pc.db*
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  RUST_LOG=${RUST_LOG:-warn} "$bin" serve --database-url "sqlite://$work/pc.db?mode=rwc" \
    --listen "127.0.0.1:$port" "$@" >"$work/server.log" 2>&1 &
  pid=$!
  for i in $(seq 200); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return 0
    alive "$pid" && [ "$i" -lt 200 ] || { cat "$work/server.log" >&2; exit 1; }
    sleep 0.1
  done
}
echo "$("$bin" --version 2>/dev/null || echo "$bin"), serve ${*:-with default flags}; $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, load average $(cut -d' ' -f1-3 /proc/loadavg)"
header=
for attack in ${ATTACKS:-unread-answers header-flood one-address http1-heads bodies}; do
  for connections in ${CONNECTIONS:-100 1000}; do
    start_server "$@"
    # shellcheck disable=SC2086 # ATTACK_ARGS is a list of flags
    "$load" attack "$attack" --addr "127.0.0.1:$port" --pid "$pid" --connections "$connections" \
      $header ${ATTACK_ARGS:-} || echo "attack.sh: pc-load attack $attack failed" >&2
    header=--no-header
    if ! alive "$pid"; then
      wait "$pid" && status=0 || status=$?
      echo "attack.sh: the server exited (status $status) during $attack at $connections connections; its log ends:" >&2
      tail -n 20 "$work/server.log" >&2
      pid=
    fi
    stop_server
  done
done
