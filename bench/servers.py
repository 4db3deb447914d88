"""Fresh PostgreSQL, BIND and Knot processes on free loopback ports.

Every trial starts its own servers under bench/run/<trial>/ and stops them
when it ends, so no state leaks from one measurement into the next.
PostgreSQL refuses to run as root: initdb and pg_ctl run as `postgres`
through `runuser`; clients connect over TCP with trust authentication.
"""

import base64
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import time

from dnswire import Prober

ZONE = "example.test."
KEY_NAME = "bench-key"
# Seconds a DNS server has to load its zone (the reconcile bench raises it
# for zone files of a million records).
SOA_WAIT = 30


def pg_bindir():
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    if not dirs:
        raise SystemExit("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")
    return dirs[-1]


def free_port():
    """A port free for both TCP and UDP on 127.0.0.1 right now."""
    while True:
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()


def proc_status(pid, field):
    """A /proc/PID/status field in kB (VmHWM, VmRSS), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu(pid):
    """User+system CPU seconds of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


class Postgres:
    """A throw-away cluster with wal_level=logical."""

    def __init__(self, root):
        self.bindir = pg_bindir()
        self.dir = os.path.join(root, "pg")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")
        self.port = free_port()
        os.makedirs(self.dir)
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_pg([f"{self.bindir}/initdb", "-D", self.data, "--auth=trust", "-U", "postgres",
                     "-E", "UTF8", "--no-sync"], quiet=True)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.dir}'\n"
                "wal_level = logical\nmax_replication_slots = 20\nmax_wal_senders = 20\n"
            )
        self._as_pg([f"{self.bindir}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "start"], quiet=True)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_pg(self, argv, quiet=False):
        subprocess.run(["runuser", "-u", "postgres", "--"] + argv, check=True,
                       stdout=subprocess.DEVNULL if quiet else None)

    def tool(self, name):
        return f"{self.bindir}/{name}"

    def psql(self, sql):
        """Runs SQL through psql; returns stdout (unaligned, tuples only)."""
        out = subprocess.run([self.tool("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                              "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c", sql],
                             check=True, capture_output=True, text=True)
        return out.stdout

    def stop(self):
        subprocess.run(["runuser", "-u", "postgres", "--", self.tool("pg_ctl"), "-D", self.data,
                        "-m", "fast", "-w", "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_key(path):
    """Writes a tsig-keygen hmac-sha256 key file; returns its base64 secret."""
    text = subprocess.run(["tsig-keygen", "-a", "hmac-sha256", KEY_NAME], check=True,
                          capture_output=True, text=True).stdout
    with open(path, "w") as f:
        f.write(text)
    return re.search(r'secret "([^"]+)"', text).group(1)


ZONE_FILE = """$ORIGIN example.test.
$TTL 3600
@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@ IN NS ns.example.test.
ns IN A 192.0.2.53
"""


# The CPUs the DNS server runs on (`bench.py --pin`), or None: anywhere.
DNS_CPUS = None


def pin_dns(pid):
    """Moves every thread of the DNS server `pid` onto DNS_CPUS (if set)."""
    if DNS_CPUS is None:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), DNS_CPUS)


def zone_statement(zone, path):
    """A named.conf primary zone statement for `zone` (no trailing dot) from
    `path`, updated and transferred with the bench key."""
    return (f'zone "{zone}" {{ type primary; file "{path}"; '
            f"allow-update {{ key {KEY_NAME}; }}; allow-transfer {{ key {KEY_NAME}; }}; }};\n")


class Bind:
    """named -g serving the dynamic zone example.test. with a TSIG update ACL.

    `options`: extra statements for named.conf's `options { }` block.
    `zones`: an iterable of (zone, zone file path) served instead of
    example.test. (written while named.conf is, so a generator may create
    the files). `ready(bind)`: waits until named serves what it should
    (default: example.test.'s SOA within SOA_WAIT seconds).
    """

    def __init__(self, root, name="bind", options="", zones=None, ready=None):
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.key_file = os.path.join(self.dir, "tsig.key")
        make_key(self.key_file)
        if zones is None:
            path = os.path.join(self.dir, "example.test.zone")
            with open(path, "w") as f:
                f.write(ZONE_FILE)
            zones = [(ZONE[:-1], path)]
        self.conf = os.path.join(self.dir, "named.conf")
        with open(self.conf, "w") as f:
            f.write(
                f'include "{self.key_file}";\n'
                "options {\n"
                f'  directory "{self.dir}";\n'
                f'  pid-file "{self.dir}/named.pid";\n'
                f"  listen-on port {self.port} {{ 127.0.0.1; }};\n"
                "  listen-on-v6 { none; };\n"
                "  recursion no;\n  minimal-responses yes;\n  notify no;\n"
                + "".join(f"  {line}\n" for line in options.splitlines() if line.strip())
                + "};\n"
                "controls { };\n"
            )
            for zone, path in zones:
                f.write(zone_statement(zone, path))
        self.log = os.path.join(self.dir, "named.log")
        self.logf = open(self.log, "w")
        self.proc = subprocess.Popen(["named", "-g", "-n", "2", "-c", self.conf],
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        try:
            if ready is None:
                wait_soa(self.port, self.proc, self.log)
            else:
                ready(self)
        except BaseException:
            self.stop()
            raise
        pin_dns(self.proc.pid)

    @property
    def pid(self):
        return self.proc.pid

    def stop(self, timeout=30):
        stop_proc(self.proc, timeout)
        self.logf.close()


class Knot:
    """knotd serving the same zone with the same key (journal on, zonefile-sync default)."""

    def __init__(self, root, name="knot"):
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir)
        self.port = free_port()
        self.key_file = os.path.join(self.dir, "tsig.key")
        secret = make_key(self.key_file)
        with open(os.path.join(self.dir, "example.test.zone"), "w") as f:
            f.write(ZONE_FILE)
        self.conf = os.path.join(self.dir, "knot.conf")
        with open(self.conf, "w") as f:
            f.write(
                f"server:\n  rundir: {self.dir}\n  listen: 127.0.0.1@{self.port}\n"
                f"log:\n  - target: stderr\n    any: info\n"
                f"database:\n  storage: {self.dir}\n"
                f"key:\n  - id: {KEY_NAME}\n    algorithm: hmac-sha256\n    secret: {secret}\n"
                f"acl:\n  - id: upd\n    key: {KEY_NAME}\n    action: [update, transfer]\n"
                f"template:\n  - id: default\n    storage: {self.dir}\n    journal-content: changes\n"
                f"zone:\n  - domain: example.test.\n    file: example.test.zone\n    acl: upd\n"
            )
        self.logf = open(os.path.join(self.dir, "knotd.log"), "w")
        self.proc = subprocess.Popen(["knotd", "-c", self.conf], stdout=self.logf, stderr=subprocess.STDOUT)
        wait_soa(self.port, self.proc, os.path.join(self.dir, "knotd.log"))
        pin_dns(self.proc.pid)

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        stop_proc(self.proc)
        self.logf.close()


def wait_soa(port, proc, log):
    prober = Prober(port, timeout=0.2)
    deadline = time.time() + SOA_WAIT
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"DNS server exited ({proc.returncode}); log:\n" + open(log).read()[-3000:])
            if prober.soa_serial(ZONE) is not None:
                return
            time.sleep(0.05)
    finally:
        prober.close()
    raise SystemExit(f"DNS server on port {port} did not answer SOA within {SOA_WAIT} s; log:\n" + open(log).read()[-3000:])


def stop_proc(proc, timeout=30):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
