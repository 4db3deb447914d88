# shellcheck shell=bash
# Installs the servers and tools pg2dns's tests and demo drive, when missing.
# Sourced by scripts/test and scripts/demo; Debian/Ubuntu (apt-get) only.

# The newest PostgreSQL server bin directory, or nothing.
pg2dns_pg_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then
        echo "$PG_BIN"
        return
    fi
    local dir
    dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1)
    if [[ -n "$dir" && -x "$dir/initdb" ]]; then
        echo "$dir"
    elif command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    fi
}

# Whether a program is on the PATH or in an sbin directory.
pg2dns_have() {
    command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" || -x "/sbin/$1" ]]
}

# Installs PostgreSQL, BIND, its tools, Knot, PowerDNS with its SQLite
# backend and openssl (the TLS tests make their certificates with it) if any
# of them is missing.
pg2dns_install_servers() {
    local missing=()
    [[ -n "$(pg2dns_pg_bin)" ]] || missing+=(initdb)
    [[ -e /usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql ]] || missing+=(pdns-backend-sqlite3)
    local tool
    for tool in named dig nsupdate tsig-keygen knotd kdig pdns_server pdnsutil sqlite3 psql openssl promtool; do
        pg2dns_have "$tool" || missing+=("$tool")
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    echo "missing: ${missing[*]}; installing with apt-get" >&2
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "not root and no sudo: install postgresql bind9 bind9-utils bind9-dnsutils knot knot-dnsutils pdns-server pdns-backend-sqlite3 sqlite3 openssl prometheus (for promtool) yourself" >&2
            return 1
        fi
        sudo=(sudo)
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "no apt-get: install PostgreSQL (15 or newer), BIND 9 (named, dig, nsupdate, tsig-keygen), Knot and PowerDNS yourself" >&2
        return 1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    # The postgresql package may start a cluster on port 5432: harmless, the
    # tests and the demo run their own servers on free loopback ports. The
    # pdns-server package may start a pdns service on port 53: stopped below.
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        postgresql bind9 bind9-utils bind9-dnsutils knot knot-dnsutils \
        pdns-server pdns-backend-sqlite3 sqlite3 openssl prometheus
    # prometheus brings promtool, which checks packaging/prometheus's rules;
    # its own service is not needed.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
        "${sudo[@]}" systemctl disable --now prometheus || true
    fi
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet pdns 2>/dev/null; then
        "${sudo[@]}" systemctl disable --now pdns || true
    fi
}

# Whether python3 has dnspython 2.4 or newer (the presentation-format oracle;
# Debian 12's python3-dnspython 2.3.0 decodes \DDD wrongly in CAA and HINFO).
pg2dns_have_dnspython() {
    python3 -c 'import sys, dns.version as v; sys.exit(0 if (v.MAJOR, v.MINOR) >= (2, 4) else 1)' >/dev/null 2>&1
}

# Installs dnspython from PyPI for the decoder's oracle test, when missing.
pg2dns_install_dnspython() {
    if pg2dns_have_dnspython; then
        return 0
    fi
    echo "dnspython >= 2.4 missing; installing it with pip" >&2
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
        env DEBIAN_FRONTEND=noninteractive apt-get update
        env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-pip
    fi
    python3 -m pip install --quiet -U 'dnspython>=2.4' 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages -U 'dnspython>=2.4'
    pg2dns_have_dnspython
}

# The cargo-pgrx that builds pg_plugin/, pinned: pgrx in pg_plugin/Cargo.toml
# must be the same version, and 0.18.1 is the newest that builds with rustc
# 1.95 (0.19 needs 1.96).
PG2DNS_PGRX_VERSION=0.18.1

# Builds the pg2dns_plugin extension (pg_plugin/, docs/plugin.md) and
# installs it into the PostgreSQL the tests run: installs PostgreSQL's server
# headers and libclang (bindgen reads the headers) if missing, cargo-pgrx if
# missing or another version, runs `cargo pgrx init` for that PostgreSQL
# once (nothing is downloaded but crates), then `cargo pgrx install`. Prints
# how long each step took.
pg2dns_install_plugin() {
    local pg_config major sudo=() step_start
    pg_config="$(pg2dns_pg_bin)/pg_config"
    if [[ ! -x "$pg_config" ]]; then
        echo "no pg_config next to initdb ($pg_config): install postgresql-server-dev-<major>" >&2
    fi
    major=$("$pg_config" --version 2>/dev/null | sed -E 's/^PostgreSQL ([0-9]+).*/\1/') || true
    if [[ $(id -u) -ne 0 ]]; then
        sudo=(sudo)
    fi
    step_start=$SECONDS
    if [[ ! -x "$pg_config" || ! -e "$("$pg_config" --includedir-server)/postgres.h" ]] ||
        ! command -v clang >/dev/null 2>&1 ||
        ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
        echo "installing PostgreSQL's server headers and libclang with apt-get" >&2
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            "postgresql-server-dev-${major:-all}" libclang-dev clang
        major=$("$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
    fi
    echo "plugin: headers and libclang $((SECONDS - step_start)) s" >&2
    step_start=$SECONDS
    if [[ "$(cargo pgrx --version 2>/dev/null)" != "cargo-pgrx $PG2DNS_PGRX_VERSION" ]]; then
        echo "installing cargo-pgrx $PG2DNS_PGRX_VERSION (several minutes the first time)" >&2
        cargo install cargo-pgrx --version "$PG2DNS_PGRX_VERSION" --locked
    fi
    echo "plugin: cargo-pgrx $((SECONDS - step_start)) s" >&2
    step_start=$SECONDS
    if ! grep -qs "^pg$major = \"$pg_config\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
        cargo pgrx init "--pg$major" "$pg_config"
    fi
    echo "plugin: cargo pgrx init $((SECONDS - step_start)) s" >&2
    step_start=$SECONDS
    local install=(cargo pgrx install --pg-config "$pg_config" --no-default-features --features "pg$major")
    if ((${#sudo[@]})); then
        install+=(--sudo)
    fi
    (cd pg_plugin && "${install[@]}")
    echo "plugin: build and install $((SECONDS - step_start)) s" >&2
}
