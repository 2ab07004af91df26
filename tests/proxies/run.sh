#!/usr/bin/env bash
# Puts nginx (auth_request) and Caddy (reverse_proxy asking the check) in front of a small
# upstream, with the configurations of README.md's "Behind a proxy" section exactly as written
# there (only the ports changed), and checks through each proxy that the release binary's
# forward authorization (/auth/v1/check) lets live tokens through with the caller's identity,
# drops the caller's own copies of the identity headers, and turns away missing, malformed,
# expired and revoked tokens with the service's challenge.
#
#   bash tests/proxies/run.sh
#
# nginx and Caddy come from Debian at the versions pinned below (installed with apt when another
# version or none is there, which needs root); the binary is $PC_BINARY when set, otherwise
# target/release/personal-clients, built when missing or older than its sources. Everything runs
# on loopback ports picked at start, from a temporary directory that is removed when every check
# passed and kept (its path printed) otherwise: the service's, the proxies' and the upstream's
# logs are there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

# Debian 12's own packages (nginx from bookworm-security). When Debian replaces one of these
# versions the install fails and names the versions now offered: update the pin then.
NGINX_VERSION="1.22.1-9+deb12u12"
CADDY_VERSION="2.6.2-5"

say() { echo "proxies: $*"; }
die() { echo "proxies: $*" >&2; exit 1; }

# --- the proxies, curl and jq ----------------------------------------------------------------

installed_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }

install_pinned() {
    local package="$1" version="$2"
    [[ "$(installed_version "$package")" == "$version" ]] && return 0
    [[ $EUID -eq 0 ]] || die "$package $version is not installed, and installing it needs root: apt-get install $package=$version"
    # The package lists are read as they are; updated only when they lack the pinned version.
    if ! apt-cache show "$package=$version" >/dev/null 2>&1; then
        apt-get update -qq
    fi
    if ! apt-cache show "$package=$version" >/dev/null 2>&1; then
        apt-cache policy "$package" >&2
        die "Debian does not offer $package $version (offered: above); update the pin in tests/proxies/run.sh"
    fi
    say "installing $package $version"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --allow-downgrades "$package=$version" >/dev/null
    [[ "$(installed_version "$package")" == "$version" ]] || die "$package $version did not install"
}
install_pinned nginx "$NGINX_VERSION"
install_pinned caddy "$CADDY_VERSION"
for tool in curl jq python3; do
    if ! command -v "$tool" >/dev/null; then
        [[ $EUID -eq 0 ]] || die "$tool is missing"
        apt-get install -y -qq "$tool" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null; }
    fi
done
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
[[ -x "$NGINX" ]] || die "nginx is installed but not found on PATH nor at /usr/sbin/nginx"
nginx -V 2>&1 | grep -q -- --with-http_auth_request_module || die "this nginx lacks auth_request"

# --- the binary ------------------------------------------------------------------------------

. "$ROOT/tests/release-binary.sh"
release_binary || die "no binary to test"

# The binary without the caller's PC_* variables (every flag has such a twin): this script
# passes what it means to pass as flags. `env` execs it, so in the background $! is its pid.
PC_UNSET=()
for name in $(compgen -e); do if [[ $name == PC_* ]]; then PC_UNSET+=(-u "$name"); fi; done
pc() { env "${PC_UNSET[@]}" NO_COLOR=1 "$BINARY" "$@"; }

# --- a scratch directory, and everything started from it stopped at the end -----------------

