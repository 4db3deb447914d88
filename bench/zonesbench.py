"""`bench/bench zones`: pg2dns serving many zones on one BIND at its
defaults (issue #24's targets), against the reference client measured on the
same BIND in the same trial.

For each zone count Z (--zones, default 50000; comma-separated for several):
  - BIND with its DEFAULT tcp-clients (150), update-quota (100) and
    tcp-idle-timeout, serving z1.bench. … zZ.bench.: one zone file (SOA + NS,
    relative names) hard-linked once per zone (BIND refuses one writable file
    for two zones, and each zone needs its own journal), `allow-update` and
    `allow-transfer` for one TSIG key. Its start (until "running" and the
    last zone answering SOA) and RSS are measured;
  - pg2dns configured for them as Z `[[zone]]` entries sharing one key file
    (the TOML way of main today); `check-config`, `setup` (first load of
    every zone) and the start of `pg2dns run` (spawn → /readyz 200) timed;
  - idle: pg2dns's RSS, open fds and TCP connections to BIND (its socket
    inodes matched in /proc/net/tcp), the size of one /metrics scrape;
  - one transaction inserting one A record into every zone
    (big.zI.bench. A 10.x.y.z): commit → every zone answers it over UDP,
    each name queried only once BIND has logged adding it (so the probes
    stay about one per zone); the connection count and fds sampled
    meanwhile;
  - 20 txn/s for 60 s (--zones-lat-rate, --zones-lat-secs), each one row in
    a random zone: commit → answer p50/p99, each owner polled until seen;
  - after the load, and again --zones-settle s later: RSS, fds, connections;
  - a TSIG AXFR of a sample of zones compared with the table;
  - pg2dns and its BIND stopped, a new BIND set up the same way (the zones
    as pg2dns found them: a zone's first UPDATE makes its journal, which
    costs BIND more than the next ones), then `examples/blast`: one
    one-record UPDATE per zone (blast.zI.bench.) over 16 connections (the
    target's cap, --zones-blast-connections) with at most
    --zones-blast-in-flight unanswered, the reference; over as many
    connections as pg2dns held at its peak (≤ 140, under BIND's
    tcp-clients) when that differs; and once more over 16 on that BIND,
    the journals now made (again.zI.bench., for comparison with the runs
    before this method).
"""

import datetime
import json
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.request

import pgwire
from dnswire import _encode_name, TYPE_A, TYPE_SOA
from servers import Bind, Postgres, free_port, pin_dns, proc_status, stop_proc

SUFFIX = "bench."
ZONE_FILE = """$TTL 3600
@ IN SOA ns.bench. hostmaster.bench. 1 3600 600 86400 60
@ IN NS ns.bench.
"""


def zone_name(i):
    return f"z{i}.{SUFFIX}"


def a_rdata(i):
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


# ---------------------------------------------------------------- processes


