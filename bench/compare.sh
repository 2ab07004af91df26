#!/usr/bin/env bash
# personal-clients next to bare tonic: the same closed-loop load on both, rounds interleaved, in
# one run on one machine (bench/load, `pc-load compare`). See bench/README.md.
# usage, from the project root after `cargo build --release`:
#   bench/compare.sh [DATABASE_URL] [SCENARIOS]
# DATABASE_URL: default a fresh SQLite file; for PostgreSQL, an empty database.
# SCENARIOS: comma-separated, of get,list,create,token,check,http-check;
#            default get,list,create,token.
# Environment:
#   PC_BIN       the service binary (default: release/personal-clients in cargo's target dir)
#   SERVER_ARGS  extra `serve` flags, e.g. the abuse limits a benchmark must lift:
#                --create-rate-per-user off --max-clients-per-user off
#                --exchange-rate-per-client off --exchange-rate-per-source off
#   SEED_N       clients to create first (default 1000)
#   LOAD_ARGS    extra `pc-load compare` flags (default: --rounds 3 --warmup 2s --duration 5s)
#   CHECK_TOKEN  the token `check` and `http-check` ask about: `user` (default, the minted user
#                token) or `client` (an access token of a seeded personal client, whose liveness
#                every check asks)
#   TRACES       `on`: the service exports the spans of every call (sampling 1.0) over OTLP/gRPC
#                to a sink that counts them (`pc-load otlp-sink`); the spans received and those
#                the service dropped are printed at the end. Default `off`: no collector named.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
target_dir() { cargo metadata --format-version 1 --no-deps --manifest-path "$1" | jq -r .target_directory; }
bin=${PC_BIN:-$(target_dir "$root/Cargo.toml")/release/personal-clients}
[ -x "$bin" ] || { echo "compare.sh: no $bin: run cargo build --release, or set PC_BIN" >&2; exit 2; }
cargo build --release --quiet --manifest-path "$root/bench/load/Cargo.toml"
load=$(target_dir "$root/bench/load/Cargo.toml")/release/pc-load
work=$(mktemp -d "${TMPDIR:-/tmp}/pc-compare.XXXXXX")
db=${1:-sqlite://$work/pc.db?mode=rwc}
scenarios=${2:-get,list,create,token}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
traces=() sink=
case ${TRACES:-off} in
  off) ;;
  on)
    sink_port=$(free_port)
    "$load" otlp-sink --listen "127.0.0.1:$sink_port" >"$work/sink.out" 2>"$work/sink.log" &
    sink=$!
    traces=(--otlp-endpoint "http://127.0.0.1:$sink_port" --otlp-protocol grpc --trace-sample-ratio 1)
    ;;
  *) echo "compare.sh: TRACES is on or off" >&2; exit 2 ;;
esac
# shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
RUST_LOG=${RUST_LOG:-warn} "$bin" serve --database-url "$db" --listen "127.0.0.1:$port" ${SERVER_ARGS:-} \
  ${traces[@]+"${traces[@]}"} >"$work/server.log" 2>&1 &
pid=$!
trap 'kill $pid $sink 2>/dev/null; wait $pid $sink 2>/dev/null; rm -rf "$work"' EXIT
for i in $(seq 200); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  kill -0 $pid 2>/dev/null && [ "$i" -lt 200 ] || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.1
done
token=$("$bin" mint-token --database-url "$db" --user bench-user --roles bench --ttl 2h)
"$load" seed --target "http://127.0.0.1:$port" --token "$token" --count "${SEED_N:-1000}" --out "$work"
check=()
case ${CHECK_TOKEN:-user} in
  user) ;;
  client)
    assertion=$(PC_CLIENT_SECRET=$(cat "$work/secret.txt") "$bin" client-assertion \
      --client-id "$(cat "$work/client_id.txt")")
    client_token=$(curl -sf "http://127.0.0.1:$port/auth/v1/token" -d grant_type=client_credentials \
      --data-urlencode "client_id=$(cat "$work/client_id.txt")" \
      -d client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer \
      --data-urlencode "client_assertion=$assertion" | jq -r .access_token)
    check=(--check-token "$client_token")
    ;;
  *) echo "compare.sh: CHECK_TOKEN is user or client" >&2; exit 2 ;;
esac
# shellcheck disable=SC2086 # LOAD_ARGS is a list of flags
"$load" compare --target "http://127.0.0.1:$port" --target-pid $pid --scenario "$scenarios" \
  --token "$token" --ids-file "$work/ids.txt" --secret-file "$work/secret.txt" \
  --client-id "$(cat "$work/client_id.txt")" ${check[@]+"${check[@]}"} --rounds 3 --warmup 2s --duration 5s ${LOAD_ARGS:-}
if [ -n "$sink" ]; then
  curl -sf "http://127.0.0.1:$port/metrics" | grep '^personal_clients_trace_spans_dropped_total'
  kill "$pid"; wait "$pid" 2>/dev/null || true
  kill "$sink"; wait "$sink" 2>/dev/null || true
  cat "$work/sink.out"
fi