WORK="$(mktemp -d "${TMPDIR:-/tmp}/pc-proxies.XXXXXX")"
STARTED=()
finish() {
    local status=$? pid
    for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ $status -eq 0 ]]; then
        rm -rf "$WORK"
    else
        echo "proxies: logs kept in $WORK (service.log, nginx.log, caddy.log, upstream.log)" >&2
    fi
}
trap finish EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
PORTS=()
while [[ ${#PORTS[@]} -lt 4 ]]; do
    port="$(free_port)"
    [[ " ${PORTS[*]} " == *" $port "* ]] || PORTS+=("$port")
done
PC_PORT=${PORTS[0]} UPSTREAM_PORT=${PORTS[1]} NGINX_PORT=${PORTS[2]} CADDY_PORT=${PORTS[3]}
ISSUER="http://127.0.0.1:$PC_PORT"

# Waits until URL answers with one of the STATUSES (a regex), for at most 30 s; gives up with
# the log of the process PID when it does not, or when that process ends.
wait_until() {
    local what="$1" pid="$2" log="$3" url="$4" statuses="$5" code=000
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || { tail -n 40 "$log" >&2; die "$what exited while starting (log: above)"; }
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)"
        [[ $code =~ ^($statuses)$ ]] && return 0
        sleep 0.1
    done
    tail -n 40 "$log" >&2
    die "$what: $url still answers $code after 30 s (log: above)"
}

# --- the service and the upstream ------------------------------------------------------------

DATABASE_URL="sqlite://$WORK/pc.db?mode=rwc"
ISSUER_FLAGS=(--database-url "$DATABASE_URL" --issuer "$ISSUER" --public-host "127.0.0.1:$PC_PORT")
pc migrate --database-url "$DATABASE_URL" > "$WORK/migrate.log" 2>&1 || { cat "$WORK/migrate.log" >&2; die "migrate failed"; }
env "${PC_UNSET[@]}" NO_COLOR=1 "$BINARY" serve --listen "127.0.0.1:$PC_PORT" "${ISSUER_FLAGS[@]}" \
    > "$WORK/service.log" 2>&1 &
STARTED+=($!)
wait_until "the service" "$!" "$WORK/service.log" "$ISSUER/healthz" 200

python3 "$ROOT/tests/proxies/echo.py" "$UPSTREAM_PORT" > "$WORK/upstream.log" 2>&1 &
STARTED+=($!)
wait_until "the upstream" "$!" "$WORK/upstream.log" "http://127.0.0.1:$UPSTREAM_PORT/" 200

# --- the README's configurations, with these ports -------------------------------------------

# The block of README.md between `<!-- NAME: begin -->` and `<!-- NAME: end -->`, fences left out.
readme_block() {
    local out="$2"
    awk -v begin="<!-- $1: begin -->" -v end="<!-- $1: end -->" \
        '$0 == begin { on = 1; next } $0 == end { on = 0 } on && !/^```/' README.md > "$out"
    [[ -s "$out" ]] || die "no block between <!-- $1: begin --> and <!-- $1: end --> in README.md"
}

# Replaces the README's port FROM by TO in FILE, where it must stand exactly once: a block that
# names a port more often, or not at all, has changed in a way this script does not know.
use_port() {
    local file="$1" from="$2" to="$3" count
    count="$(grep -oE "(^|[^0-9])$from([^0-9]|$)" "$file" | wc -l)"
    [[ $count -eq 1 ]] || die "$file: the README's block names port $from $count times, not once; update tests/proxies/run.sh"
    sed -i -E "s/(^|[^0-9])$from([^0-9]|$)/\1$to\2/" "$file"
}

mkdir -p "$WORK/nginx/tmp" "$WORK/caddy"

readme_block "proxies nginx" "$WORK/nginx/server.conf"
use_port "$WORK/nginx/server.conf" 8080 "$NGINX_PORT"
use_port "$WORK/nginx/server.conf" 8000 "$UPSTREAM_PORT"
use_port "$WORK/nginx/server.conf" 50051 "$PC_PORT"
# The README's server block inside the least that nginx needs to run from a scratch directory,
# in the foreground, with its pid, logs and buffers there.
cat > "$WORK/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log stderr notice;
events {
    worker_connections 64;
}
http {
    access_log $WORK/nginx/access.log;
    client_body_temp_path $WORK/nginx/tmp/client_body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    include $WORK/nginx/server.conf;
}
EOF
"$NGINX" -t -q -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e stderr || die "nginx refuses the README's configuration"
"$NGINX" -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e stderr > "$WORK/nginx.log" 2>&1 &
STARTED+=($!)
# Up when a request without a token comes back refused by the check.
wait_until "nginx" "$!" "$WORK/nginx.log" "http://127.0.0.1:$NGINX_PORT/" 401

readme_block "proxies caddy" "$WORK/caddy/site"
use_port "$WORK/caddy/site" 8080 "$CADDY_PORT"
use_port "$WORK/caddy/site" 8000 "$UPSTREAM_PORT"
use_port "$WORK/caddy/site" 50051 "$PC_PORT"
# No admin endpoint; its autosaved configuration and its data go to the scratch directory.
{ printf '{\n\tadmin off\n}\n\n'; cat "$WORK/caddy/site"; } > "$WORK/caddy/Caddyfile"
export XDG_CONFIG_HOME="$WORK/caddy/config" XDG_DATA_HOME="$WORK/caddy/data"
caddy validate --config "$WORK/caddy/Caddyfile" --adapter caddyfile > "$WORK/caddy.log" 2>&1 \
    || { cat "$WORK/caddy.log" >&2; die "caddy refuses the README's configuration"; }
caddy run --config "$WORK/caddy/Caddyfile" --adapter caddyfile >> "$WORK/caddy.log" 2>&1 &
STARTED+=($!)
wait_until "caddy" "$!" "$WORK/caddy.log" "http://127.0.0.1:$CADDY_PORT/" 401

say "nginx $(installed_version nginx), caddy $(installed_version caddy) ($(caddy version | cut -d' ' -f1)), service on $ISSUER"

# --- tokens ----------------------------------------------------------------------------------

mint() { pc mint-token "${ISSUER_FLAGS[@]}" --user "$1" --roles "$2" --ttl "${3:-1h}"; }
ALICE="$(mint alice reader,writer)"
BOB_NO_ROLES="$(mint bob "")"

# A credential of alice's, as the JSON API creates it: its JSON in the file named.
create_credential() {
    curl -sS --fail-with-body --max-time 10 "$ISSUER/api/v1/iam/personal_clients" \
        -H "Authorization: Bearer $ALICE" -H 'Content-Type: application/json' \
        -d "{\"displayName\": \"$1\", \"scopedRoles\": [\"reader\"], \"expires\": \"86400s\"}" > "$2" \
        || die "creating a credential failed: $(cat "$2")"
}

# An access token for the credential in FILE, from the token endpoint, with an assertion that
# the binary signs (the secret on standard input, the issuer as audience).
client_token() {
    local client_id assertion answer
    client_id="$(jq -r .client.clientId "$1")"
    assertion="$(jq -r .clientSecret "$1" | pc client-assertion --client-id "$client_id" --audience "$ISSUER")"
    answer="$(curl -sS --max-time 10 "$ISSUER/auth/v1/token" -d grant_type=client_credentials \
        --data-urlencode "client_id=$client_id" \
        -d client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer \
        --data-urlencode "client_assertion=$assertion")"
    jq -re .access_token <<< "$answer" || die "no access token for $client_id: $answer"
}

create_credential "proxied job" "$WORK/job.json"
JOB_CLIENT_ID="$(jq -r .client.clientId "$WORK/job.json")"
JOB_TOKEN="$(client_token "$WORK/job.json")"

# Expired: a token of one second, waited out against the service itself.
EXPIRED="$(mint alice reader 1s)"
for _ in $(seq 1 100); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $EXPIRED" "$ISSUER/auth/v1/check")" == 401 ]] && break
    sleep 0.1
