# Sourced by the suites that drive the release binary (tests/python, tests/node, tests/proxies).
# `release_binary` sets BINARY: $PC_BINARY when the caller names one, taken as it is; else the
# release binary in cargo's target directory, built when it is missing and also when any of its
# sources is newer, since a stale binary would test yesterday's server. When it is current,
# cargo is not run at all. Needs ROOT, the repository's root.
release_binary() {
    if [[ -n "${PC_BINARY:-}" ]]; then
        BINARY="$PC_BINARY"
        [[ -x "$BINARY" ]] || { echo "PC_BINARY=$BINARY is not an executable file" >&2; return 1; }
        return 0
    fi
    BINARY="${CARGO_TARGET_DIR:-$ROOT/target}/release/personal-clients"
    if [[ ! -x "$BINARY" ]] || [[ -n "$(find "$ROOT/src" "$ROOT/proto" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" \
            "$ROOT/build.rs" -newer "$BINARY" -print -quit 2>/dev/null)" ]]; then
        cargo build --release --locked
    fi
}
