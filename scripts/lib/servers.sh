# shellcheck shell=bash
# Throwaway PostgreSQL and BIND servers on loopback, for scripts/demo.
# Each function prints what it does on stderr and fails loudly.

# A TCP port on 127.0.0.1 that nothing listens on.
pg2dns_free_port() {
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    echo "no free port found" >&2
    return 1
}

# Runs a PostgreSQL program as the postgres user when we are root
# (PostgreSQL refuses to run as root).
pg2dns_as_pg() {
    local program="$1"
    shift
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$(pg2dns_pg_bin)/$program" "$@"
    else
        "$(pg2dns_pg_bin)/$program" "$@"
    fi
}

# pg2dns_start_postgres DIR PORT: initdb DIR/pg/data (wal_level = logical,
# trust auth on loopback), start it and wait until pg_isready says yes.
pg2dns_start_postgres() {
    local dir="$1/pg" port="$2"
    mkdir -p "$dir"
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres:postgres "$dir"
    fi
    echo "starting PostgreSQL on 127.0.0.1:$port" >&2
    pg2dns_as_pg initdb -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
    cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
CONF
    pg2dns_as_pg pg_ctl -D "$dir/data" -l "$dir/postgres.log" -W start >/dev/null
    for _ in $(seq 1 300); do
        if pg2dns_as_pg pg_isready -q -h 127.0.0.1 -p "$port" -U postgres -t 1; then
            return 0
        fi
        sleep 0.1
    done
    echo "PostgreSQL did not become ready; its log:" >&2
    cat "$dir/postgres.log" >&2
    return 1
}

# pg2dns_stop_postgres DIR
pg2dns_stop_postgres() {
    local dir="$1/pg"
    if [[ -f "$dir/data/postmaster.pid" ]]; then
        pg2dns_as_pg pg_ctl -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
    fi
}

# The named binary to run. Debian's AppArmor profile for /usr/sbin/named only
# lets it read /etc/bind and friends, not our temporary directory; it
# attaches by path, so where AppArmor is on we run a copy.
pg2dns_named_binary() {
    local dir="$1" named
    named=$(command -v named || echo /usr/sbin/named)
    if [[ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)" == "Y" ]]; then
        cp "$named" "$dir/named"
        named="$dir/named"
    fi
    echo "$named"
}

# pg2dns_start_named DIR PORT ZONE…: a named serving each ZONE (SOA + NS
# only) with updates and transfers allowed for the TSIG key DIR/bind/tsig.key
# (name pg2dns-key). Waits until it answers an SOA query for every zone.
pg2dns_start_named() {
    local dir="$1/bind" port="$2"
    shift 2
    mkdir -p "$dir"
    # Readable by its owner only (named runs as the same user), so that
    # pg2dns has no reason to warn about it.
    (umask 077 && tsig-keygen -a hmac-sha256 pg2dns-key >"$dir/tsig.key")
    cat >"$dir/named.conf" <<CONF
include "$dir/tsig.key";
options {
    directory "$dir";
    pid-file "$dir/named.pid";
    session-keyfile "$dir/session.key";
    managed-keys-directory "$dir";
    listen-on port $port { 127.0.0.1; };
    listen-on-v6 { none; };
    recursion no;
    dnssec-validation no;
    notify no;
    allow-transfer { key pg2dns-key; };
};
controls { };
CONF
    local zone
    for zone in "$@"; do
        cat >"$dir/$zone.zone" <<ZONE
\$TTL 3600
@ IN SOA ns.pg2dns.invalid. hostmaster.pg2dns.invalid. 1 3600 600 86400 60
@ IN NS ns.pg2dns.invalid.
ZONE
        cat >>"$dir/named.conf" <<CONF
zone "$zone" { type primary; file "$dir/$zone.zone"; allow-update { key pg2dns-key; }; };
CONF
    done
    echo "starting named on 127.0.0.1:$port" >&2
    "$(pg2dns_named_binary "$dir")" -g -n 1 -c "$dir/named.conf" >"$dir/named.log" 2>&1 &
    echo $! >"$dir/named.bgpid"
    for zone in "$@"; do
        for _ in $(seq 1 300); do
            if dig +short +time=1 +tries=1 SOA "$zone" @127.0.0.1 -p "$port" | grep -q hostmaster; then
                continue 2
            fi
            sleep 0.1
        done
        echo "named does not answer for $zone; its log:" >&2
        cat "$dir/named.log" >&2
        return 1
    done
}

# pg2dns_stop_named DIR
pg2dns_stop_named() {
    local pidfile="$1/bind/named.bgpid"
    if [[ -f "$pidfile" ]]; then
        kill "$(cat "$pidfile")" 2>/dev/null || true
        wait "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    fi
}