done

# --- what the checks use ---------------------------------------------------------------------

# Requests URL with the curl arguments that follow; prints the status. The response's headers go
# to $WORK/$NAME.headers and its body to $WORK/$NAME.body, NAME being $1.
call() {
    local name="$1" url="$2"
    shift 2
    curl -sS --max-time 10 -o "$WORK/$name.body" -D "$WORK/$name.headers" -w '%{http_code}' "$@" "$url"
}

# Every value of response header NAME in FILE, one a line.
header() {
    tr -d '\r' < "$2" | awk -v name="$(tr '[:upper:]' '[:lower:]' <<< "$1")" '
        index(tolower($0), name ":") == 1 { value = substr($0, length(name) + 2); sub(/^[ \t]+/, "", value); print value }'
}

fail() { echo "    $*" >&2; exit 1; }

# What the upstream received of request header NAME: a JSON array of its copies, or null.
received() { jq -c --arg name "$1" '.headers[$name]' "$WORK/through.body"; }

upstream_requests() { grep -c '^echo: ' "$WORK/upstream.log" || true; }

# A request through PROXY (its URL) with TOKEN ("" for none) must be refused: 401, the same one
# WWW-Authenticate as the service's own answer to that token, which must hold ERROR (or no
# error at all when ERROR is ""), and the upstream never asked.
expect_refused() {
    local proxy="$1" token="$2" error="$3" status before auth=()
    [[ -n $token ]] && auth=(-H "Authorization: Bearer $token")
    status="$(call direct "$ISSUER/auth/v1/check" "${auth[@]}")"
    [[ $status == 401 ]] || fail "the service itself answered $status, not 401"
    local challenge
    challenge="$(header www-authenticate "$WORK/direct.headers")"
    if [[ -z $error ]]; then
        [[ $challenge =~ ^Bearer && $challenge != *error=* ]] || fail "the service's challenge: '$challenge'"
    else
        [[ $challenge == *"error=\"$error\""* ]] || fail "the service's challenge lacks error=\"$error\": '$challenge'"
    fi
    before="$(upstream_requests)"
    status="$(call through "$proxy/orders/42" "${auth[@]}" -H 'X-User-Id: mallory')"
    [[ $status == 401 ]] || fail "through the proxy: $status, not 401: $(cat "$WORK/through.body")"
    local through
    through="$(header www-authenticate "$WORK/through.headers")"
    [[ $through == "$challenge" ]] || fail "the proxy's WWW-Authenticate is '$through', the service's '$challenge'"
    [[ "$(upstream_requests)" == "$before" ]] || fail "the upstream was asked"
    echo "    401, WWW-Authenticate: $through"
}