def cpu_pressure_total():
    """/proc/pressure/cpu's `some` total (µs), or None."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().split("total=")[1])
    except (OSError, IndexError, ValueError):
        return None


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def socket_inodes(pid):
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        pass
    return inodes


TCP_STATES = {"01": "established", "02": "syn_sent", "04": "fin_wait1", "05": "fin_wait2",
              "06": "time_wait", "08": "close_wait", "09": "last_ack", "0B": "closing"}


def connections_to(pid, port):
    """pg2dns's TCP sockets to 127.0.0.1:port, by state: its socket inodes
    matched in /proc/net/tcp (the remote port is the DNS server's)."""
    inodes = socket_inodes(pid)
    # /proc/net/tcp is not read atomically: a socket may show twice while
    # the table changes, so each inode counts once.
    by_inode = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            rem_port = int(parts[2].split(":")[1], 16)
            if rem_port == port and parts[9] in inodes:
                by_inode[parts[9]] = TCP_STATES.get(parts[3], parts[3])
    states = {}
    for state in by_inode.values():
        states[state] = states.get(state, 0) + 1
    return states


class Sampler(threading.Thread):
    """Samples a process's fds and its connections to `port` every 0.25 s."""

    def __init__(self, pid, port):
        super().__init__(daemon=True)
        self.pid, self.port = pid, port
        self.stop_ev = threading.Event()
        self.max_conns = 0
        self.max_established = 0
        self.max_fds = 0

    def run(self):
        while not self.stop_ev.is_set():
            states = connections_to(self.pid, self.port)
            self.max_conns = max(self.max_conns, sum(states.values()))
            self.max_established = max(self.max_established, states.get("established", 0))
            self.max_fds = max(self.max_fds, fd_count(self.pid) or 0)
            self.stop_ev.wait(0.25)

    def stop(self):
        self.stop_ev.set()
        self.join()


class Timeline(threading.Thread):
    """pg2dns's UPDATEs written and awaiting an answer over time: its
    /metrics scraped every `every` s (`pg2dns_update_messages_total` summed,
    `pg2dns_server_in_flight` summed), as (seconds since `t0`, messages,
    in flight). With BIND's log lines of the same phase it makes the
    timeline of `bench/zones-timeline` (when the first UPDATE left, the
    send rate and the in-flight count against blast's)."""

    def __init__(self, metrics_port, t0, every=0.1):
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.t0, self.every = t0, every
        self.stop_ev = threading.Event()
        self.samples = []

    def run(self):
        while not self.stop_ev.is_set():
            at = time.time()
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    body = r.read().decode(errors="replace")
            except OSError:
                body = ""
            sent = flying = 0.0
            for line in body.splitlines():
                if line.startswith("pg2dns_update_messages_total"):
                    sent += float(line.rsplit(None, 1)[1])
                elif line.startswith("pg2dns_server_in_flight"):
                    flying += float(line.rsplit(None, 1)[1])
            if body:
                self.samples.append((round(at - self.t0, 3), int(sent), int(flying)))
            self.stop_ev.wait(max(0.0, self.every - (time.time() - at)))

    def stop(self):
        self.stop_ev.set()
        self.join()


def buckets(times, width=0.1):
    """How many of `times` (s) fall in each `width`-s bucket from 0."""
    counts = {}
    for t in times:
        b = int(t // width)
        counts[b] = counts.get(b, 0) + 1
    return counts


def rate_summary(times, width=1.0):
    """First and last time, and the median and peak count per `width` s
    between them (the steady rate), of sorted `times`."""
    if not times:
        return {}
    c = buckets(times, width)
    lo, hi = int(times[0] // width), int(times[-1] // width)
    per = sorted(c.get(b, 0) for b in range(lo, hi + 1))
    return {"first_s": round(times[0], 3), "last_s": round(times[-1], 3),
            "median_per_s": per[len(per) // 2] / width, "peak_per_s": per[-1] / width}


def write_timeline(path, bind_times, visible_times, samples, width=0.1):
    """CSV per `width` s: BIND's additions logged, names answering, and
    pg2dns's messages written and in flight at the bucket's last sample."""
    added, seen = buckets(bind_times, width), buckets(visible_times, width)
    by_bucket = {}
    for t, sent, flying in samples:
        by_bucket[int(t // width)] = (sent, flying)
    last = max([0] + list(added) + list(seen) + list(by_bucket))
    prev = (0, 0)
    with open(path, "w") as f:
        f.write("t_s,bind_added,answering,pg2dns_sent_total,pg2dns_in_flight\n")
        for b in range(0, last + 1):
            prev = by_bucket.get(b, prev)
            f.write(f"{b * width:.1f},{added.get(b, 0)},{seen.get(b, 0)},{prev[0]},{prev[1]}\n")


def snapshot(pid, port):
    conns = connections_to(pid, port)
    return {"rss_kib": proc_status(pid, "VmRSS"), "hwm_kib": proc_status(pid, "VmHWM"),
            "fds": fd_count(pid), "conns": sum(conns.values()), "conn_states": conns}


# ---------------------------------------------------------------- DNS


class BatchProber:
    """Many UDP queries in flight on one socket: which names answer yet."""

    def __init__(self, port, batch=256, timeout=1.0):
        self.addr = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.batch, self.timeout = batch, timeout
        self.qid = 0

    def answering(self, names, qtype=TYPE_A):
        """The subset of `names` with at least one answer RR of `qtype`."""
        found = set()
        names = list(names)
        for at in range(0, len(names), self.batch):
            waiting = {}
            for name in names[at:at + self.batch]:
                self.qid = (self.qid + 1) & 0xFFFF
                waiting[self.qid] = name
                msg = struct.pack("!HHHHHH", self.qid, 0, 1, 0, 0, 0) + _encode_name(name) + \
                    struct.pack("!HH", qtype, 1)
                self.sock.sendto(msg, self.addr)
            end = time.time() + self.timeout
            while waiting and time.time() < end:
                self.sock.settimeout(max(0.001, end - time.time()))
                try:
                    data = self.sock.recv(65535)
                except socket.timeout:
                    break
                if len(data) < 12:
                    continue
                qid, _flags, _qd, an = struct.unpack("!HHHH", data[:8])
                name = waiting.pop(qid, None)
                if name is not None and an > 0:
                    found.add(name)
        return found

    def close(self):
        self.sock.close()


class ManyZonesBind(Bind):
    """named -g serving Z zones at BIND's defaults (tcp-clients, update-quota)."""

    def __init__(self, root, zones, timeout):
        zdir = os.path.join(root, "bind", "zones")
        os.makedirs(zdir)
        template = os.path.join(root, "bind", "template.zone")
        with open(template, "w") as f:
            f.write(ZONE_FILE)

        def zone_files():
            for i in range(1, zones + 1):
                path = os.path.join(zdir, f"z{i}.zone")
                os.link(template, path)
                yield zone_name(i)[:-1], path

        started = time.time()
        super().__init__(root, zones=zone_files(),
                         ready=lambda bind: bind.wait_loaded(zones, started, timeout))
        self.start_s = round(time.time() - started, 2)

    def wait_loaded(self, zones, started, timeout):
        """Until named answers the first and last zone's SOA and says it runs."""
        prober = BatchProber(self.port, timeout=0.2)
        last = zone_name(zones)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"named exited ({self.proc.returncode}): {tail(self.log)}")
                if time.time() - started > timeout:
                    raise RuntimeError(f"named did not load {zones} zones within {timeout} s: {tail(self.log)}")
                log_tail = tail(self.log, 4000)
                if "not loaded due to errors" in log_tail:
                    raise RuntimeError(f"named could not load a zone: {log_tail[-1500:]}")
                if prober.answering([last, zone_name(1)], TYPE_SOA) == {last, zone_name(1)} \
                        and "running" in log_tail:
                    break
                time.sleep(0.1)
        finally:
            prober.close()

    def stop(self, timeout=120):
        super().stop(timeout)


def tail(path, n=1500):
    try:
        with open(path, errors="replace") as f:
            f.seek(max(0, os.path.getsize(path) - n))
            return f.read()
    except OSError:
        return ""


def axfr_zone(port, key_file, zone):
    """A zone's records as (owner, ttl, TYPE, rdata), apex SOA/NS left out."""
    proc = subprocess.run(["dig", "-k", key_file, "AXFR", zone, "@127.0.0.1", "-p", str(port),
                           "+noall", "+answer"], capture_output=True, text=True)
    if proc.returncode != 0 or "Transfer failed" in proc.stdout:
        return None
    have = set()
    for line in proc.stdout.splitlines():
        parts = line.split(None, 4)
        if len(parts) < 5 or line.startswith(";"):
            continue
        owner, ttl, _cls, rtype, rdata = parts
        if owner.lower() == zone and rtype in ("SOA", "NS"):
            continue
        have.add((owner.lower(), int(ttl), rtype, rdata))
    return have


# ---------------------------------------------------------------- pg2dns


class Service:
    """`pg2dns run` on a config of Z [[zone]] entries."""

    def __init__(self, binary, root, pg, dns, zones, connections=None):
        self.binary, self.root = binary, root
        self.config = os.path.join(root, "pg2dns.toml")
        self.metrics_port = free_port()
        with open(self.config, "w") as f:
            f.write("version = 1\n[database]\n"
                    f'url = "{pg.url}"\nslot = "pg2dns"\npublication = "pg2dns"\n'
                    f'[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n')
            if connections:
                f.write(f'[[server]]\naddress = "127.0.0.1:{dns.port}"\nconnections = {connections}\n')
            for i in range(1, zones + 1):
                f.write(f'[[zone]]\nname = "{zone_name(i)}"\nprimary = "127.0.0.1:{dns.port}"\n'
                        f'tsig_key_file = "{dns.key_file}"\n')
        self.log = os.path.join(root, "pg2dns.log")
        self.proc = None

    def env(self):
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        return env

    def command(self, sub, timeout):
        """Runs `pg2dns SUB -c config`; returns (seconds, exit code)."""
        started = time.time()
        with open(self.log, "a") as log:
            log.write(f"=== pg2dns {sub}\n")
            log.flush()
            try:
                rc = subprocess.run([self.binary, sub, "-c", self.config], env=self.env(), stdout=log,
                                    stderr=log, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        return round(time.time() - started, 3), rc

    def start(self):
        with open(self.log, "a") as log:
            log.write("=== pg2dns run\n")
        self.proc = subprocess.Popen([self.binary, "run", "-c", self.config], env=self.env(),
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "a"))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def ready(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics_size(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=30) as r:
                body = r.read()
            return len(body), body.count(b"\n")
        except OSError:
            return None, None

    def stop(self):
        if self.proc:
            stop_proc(self.proc, timeout=60)
        self.proc = None

    def warnings(self):
        return log_counts(self.log)


def log_counts(path):
    """pg2dns's WARN and ERROR lines (check-config's and setup's output
    left out), and among them those about connecting, "no answer" and
    "Too many open files"."""
    counts = {"warn": 0, "error": 0, "cannot connect": 0, "no answer": 0, "emfile": 0}
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if " WARN " not in line and " ERROR " not in line:
                    continue
                counts["warn" if " WARN " in line else "error"] += 1
                low = line.lower()
                if "cannot connect" in low or ("connect" in low and "timed out" in low):
                    counts["cannot connect"] += 1
                if "no answer" in low:
                    counts["no answer"] += 1
                if "too many open files" in low:
                    counts["emfile"] += 1
    except OSError:
        pass
    return counts


# ---------------------------------------------------------------- phases


def wait_for(cond, timeout, alive):
    """Polls `cond` until true (returns the time) or `timeout` s (None)."""
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return time.time()
        if not alive():
            raise RuntimeError("pg2dns exited")
        time.sleep(0.05)
    return None


# BIND logs every record an UPDATE adds, with its own clock (ms):
# "07-Dec-2026 06:33:38.627 client … updating zone 'z1.bench/IN': adding an
# RR at 'big.z1.bench' A 10.0.0.1".
BIG_ADDED = re.compile(r"^(\d\d-\w{3}-\d{4} \d\d:\d\d:\d\d\.\d{3}) .*adding an RR at 'big\.z(\d+)\.bench' A ")


class LogFollower:
    """The lines appended to a file since it was opened."""

    def __init__(self, path):
        self.f = open(path, errors="replace")
        self.f.seek(0, os.SEEK_END)
        self.partial = ""

    def lines(self):
        data = self.partial + self.f.read()
        lines = data.split("\n")
        self.partial = lines.pop()
        return lines

    def close(self):
        self.f.close()


class Profile:
    """`perf record -g` of pg2dns over one phase, when PG2DNS_BENCH_PERF
    names a directory (how the profiles in BENCHMARKS.md were taken):
    PG2DNS_BENCH_PERF=/tmp/prof bench/bench zones --zones 20000, then
    `perf report -i /tmp/prof/zones-20000-txn.data --no-children`."""

    def __init__(self, pid, name):
        self.proc = None
        where = os.environ.get("PG2DNS_BENCH_PERF")
        if where and shutil.which("perf"):
            os.makedirs(where, exist_ok=True)
            out = os.path.join(where, f"{name}.data")
            self.proc = subprocess.Popen(["perf", "record", "-F", "499", "-g", "-p", str(pid), "-o", out],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc:
            self.proc.send_signal(2)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def one_transaction(svc, conn, dns, zones, timeout, sampler, timeline_path=None):
    """Inserts big.zI.bench. into every zone in one transaction. A zone's
    time is when its name first answers over UDP; a name is queried only
    once BIND has logged adding it (its own log, ms), so probes stay about
    one per zone instead of loading BIND while pg2dns works. (BIND logs the
    addition before it writes its journal and makes the record visible, so
    the log alone would flatter whoever sends.)"""
    sql = (f"INSERT INTO pg2dns.rr(owner, type, rdata) SELECT 'big.z' || i || '.{SUFFIX}', 'A', "
           f"'10.' || ((i >> 16) & 255) || '.' || ((i >> 8) & 255) || '.' || (i & 255) "
           f"FROM generate_series(1, {zones}) AS i")
    log = LogFollower(dns.log)
    prober = BatchProber(dns.port, timeout=0.5)
    t0 = time.time()
    trace = Timeline(svc.metrics_port, t0)
    trace.start()
    conn.query(sql)
    committed = time.time()
    logged, visible, waiting = {}, {}, {}
    try:
        while len(visible) < zones and time.time() - committed < timeout:
            for line in log.lines():
                m = BIG_ADDED.match(line)
                if m and int(m.group(2)) not in logged:
                    i = int(m.group(2))
                    logged[i] = datetime.datetime.strptime(m.group(1), "%d-%b-%Y %H:%M:%S.%f").timestamp()
                    waiting[f"big.{zone_name(i)}"] = i
            if waiting:
                got = prober.answering(list(waiting))
                now = time.time()
                for name in got:
                    visible[waiting.pop(name)] = now
            if len(visible) < zones:
                if not svc.alive():
                    break
                time.sleep(0.02)
    finally:
        log.close()
        prober.close()
        trace.stop()
    seen_at = sorted(t - committed for t in visible.values())
    logged_at = sorted(t - committed for t in logged.values())
    complete = len(visible) == zones
    res = {"txn_commit_s": round(committed - t0, 3), "txn_zones": zones,
           "txn_zones_answered": len(seen_at), "txn_complete": complete,
           "txn_timeout_s": timeout,
           "txn_all_s": round(seen_at[-1], 3) if complete else None,
           "txn_median_zone_s": round(seen_at[len(seen_at) // 2], 3) if seen_at else None,
           "txn_last_seen_s": round(seen_at[-1], 3) if seen_at else None,
           "txn_zones_logged": len(logged_at),
           "txn_last_logged_s": round(logged_at[-1], 3) if logged_at else None,
           "txn_peak_conns": sampler.max_conns, "txn_peak_established": sampler.max_established,
           "txn_peak_fds": sampler.max_fds}
    # The timeline: when BIND logged the first addition, its steady rate,
    # and pg2dns's first message and in-flight count (from its /metrics).
    res["txn_bind_added"] = rate_summary(logged_at)
    base = committed - t0
    samples = [(round(t - base, 3), sent, flying) for t, sent, flying in trace.samples]
    sent0 = samples[0][1] if samples else 0
    first_sent = next((t for t, sent, _ in samples if sent > sent0), None)
    res["txn_first_sent_s"] = first_sent
    busy = [flying for t, sent, flying in samples if first_sent is not None and t >= first_sent
            and (not seen_at or t <= seen_at[-1])]
    if busy:
        busy.sort()
        res["txn_in_flight_median"] = busy[len(busy) // 2]
        res["txn_in_flight_p10"] = busy[len(busy) // 10]
    if timeline_path:
        write_timeline(timeline_path, logged_at, seen_at, [s for s in samples if s[0] >= 0])
    if not complete:
        res["txn_missing_example"] = [zone_name(i) for i in range(1, zones + 1) if i not in visible][:3]
    return res


def random_load(svc, conn, dns, zones, rate, secs):
    """`rate` one-row transactions a second for `secs` s, each in a random
    zone; commit → answer per row."""
    rng = random.Random(24)
    prober = BatchProber(dns.port, timeout=0.5)
    total = rate * secs
    lat, pending, i, trace = [], {}, 0, []
    t0 = time.time()
    next_due = t0
    deadline = t0 + secs + 30
    try:
        while (i < total or pending) and time.time() < deadline:
            now = time.time()
            if i < total and now >= next_due:
                i += 1
                z = rng.randint(1, zones)
                owner = f"lat-{i}.{zone_name(z)}"
                conn.query(f"INSERT INTO pg2dns.rr(owner, type, rdata) VALUES ('{owner}', 'A', '{a_rdata(i)}')")
                pending[owner] = time.time()
                next_due += 1.0 / rate
                continue
            if pending:
                got = prober.answering(list(pending))
                now = time.time()
                for owner in got:
                    tc = pending.pop(owner)
                    lat.append(now - tc)
                    trace.append((owner, tc, now))
            if not svc.alive():
                break
            time.sleep(max(0.0, min(next_due - time.time(), 0.001 if pending else 0.005)))
    finally:
        prober.close()
    ms = sorted(x * 1000 for x in lat)

    def pct(q):
        return round(ms[min(len(ms) - 1, int(q * len(ms)))], 2) if ms else None

    res = {"lat_rate": rate, "lat_secs": secs, "lat_commits": i, "lat_seen": len(ms), "lat_lost": len(pending),
           "lat_p50_ms": pct(0.5), "lat_p90_ms": pct(0.9), "lat_p99_ms": pct(0.99),
           "lat_max_ms": round(ms[-1], 2) if ms else None}
    # Each transaction split where BIND logs adding its record (as `bench
    # latency` does): commit → at the server (PostgreSQL's walsender and
    # pg2dns) and at the server → visible (BIND's journal, its answer).
    added = named_added(dns.log, "lat")
    split = [(added[o.split(".")[0]], tc, seen) for o, tc, seen in trace if o.split(".")[0] in added]
    res.update(pcts([a - tc for a, tc, _ in split], "lat_to_server"))
    res.update(pcts([seen - a for a, _, seen in split], "lat_server_to_visible"))
    # The slowest, with wall-clock times to line up with pg2dns's log.
    slow = sorted(split, key=lambda x: x[1] - x[2])[:10]
    res["lat_slowest"] = [{"commit": round(tc, 3), "to_server_ms": round((a - tc) * 1000, 1),
                           "to_visible_ms": round((seen - a) * 1000, 1)} for a, tc, seen in slow]
    return res


def named_added(named_log, prefix):
    """{owner label: time} of BIND's "adding an RR at 'PREFIX-N.…'" lines
    (named -g logs in local time, to the millisecond)."""
    pat = re.compile(r"^(\d\d-\w{3}-\d{4} \d\d:\d\d:\d\d\.\d+) .*adding an RR at '(" + re.escape(prefix)
                     + r"-\d+)\.")
    out = {}
    try:
        with open(named_log, errors="replace") as f:
            for line in f:
                m = pat.match(line)
                if m:
                    t = datetime.datetime.strptime(m.group(1), "%d-%b-%Y %H:%M:%S.%f").timestamp()
                    out.setdefault(m.group(2), t)
    except OSError:
        pass
    return out


def pcts(xs, prefix):
    """p50, p99 and max of `xs` (seconds) in ms, under keys PREFIX_p50_ms…"""
    if not xs:
        return {}
    xs = sorted(x * 1000 for x in xs)
    return {f"{prefix}_p50_ms": round(xs[len(xs) // 2], 2),
            f"{prefix}_p99_ms": round(xs[min(len(xs) - 1, int(0.99 * len(xs)))], 2),
            f"{prefix}_max_ms": round(xs[-1], 2)}


def verify_sample(pg, dns, zones, n=20):
    """TSIG AXFR of zone 1, zone Z and n random zones against the table."""
    rng = random.Random(7)
    sample = sorted({1, zones} | {rng.randint(1, zones) for _ in range(n)})
    bad = []
    for i in sample:
        zone = zone_name(i)
        out = pg.psql(f"SELECT lower(owner), ttl, upper(type), rdata FROM pg2dns.rr "
                      f"WHERE lower(owner) LIKE '%.{zone[:-1]}.'")
        want = set()
        for line in out.splitlines():
            owner, ttl, rtype, rdata = line.split("|")
            want.add((owner, int(ttl), rtype, rdata))
        have = axfr_zone(dns.port, dns.key_file, zone)
        if have is None:
            bad.append(f"{zone}: AXFR failed")
        elif have != want:
            bad.append(f"{zone}: {len(want - have)} missing, {len(have - want)} extra")
    return not bad, (f"{len(sample)} zones' AXFR equal the table" if not bad else "; ".join(bad[:5]))


BLAST_ADDED = re.compile(r"^(\d\d-\w{3}-\d{4} \d\d:\d\d:\d\d\.\d{3}) .*adding an RR at '(blast|again)(\d+)\.z(\d+)\.bench' A ")


def blast(args, dns, zones_file, zones, connections, timeline_path=None, prefix="blast"):
    """blast over `connections`; `prefix` "blast" on fresh zones, "again"
    on zones that already have their journals."""
    log = LogFollower(dns.log)
    try:
        res = blast_run(args, dns, zones_file, zones, connections, prefix)
        res["fresh"] = prefix == "blast"
        logged = []
        for line in log.lines():
            m = BLAST_ADDED.match(line)
            if m and m.group(2) == prefix and int(m.group(3)) == connections:
                logged.append(datetime.datetime.strptime(m.group(1), "%d-%b-%Y %H:%M:%S.%f").timestamp())
    finally:
        log.close()
    if logged:
        logged.sort()
        rel = [t - logged[0] for t in logged]
        res["bind_added"] = rate_summary(rel)
        if timeline_path:
            write_timeline(timeline_path, rel, [], [])
    return res


def blast_run(args, dns, zones_file, zones, connections, prefix="blast"):
    cmd = [args.blast, "--server", f"127.0.0.1:{dns.port}", "--key-file", dns.key_file,
           "--zones-file", zones_file, "--connections", str(connections),
           "--in-flight", str(args.zones_blast_in_flight), "--prefix", f"{prefix}{connections}"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    res = {"connections": connections,
           "command": "cargo run --release -p pg2dns --example blast -- " + " ".join(cmd[1:])
           .replace(os.path.dirname(zones_file) + "/", "").replace(str(dns.port), "$DNSPORT")}
    if out.returncode != 0:
        res["failed"] = (out.stdout + out.stderr)[-500:]
        return res
    for tok in out.stdout.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            if k == "connections":
                continue
            try:
                res[k] = int(v) if v.isdigit() else float(v)
            except ValueError:
                res[k] = v
    return res


def trial(args, zones):
    label = f"zones-{zones}"
    print(f"--- {label}", flush=True)
    root = os.path.abspath(os.path.join(args.outdir, label))
    os.makedirs(root)
    os.chmod(root, 0o755)
    res = {"label": label, "pipeline": "zones", "server": "bind", "zones": zones}
    started_trial, psi0 = time.time(), cpu_pressure_total()
    dns = pg = svc = conn = blast_dns = None
    try:
        dns = ManyZonesBind(root, zones, args.zones_bind_timeout)
        res["bind_start_s"] = dns.start_s
        res["bind_rss_kib"] = proc_status(dns.pid, "VmRSS")
        print(f"bind: {zones} zones loaded in {dns.start_s} s, RSS {res['bind_rss_kib']} KiB", flush=True)
        zones_file = os.path.join(root, "zones.txt")
        with open(zones_file, "w") as f:
            f.writelines(zone_name(i) + "\n" for i in range(1, zones + 1))
        pg = Postgres(root)
        svc = Service(args.pg2dns, root, pg, dns, zones, getattr(args, "zones_connections", None))
        res["connections_config"] = getattr(args, "zones_connections", None)
        res["check_config_s"], res["check_config_rc"] = svc.command("check-config", args.zones_cmd_timeout)
        res["setup_s"], res["setup_rc"] = svc.command("setup", args.zones_cmd_timeout)
        print(f"check-config {res['check_config_s']} s (exit {res['check_config_rc']}), "
              f"setup {res['setup_s']} s (exit {res['setup_rc']})", flush=True)
        if res["setup_rc"] != 0:
            raise RuntimeError(f"setup exited {res['setup_rc']}: {tail(svc.log, 600)}")
        conn = pgwire.Connection("127.0.0.1", pg.port)
        started = time.time()
        svc.start()
        ready = wait_for(svc.ready, args.zones_cmd_timeout, svc.alive)
        res["run_ready_s"] = round(ready - started, 2) if ready else None
        print(f"run: /readyz after {res['run_ready_s']} s", flush=True)
        res["idle"] = snapshot(svc.proc.pid, dns.port)
        res["metrics_bytes"], res["metrics_lines"] = svc.metrics_size()
        print(f"idle: {res['idle']}", flush=True)

        sampler = Sampler(svc.proc.pid, dns.port)
        sampler.start()
        # Nothing left to write back (setup's and PostgreSQL's writes) under
        # the transaction's journal writes, as before blast's.
        os.sync()
        with Profile(svc.proc.pid, f"{label}-txn"):
            res.update(one_transaction(svc, conn, dns, zones, args.zones_apply_timeout, sampler,
                                       os.path.join(root, "timeline-txn.csv")))
        print(f"one transaction: {res['txn_zones_answered']}/{zones} zones answered, "
              f"all after {res['txn_all_s']} s", flush=True)
        with Profile(svc.proc.pid, f"{label}-lat"):
            res.update(random_load(svc, conn, dns, zones, args.zones_lat_rate, args.zones_lat_secs))
        sampler.stop()
        res["load_peak_conns"], res["load_peak_fds"] = sampler.max_conns, sampler.max_fds
        print(f"random load: p50 {res['lat_p50_ms']} ms, p99 {res['lat_p99_ms']} ms, "
              f"{res['lat_lost']} lost", flush=True)
        res["after_load"] = snapshot(svc.proc.pid, dns.port)
        time.sleep(args.zones_settle)
        res["settled"] = snapshot(svc.proc.pid, dns.port)
        res["settle_s"] = args.zones_settle
        res["log_counts"] = svc.warnings()
        svc.stop()
        ok, detail = verify_sample(pg, dns, zones)
        res["dns_equals_table"], res["verify"] = ok, detail

        # The reference on zones as pg2dns found them: a new BIND, set up as
        # the first (its zone files linked anew, no journal), pg2dns's one
        # stopped first. A zone's first UPDATE makes its journal, which
        # costs BIND more than the next ones; restarting the same BIND with
        # its journals removed was no fresh start either (it writes every
        # changed zone back to its file as it stops: blast then took twice
        # as long as on a new one). Then again on the same zones, their
        # journals made (how it was measured before 2026-12-07 evening).
        res["bind_rss_end_kib"] = proc_status(dns.pid, "VmRSS")
        dns.stop()
        dns = None
        os.sync()
        blast_dns = ManyZonesBind(os.path.join(root, "blast"), zones, args.zones_bind_timeout)
        res["blast_bind_start_s"] = blast_dns.start_s
        res["blast"] = [blast(args, blast_dns, zones_file, zones, args.zones_blast_connections,
                              os.path.join(root, "timeline-blast.csv"))]
        peak = min(max(res.get("txn_peak_conns") or 1, 1), 140)
        if peak != args.zones_blast_connections:
            res["blast"].append(blast(args, blast_dns, zones_file, zones, peak))
        res["blast"].append(blast(args, blast_dns, zones_file, zones, args.zones_blast_connections,
                                  prefix="again"))
        for b in res["blast"]:
            print(f"blast over {b['connections']}: {b.get('seconds')} s {b.get('failed', '')}", flush=True)
        res["command"] = f"bench/bench zones --zones {zones}"
    except Exception as e:  # a failed trial is a result, not a crash of the bench
        res["failed"] = str(e)[:800]
    finally:
        if svc:
            res.setdefault("log_counts", svc.warnings())
            svc.stop()
        if conn:
            conn.close()
        if dns:
            dns.stop()
        if blast_dns:
            blast_dns.stop()
        if pg:
            pg.stop()
            if not args.keep:
                shutil.rmtree(pg.dir, ignore_errors=True)
    psi1 = cpu_pressure_total()
    if psi0 is not None and psi1 is not None:
        res["cpu_pressure_pct"] = round((psi1 - psi0) / 1e6 / (time.time() - started_trial) * 100, 1)
    print(json.dumps(res), flush=True)
    return res


def run(args):
    return [trial(args, int(z)) for z in str(args.zones).split(",") if z.strip()]


# ---------------------------------------------------------------- report


def mib(kib):
    return f"{kib / 1024:.1f}" if kib else "-"


def verdict(ok):
    return "meets" if ok else "**misses**"


def report(results):
    rows = [r for r in results if r.get("pipeline") == "zones"]
    if not rows:
        return ""
    out = ["Many zones (issue #24 targets; BIND at its default tcp-clients and update-quota):", ""]
    for r in rows:
        z = r["zones"]
        out.append(f"**{z:,} zones** — BIND loaded them in {r.get('bind_start_s', '-')} s, "
                   f"RSS {mib(r.get('bind_rss_kib'))} MiB; CPU pressure during the trial "
                   f"{r.get('cpu_pressure_pct', '-')} %.")
        out.append("")
        if "failed" in r:
            out.append(f"FAILED: {r['failed']}")
            out.append("")
        out.append("| target | figure | measured | verdict |")
        out.append("|---|---|---|---|")
        blasts = [b for b in r.get("blast", []) if "failed" not in b]
        ref = next((b for b in blasts if b["connections"] == 16 and b.get("fresh", True)),
                   blasts[0] if blasts else None)
        if r.get("txn_complete"):
            t = r["txn_all_s"]
            rt = f"{t / ref['seconds']:.1f}×" if ref else "-"
            how = (f"each name queried once BIND logged adding it; BIND's last log line at "
                   f"{r['txn_last_logged_s']} s" if "txn_last_logged_s" in r else
                   f"polled in rounds of ~{r.get('txn_poll_round_s')} s" if "txn_poll_round_s" in r else
                   "from BIND's log lines")
            out.append(f"| one transaction ≤ 1.2× blast | commit → every zone answers | {t:,} s "
                       f"(median zone {r['txn_median_zone_s']} s; {how}) "
                       f"vs blast {ref['seconds'] if ref else '-'} s over {ref['connections'] if ref else '-'} "
                       f"connections = **{rt}** | {verdict(ref and t <= 1.2 * ref['seconds'])} |")
        elif "txn_zones_answered" in r:
            out.append(f"| one transaction ≤ 1.2× blast | commit → every zone answers | not complete after "
                       f"{r['txn_timeout_s']} s: {r['txn_zones_answered']:,} of {z:,} zones answered "
                       f"(median of those {r['txn_median_zone_s']} s) vs blast "
                       f"{ref['seconds'] if ref else '-'} s | **misses** |")
        ba = r.get("txn_bind_added") or {}
        if ba:
            bb = next((b.get("bind_added") for b in r.get("blast", [])
                       if b.get("bind_added") and b.get("fresh", True)), None) or {}
            out.append(f"| (timeline) | commit → first UPDATE written, BIND's first and last addition; "
                       f"BIND's additions a second (median, peak); in flight (median, p10) | "
                       f"first sent {r.get('txn_first_sent_s', '-')} s, added {ba['first_s']} → {ba['last_s']} s; "
                       f"{ba['median_per_s']:,.0f}/s (peak {ba['peak_per_s']:,.0f}); in flight "
                       f"{r.get('txn_in_flight_median', '-')} (p10 {r.get('txn_in_flight_p10', '-')})"
                       + (f"; blast: {bb['median_per_s']:,.0f}/s (peak {bb['peak_per_s']:,.0f}) over "
                          f"{bb['last_s']} s" if bb else "") + " | |")
        for b in r.get("blast", []):
            if "failed" in b:
                out.append(f"| (reference) | blast over {b['connections']} connections | FAILED: "
                           f"{b['failed'][:200]} | |")
            else:
                what = ("on fresh zones (a new BIND set up as the first, no journals, as pg2dns found them)"
                        if b.get("fresh", True) else "again on the same zones, their journals made")
                out.append(f"| (reference) | blast over {b['connections']} connections, ≤ "
                           f"{b['in_flight']} in flight, {what} | {b['seconds']} s, {b['msgs_per_s']:,.0f} msgs/s, "
                           f"p50 {b['p50_ms']} ms, p99 {b['p99_ms']} ms per message | |")
        if "txn_peak_conns" in r:
            pc = max(r["txn_peak_conns"], r.get("load_peak_conns") or 0)
            out.append(f"| ≤ 16 connections to the server | peak TCP connections pg2dns → BIND "
                       f"(sampled every 0.25 s) | {pc:,} (established at most {r['txn_peak_established']:,}) "
                       f"| {verdict(pc <= 16)} |")
        if r.get("lat_commits") and r.get("lat_p50_ms") is None:
            out.append(f"| 20 txn/s random zone: p50 ≤ 5 ms, p99 ≤ 20 ms | commit → answer over "
                       f"{r['lat_secs']} s at {r['lat_rate']}/s | none of {r['lat_commits']} rows answered "
                       f"within 30 s of the last commit | **misses** |")
        if r.get("lat_p50_ms") is not None:
            out.append(f"| 20 txn/s random zone: p50 ≤ 5 ms, p99 ≤ 20 ms | commit → answer over "
                       f"{r['lat_secs']} s at {r['lat_rate']}/s | p50 {r['lat_p50_ms']:,} ms, p90 "
                       f"{r['lat_p90_ms']:,} ms, p99 {r['lat_p99_ms']:,} ms, max {r['lat_max_ms']:,} ms; "
                       f"{r['lat_seen']} of {r['lat_commits']} seen ({r['lat_lost']} not within 30 s) "
                       f"| {verdict(r['lat_p50_ms'] <= 5 and r['lat_p99_ms'] <= 20 and not r['lat_lost'])} |")
        if r.get("lat_to_server_p50_ms") is not None:
            out.append(f"| (split) | commit → BIND logs the addition; → answering | p50 "
                       f"{r['lat_to_server_p50_ms']} / p99 {r['lat_to_server_p99_ms']} ms; p50 "
                       f"{r['lat_server_to_visible_p50_ms']} / p99 {r['lat_server_to_visible_p99_ms']} ms | |")
        for key, what in (("idle", "idle"), ("after_load", "right after the load"),
                          ("settled", f"{r.get('settle_s', '?')} s after the load")):
            s = r.get(key)
            if s:
                out.append(f"| RSS ≤ 128 MiB, fds ≤ 64 | {what} | RSS {mib(s['rss_kib'])} MiB (peak "
                           f"{mib(s['hwm_kib'])}), {s['fds']:,} fds, {s['conns']:,} connections to BIND "
                           f"| {verdict(s['rss_kib'] <= 128 * 1024 and s['fds'] <= 64)} |")
        if r.get("load_peak_fds"):
            out.append(f"| fds ≤ 64 | peak during the load | {r['load_peak_fds']:,} fds "
                       f"| {verdict(r['load_peak_fds'] <= 64)} |")
        if "check_config_s" in r:
            out.append(f"| check-config ≤ 2 s | `pg2dns check-config` | {r['check_config_s']} s "
                       f"(exit {r['check_config_rc']}) | {verdict(r['check_config_s'] <= 2)} |")
        if "setup_s" in r:
            out.append(f"| start-up and setup: give the times | `pg2dns setup` (first load of every zone) | "
                       f"{r['setup_s']} s (exit {r['setup_rc']}) | |")
        if "run_ready_s" in r:
            out.append(f"| | `pg2dns run`: spawn → /readyz 200 | {r['run_ready_s']} s | |")
        if r.get("metrics_bytes"):
            out.append(f"| | one /metrics scrape | {r['metrics_bytes']:,} bytes, {r['metrics_lines']:,} lines | |")
        lc = r.get("log_counts")
        if lc:
            out.append(f"| | pg2dns log (RUST_LOG=warn) | {lc['warn']:,} WARN, {lc['error']:,} ERROR; of them "
                       f"{lc['cannot connect']:,} about connecting, {lc['no answer']:,} \"no answer\", "
                       f"{lc.get('emfile', 0):,} \"Too many open files\" | |")
        if "verify" in r:
            why = ""
            if not r["dns_equals_table"] and r.get("lat_lost"):
                why = (f" — pg2dns was stopped with {r['lat_lost']} rows of the random load not yet "
                       "in DNS (its slot had not confirmed them)")
            out.append(f"| | DNS equals the table (sample of zones, after pg2dns stopped) | {r['verify']}{why} "
                       f"| {'not comparable' if why else verdict(r['dns_equals_table'])} |")
        out.append("")
    return "\n".join(out) + "\n"