# A request through PROXY with TOKEN and the caller's own copies of the identity headers must
# reach the upstream with the service's identity headers and none of the caller's; the method,
# path and body unchanged. USER, CLIENT and ROLES are what the upstream must see ("" for absent).
SPOOFS=(-H 'X-User-Id: mallory' -H 'X-User-Id: eve' -H 'X-Client-Id: forged-client'
        -H 'X-User-Roles: admin' -H 'x-user-roles: root'
        -H 'X_User_Id: mallory' -H 'X_Client_Id: forged-client' -H 'X_User_Roles: admin')
expect_through() {
    local proxy="$1" token="$2" user="$3" client="$4" roles="$5" status name want got
    status="$(call direct "$ISSUER/auth/v1/check" -H "Authorization: Bearer $token")"
    [[ $status == 200 ]] || fail "the service itself answered $status, not 200"
    status="$(call through "$proxy/orders/42?view=full" -X POST -H "Authorization: Bearer $token" \
        "${SPOOFS[@]}" -H 'Content-Type: application/json' -d '{"qty": 1}')"
    [[ $status == 200 ]] || fail "through the proxy: $status: $(cat "$WORK/through.body")"
    [[ "$(jq -r '.method + " " + .path + " " + .body' "$WORK/through.body")" == 'POST /orders/42?view=full {"qty": 1}' ]] \
        || fail "the request changed on its way: $(jq -c '{method, path, body}' "$WORK/through.body")"
    for name in x-user-id x-client-id x-user-roles; do
        case $name in x-user-id) want="$user" ;; x-client-id) want="$client" ;; *) want="$roles" ;; esac
        # What the service answered is what the upstream gets, and what this test expects.
        [[ "$(header "$name" "$WORK/direct.headers")" == "$want" ]] \
            || fail "the service's $name is '$(header "$name" "$WORK/direct.headers")', expected '$want'"
        got="$(received "$name")"
        if [[ -z $want ]]; then
            [[ $got == null ]] || fail "$name reached the upstream: $got, though the service set none"
        else
            [[ $got == "$(jq -cn --arg v "$want" '[$v]')" ]] || fail "$name at the upstream: $got, expected [\"$want\"]"
        fi
    done
    for name in x_user_id x_client_id x_user_roles; do
        got="$(received "$name")"
        [[ $got == null ]] || fail "the caller's $name reached the upstream: $got"
    done
    echo "    upstream got x-user-id=$(received x-user-id) x-client-id=$(received x-client-id) x-user-roles=$(received x-user-roles)"
}

# A credential that worked through PROXY a moment ago is refused on the next request after its
# revocation.
expect_revoked_at_once() {
    local proxy="$1" file="$WORK/revoked-$2.json" token id status
    create_credential "revoked behind $2" "$file"
    token="$(client_token "$file")"
    status="$(call through "$proxy/" -H "Authorization: Bearer $token")"
    [[ $status == 200 ]] || fail "before the revocation: $status"
    id="$(jq -r .client.id "$file")"
    status="$(call revoke "$ISSUER/api/v1/iam/personal_clients/$id" -X DELETE -H "Authorization: Bearer $ALICE")"
    [[ $status == 200 ]] || fail "DELETE answered $status: $(cat "$WORK/revoke.body")"
    status="$(call through "$proxy/" -H "Authorization: Bearer $token")"
    [[ $status == 401 ]] || fail "the next request after the revocation: $status, not 401"
    [[ "$(header www-authenticate "$WORK/through.headers")" == *'error="invalid_token"'* ]] \
        || fail "challenge: '$(header www-authenticate "$WORK/through.headers")'"
    echo "    200, then DELETE, then 401, WWW-Authenticate: $(header www-authenticate "$WORK/through.headers")"
}

PASSED=0 FAILED=0
check() {
    local name="$1" status
    shift
    # A subshell of its own with errexit: any command that fails fails this check alone.
    set +e
    ( set -e; "$@" ) > "$WORK/check.out" 2>&1
    status=$?
    set -e
    if [[ $status -eq 0 ]]; then
        PASSED=$((PASSED + 1))
        echo "ok   $name"
    else
        FAILED=$((FAILED + 1))
        echo "FAIL $name"
    fi
    cat "$WORK/check.out"
}

# --- the checks, through each proxy ----------------------------------------------------------

for proxy in nginx caddy; do
    if [[ $proxy == nginx ]]; then url="http://127.0.0.1:$NGINX_PORT"; else url="http://127.0.0.1:$CADDY_PORT"; fi
    check "$proxy: no token: 401 with the bare challenge" expect_refused "$url" "" ""
    check "$proxy: a malformed token: 401 invalid_token" expect_refused "$url" "not-a-token" invalid_token
    check "$proxy: an expired token: 401 invalid_token" expect_refused "$url" "$EXPIRED" invalid_token
    check "$proxy: a user's token: its identity, none of the caller's copies" \
        expect_through "$url" "$ALICE" alice "" "reader,writer"
    check "$proxy: a user's token without roles: no X-User-Roles" \
        expect_through "$url" "$BOB_NO_ROLES" bob "" ""
    check "$proxy: a personal client's token: X-Client-Id and the scoped roles" \
        expect_through "$url" "$JOB_TOKEN" alice "$JOB_CLIENT_ID" reader
    check "$proxy: a credential revoked a moment ago: refused on the next request" \
        expect_revoked_at_once "$url" "$proxy"
done

echo "proxies: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
