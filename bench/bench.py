#!/usr/bin/env python3
"""pg2dns against the naive pg_recvlogical | filter | nsupdate pipeline.

Run through `bench/run` (which checks the tools and builds the binaries).
Each trial starts a fresh PostgreSQL and a fresh DNS server on free
127.0.0.1 ports under bench/run/<stamp>/<trial>/, runs one workload through
one pipeline, measures it, checks with a TSIG AXFR that DNS equals the table,
and stops everything. Results go to bench/run/<stamp>/results.{json,md}.

Timing (same for both pipelines):
  t0     just before the workload client starts (drain: just before the
         pipeline starts, the backlog being already committed);
  t_last when the workload client returned (its last commit);
  t2     when a sentinel row, committed after the workload, answers in DNS.
         Both pipelines apply a zone's changes in commit order, so the
         sentinel's arrival means every change before it has arrived.
  rows/s = rows / (t2 - t0); lag = t2 - t_last.
Peak RSS is VmHWM from /proc/PID/status, read just before the processes are
stopped (for the naive pipeline: pg_recvlogical + filter + nsupdate).
"""

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pgwire  # noqa: E402
import reconcile as reconcile_bench  # noqa: E402
import zonesbench  # noqa: E402
from dnswire import Prober  # noqa: E402
from servers import Bind, Knot, Postgres, ZONE, proc_cpu, proc_status, stop_proc  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

COLUMNS = "(id bigserial primary key, owner text not null, ttl int not null default 3600, " \
          "class text not null default 'IN', type text not null, rdata text not null, " \
          "unique (owner, type, rdata))"


def a_rdata(expr):
    """SQL for an IPv4 address derived from the integer expression `expr`."""
    return f"'10.' || (({expr}) >> 16) || '.' || ((({expr}) >> 8) & 255) || '.' || (({expr}) & 255)"


def cpu_pressure_total():
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().split("total=")[1])
    except (OSError, IndexError, ValueError):
        return None


def cpu_pressure_avg10():
    try:
        with open("/proc/pressure/cpu") as f:
            return float(f.readline().split("avg10=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None


def wait_quiet(limit=20.0, max_wait=10.0):
    """Waits (at most max_wait s) for CPU pressure avg10 below `limit` %."""
    end = time.time() + max_wait
    while time.time() < end:
        p = cpu_pressure_avg10()
        if p is None or p < limit:
            return
        time.sleep(0.5)


# ---------------------------------------------------------------- pipelines


class Naive:
    """pg_recvlogical (test_decoding) | tx2nsupdate.py | nsupdate -k.

    With a `second` primary, what someone would run for two providers: a
    second chain of its own (its own slot, filter and nsupdate with that
    primary's key), the two running side by side."""

    name = "naive"
    table = "public.rr"

    def __init__(self, pg, dns, root, max_rrs, tcp=False, second=None):
        self.pg, self.dns, self.root, self.max_rrs = pg, dns, root, max_rrs
        self.tcp = tcp
        self.servers = [dns] + ([second] if second else [])
        self.procs = []
        pg.psql(f"CREATE TABLE public.rr {COLUMNS}; ALTER TABLE public.rr REPLICA IDENTITY FULL;")
        for slot in self.slots():
            subprocess.run([pg.tool("pg_recvlogical"), "-d", pg.url, "--slot", slot, "--create-slot",
                            "-P", "test_decoding"], check=True)
        self.nsupdate_err = os.path.join(root, "nsupdate.err")
        self.cmd = " ; ".join(
            f"pg_recvlogical -d postgresql://postgres@127.0.0.1:$PGPORT/postgres --slot {slot} --create-slot "
            f"-P test_decoding && pg_recvlogical -d postgresql://postgres@127.0.0.1:$PGPORT/postgres --slot {slot} "
            "--start -f - -o include-xids=1 -o skip-empty-xacts=1 "
            f"| bench/naive/tx2nsupdate.py --server \"127.0.0.1 {port}\" --max-rrs {max_rrs} "
            f"| nsupdate {'-v ' if tcp else ''}-k {name}/tsig.key"
            + (" &" if len(self.servers) > 1 else "")
            for slot, port, name in zip(self.slots(), ["$DNSPORT", "$DNSPORT2"], ["bind", "bind2"]))

    def slots(self):
        return ["naive", "naive2"][:len(self.servers)]

    def start(self):
        for slot, dns in zip(self.slots(), self.servers):
            recv = subprocess.Popen([self.pg.tool("pg_recvlogical"), "-d", self.pg.url, "--slot", slot, "--start",
                                     "-f", "-", "-o", "include-xids=1", "-o", "skip-empty-xacts=1"],
                                    stdout=subprocess.PIPE,
                                    stderr=open(os.path.join(self.root, "recvlogical.err"), "a"))
            filt = subprocess.Popen([sys.executable, os.path.join(HERE, "naive", "tx2nsupdate.py"),
                                     "--server", f"127.0.0.1 {dns.port}", "--max-rrs", str(self.max_rrs)],
                                    stdin=recv.stdout, stdout=subprocess.PIPE)
            recv.stdout.close()
            nsup = subprocess.Popen(["nsupdate"] + (["-v"] if self.tcp else []) + ["-k", dns.key_file],
                                    stdin=filt.stdout,
                                    stdout=subprocess.DEVNULL, stderr=open(self.nsupdate_err, "a"))
            filt.stdout.close()
            self.procs += [recv, filt, nsup]

    def alive(self):
        return all(p.poll() is None for p in self.procs)

    def rss_kb(self):
        vals = [proc_status(p.pid, "VmHWM") for p in self.procs]
        return sum(v for v in vals if v) if any(vals) else None

    def cpu(self):
        return sum(c or 0 for c in (proc_cpu(p.pid) for p in self.procs))

    def stop(self):
        for p in self.procs:
            stop_proc(p, timeout=15)
        self.procs = []

    def errors(self):
        try:
            with open(self.nsupdate_err) as f:
                return [line.strip() for line in f if line.strip()]
        except OSError:
            return []


class Pg2dns:
    """`pg2dns run` with window W."""

    name = "pg2dns"
    table = "pg2dns.rr"

    def __init__(self, pg, dns, root, binary, window, plugin="pgoutput", second=None):
        self.pg, self.dns, self.root, self.binary = pg, dns, root, binary
        self.window = window
        self.proc = None
        self.config = os.path.join(root, "pg2dns.toml")
        # Only when not the default, so that older binaries read the config.
        plugin_line = f'plugin = "{plugin}"\n' if plugin != "pgoutput" else ""
        if second is None:
            zone = (f'[[zone]]\nname = "{ZONE}"\nprimary = "127.0.0.1:{dns.port}"\n'
                    f'tsig_key_file = "{dns.key_file}"\n')
        else:
            # Two primaries for the zone, each with its own key (#23).
            zone = "".join(f'[[server]]\nname = "{n}"\naddress = "127.0.0.1:{d.port}"\ntsig_key_file = "{d.key_file}"\n'
                           for n, d in (("ns1", dns), ("ns2", second)))
            zone += f'[[zone]]\nname = "{ZONE}"\nprimaries = ["ns1", "ns2"]\n'
        with open(self.config, "w") as f:
            f.write(
                "version = 1\n[database]\n"
                f'url = "{pg.url}"\nslot = "pg2dns"\npublication = "pg2dns"\n{plugin_line}'
                f"{zone}"
                f"[limits]\nwindow = {window}\n"
            )
        self.log = os.path.join(root, "pg2dns.log")
        subprocess.run([binary, "setup", "-c", self.config], check=True, env=self._env(),
                       stdout=subprocess.DEVNULL, stderr=open(self.log, "a"))
        self.cmd = f"pg2dns setup -c pg2dns.toml && RUST_LOG=warn pg2dns run -c pg2dns.toml  # [limits] window = {window}"

    def _env(self):
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        return env

    def start(self):
        self.proc = subprocess.Popen([self.binary, "run", "-c", self.config], env=self._env(),
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "a"))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def rss_kb(self):
        return proc_status(self.proc.pid, "VmHWM") if self.proc else None

    def cpu(self):
        return proc_cpu(self.proc.pid) if self.proc else None

    def stop(self):
        if self.proc:
            stop_proc(self.proc, timeout=30)
        self.proc = None

    def errors(self):
        try:
            with open(self.log) as f:
                return [line.strip() for line in f if " ERROR " in line or "error" in line.lower()][:20]
        except OSError:
            return []


# ---------------------------------------------------------------- helpers


class Trial:
    """One workload through one pipeline on fresh servers."""

    def __init__(self, args, label, server="bind", primaries=1):
        self.args = args
        self.label = label
        self.root = os.path.join(args.outdir, label)
        os.makedirs(self.root)
        os.chmod(self.root, 0o755)
        wait_quiet()
        self.pg = Postgres(self.root)
        self.dns = Bind(self.root) if server == "bind" else Knot(self.root)
        # A second primary of the zone: a change is visible when both
        # answer it.
        self.second = Bind(self.root, name="bind2") if primaries > 1 else None
        self.server = server
        self.conn = pgwire.Connection("127.0.0.1", self.pg.port)
        self.prober = Prober(self.dns.port)
        self.prober2 = Prober(self.second.port) if self.second else None
        self.pipeline = None
        self.sentinels = 0
        self.workload = []

    def use(self, kind, window=None):
        if kind == "naive":
            self.pipeline = Naive(self.pg, self.dns, self.root, self.args.naive_max_rrs, self.args.naive_tcp,
                                  second=self.second)
        else:
            self.pipeline = Pg2dns(self.pg, self.dns, self.root, self.args.pg2dns, window or self.args.window,
                                   second=self.second)
        self.conn.query("CREATE SEQUENCE public.bench_seq")
        return self.pipeline

    def sentinel(self):
        """Commits one sentinel row; returns its owner name."""
        self.sentinels += 1
        owner = f"sentinel-{self.sentinels}.{ZONE}"
        self.conn.query(f"INSERT INTO {self.pipeline.table}(owner, type, rdata) "
                        f"VALUES ('{owner}', 'A', '192.0.2.{self.sentinels}')")
        return owner

    def wait_visible(self, owner, timeout, interval=None):
        """Polls DNS until `owner` answers; returns the time it did.

        The poll interval starts at 2 ms and grows with the time waited (1 %
        of it, at most 20 ms), so the error stays near 1 % while a long wait
        does not load the DNS server with probes."""
        start = time.time()
        end = start + timeout
        while time.time() < end:
            if self.prober.answers(owner):
                return time.time()
            if not self.pipeline.alive():
                raise RuntimeError(f"{self.pipeline.name} exited before {owner} reached DNS; "
                                   f"errors: {self.pipeline.errors()[-5:]}")
            time.sleep(interval or min(0.02, 0.002 + (time.time() - start) / 100))
        raise RuntimeError(f"{owner} not in DNS after {timeout} s; errors: {self.pipeline.errors()[-5:]}")

    def pgbench(self, script, transactions, clients=1):
        path = os.path.join(self.root, "workload.sql")
        with open(path, "w") as f:
            f.write(script)
        cmd = [self.pg.tool("pgbench"), "-n", "-h", "127.0.0.1", "-p", str(self.pg.port), "-U", "postgres",
               "-c", str(clients), "-j", str(clients), "-t", str(transactions // clients), "-f", path, "postgres"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        self.workload.append(f"pgbench -n -c {clients} -j {clients} -t {transactions // clients} -f workload.sql "
                             f"(workload.sql: {script.strip()})")
        tps = None
        for line in out.splitlines():
            if line.startswith("tps ="):
                tps = float(line.split()[2])
        return tps

    def verify(self, table=None):
        """TSIG AXFR of the zone compared with the table; returns (ok, detail)."""
        table = table or self.pipeline.table
        want = set()
        out = self.pg.psql(f"SELECT lower(owner), ttl, upper(type), rdata FROM {table}")
        for line in out.splitlines():
            owner, ttl, rtype, rdata = line.split("|")
            want.add((owner, int(ttl), rtype, rdata))
        have, err = axfr(self.dns.port, self.dns.key_file)
        if err:
            return False, err
        missing, extra = want - have, have - want
        if not missing and not extra:
            return True, f"{len(want)} RRs equal"
        return False, f"{len(missing)} missing (e.g. {sorted(missing)[:2]}), {len(extra)} extra (e.g. {sorted(extra)[:2]})"

    def close(self):
        if self.pipeline:
            self.pipeline.stop()
        self.conn.close()
        self.prober.close()
        if self.second:
            self.prober2.close()
            self.second.stop()
        self.dns.stop()
        self.pg.stop()
        if not self.args.keep:
            shutil.rmtree(os.path.join(self.root, "pg"), ignore_errors=True)


def axfr(port, key_file):
    """The zone as a set of (owner, ttl, TYPE, rdata), apex SOA/NS left out."""
    proc = subprocess.run(["dig", "-k", key_file, "AXFR", ZONE, "@127.0.0.1", "-p", str(port),
                           "+noall", "+answer", "+nocomments"], capture_output=True, text=True)
    if proc.returncode != 0 or "Transfer failed" in proc.stdout:
        return set(), f"AXFR failed: {proc.stdout[-300:]} {proc.stderr[-300:]}"
    have = set()
    for line in proc.stdout.splitlines():
        if not line or line.startswith(";"):
            continue
        parts = line.split(None, 4)
        if len(parts) < 5:
            continue
        owner, ttl, _cls, rtype, rdata = parts
        owner = owner.lower()
        if owner == ZONE and rtype in ("SOA", "NS"):
            continue
        if owner == "ns." + ZONE:
            continue
        have.add((owner, int(ttl), rtype, rdata))
    return have, None


def pipeline_backends_cpu(trial):
    """CPU seconds so far of the pipeline's PostgreSQL backends: its
    walsender and its SQL sessions (every client backend but the bench's)."""
    rows = trial.conn.query("SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                            "AND backend_type IN ('walsender', 'client backend')")
    return round(sum(proc_cpu(int(r[0])) or 0 for r in rows), 2)


def measure(trial, t0, t_last, sentinel, rows, rr_ops=None, timeout=900, extra=None):
    t2 = trial.wait_visible(sentinel, timeout)
    p = trial.pipeline
    res = {
        "rows": rows,
        "rr_ops": rr_ops or rows,
        "commit_s": round(t_last - t0, 3),
        "complete_s": round(t2 - t0, 3),
        "lag_s": round(t2 - t_last, 3),
        "rows_per_s": round(rows / (t2 - t0), 1),
        "rr_ops_per_s": round((rr_ops or rows) / (t2 - t0), 1),
        "peak_rss_kib": p.rss_kb(),
        "pipeline_cpu_s": round(p.cpu() or 0, 2),
        "dns_cpu_s": round(proc_cpu(trial.dns.pid) or 0, 2),
        "pg_backends_cpu_s": pipeline_backends_cpu(trial),
    }
    if p.name == "pg2dns":
        # Where pg2dns's PostgreSQL time goes: scans of its row-state table.
        rows = trial.conn.query("SELECT coalesce(sum(seq_scan), 0), coalesce(sum(seq_tup_read), 0), "
                                "coalesce(sum(idx_scan), 0) FROM pg_stat_user_tables WHERE schemaname = 'pg2dns'")
        if rows:
            res["pg2dns_schema_seq_scans"], res["pg2dns_schema_seq_tup_read"], res["pg2dns_schema_idx_scans"] = (
                int(x) for x in rows[0])
    if extra:
        res.update(extra)
    return res


def finish(trial, res, started_psi, started):
    psi = cpu_pressure_total()
    wall = time.time() - started
    res["cpu_pressure_pct"] = round((psi - started_psi) / 1e6 / wall * 100, 1) if psi and started_psi else None
    # The machine's load at the trial's end (1 and 5 minutes): beside
    # each figure, so a figure taken under load is not read as capacity.
    res["loadavg"] = [round(x, 1) for x in os.getloadavg()[:2]]
    ok, detail = trial.verify()
    res["dns_equals_table"] = ok
    res["verify"] = detail
    errs = trial.pipeline.errors()
    res["pipeline_errors"] = len(errs)
    res["error_sample"] = errs[:3]
    res["command"] = trial.pipeline.cmd
    res["workload"] = "; then ".join(trial.workload)
    return res


def run_trial(args, label, kind, body, window=None, server="bind", primaries=1):
    """Runs `body(trial)` on fresh servers; always stops them."""
    label += getattr(args, "suffix", "")
    print(f"--- {label}", flush=True)
    started, psi = time.time(), cpu_pressure_total()
    trial = Trial(args, label, server, primaries)
    try:
        trial.use(kind, window)
        res = body(trial)
        res = finish(trial, res, psi, started)
    except Exception as e:  # a failed trial is a result, not a crash of the bench
        res = {"failed": str(e)[:500], "dns_equals_table": False}
        try:
            ok, detail = trial.verify()
            res["verify"] = detail
        except Exception as e2:
            res["verify"] = f"verify failed too: {e2}"
    finally:
        trial.close()
    res.update({"label": label, "pipeline": kind, "server": server, "primaries": primaries,
                "window": (window or args.window) if kind == "pg2dns" else None})
    if getattr(args, "build", None) and kind == "pg2dns":
        res.update({"build": args.build, "round": args.round})
    print(json.dumps(res), flush=True)
    return res


# ---------------------------------------------------------------- workloads


def insert_script(table, prefix):
    return (f"INSERT INTO {table}(owner, type, rdata) SELECT '{prefix}-' || n || '.{ZONE}', 'A', {a_rdata('n')} "
            f"FROM nextval('public.bench_seq') AS n;\n")


def w1(args, kind, window=None):
    n = args.w1_txns

    def body(t):
        p = t.pipeline
        p.start()
        t.wait_visible(t.sentinel(), 60)
        t0 = time.time()
        tps = t.pgbench(insert_script(p.table, "w1"), n)
        t_last = time.time()
        return measure(t, t0, t_last, t.sentinel(), n, extra={"client_tps": tps})

    return run_trial(args, f"w1-{kind}" + (f"-w{window}" if window else ""), kind, body, window)


def w2(args, kind, window=None, rows=None, label="w2"):
    n = rows or args.w2_rows
    first = f"{label}-1.{ZONE}"

    def body(t):
        p = t.pipeline
        p.start()
        t.wait_visible(t.sentinel(), 60)
        t0 = time.time()
        sql = (f"INSERT INTO {p.table}(owner, type, rdata) SELECT '{label}-' || i || '.{ZONE}', 'A', "
               f"{a_rdata('i')} FROM generate_series(1, {n}) AS i")
        t.workload.append(sql)
        t.conn.query(sql)
        t_last = time.time()
        sentinel = t.sentinel()
        # When does the first record of the transaction become visible? From
        # then to completion is the apply phase, compared with the reference
        # client (which also starts its clock at its first message). Poll it
        # every 2 ms until it shows up or the sentinel does (if the first
        # chunk was lost, it never shows up).
        t_first = None
        while t_first is None:
            if t.prober.answers(first):
                t_first = time.time()
            elif t.prober.answers(sentinel):
                break
            elif not p.alive():
                break
            time.sleep(0.002)
        res = measure(t, t0, t_last, sentinel, n, timeout=1800)
        t2 = t0 + res["complete_s"]
        if t_first is not None:
            res["first_visible_s"] = round(t_first - t0, 3)
            res["apply_s"] = round(t2 - t_first, 3)
            res["apply_rr_per_s"] = round(n / (t2 - t_first), 1) if t2 > t_first else None
        else:
            res["first_visible_s"] = res["apply_s"] = res["apply_rr_per_s"] = None
        return res

    return run_trial(args, f"{label}-{kind}" + (f"-w{window}" if window else ""), kind, body, window)


def w3(args, kind, window=None, drain=False):
    n = args.w3_txns if not drain else args.drain_w3_txns
    name = "drain_w3" if drain else "w3"

    def body(t):
        p = t.pipeline
        p.start()
        # Preload n rows through the pipeline itself, then change each once.
        sql = (f"INSERT INTO {p.table}(owner, type, rdata) SELECT 'w3-' || i || '.{ZONE}', 'A', "
               f"{a_rdata('i')} FROM generate_series(1, {n}) AS i")
        t.workload.append(f"(preload, pipeline running) {sql}")
        t.conn.query(sql)
        t.wait_visible(t.sentinel(), 300)
        script = (f"UPDATE {p.table} SET rdata = '172.16.' || ((n >> 8) & 255) || '.' || (n & 255) "
                  f"FROM nextval('public.bench_seq') AS n WHERE owner = 'w3-' || n || '.{ZONE}';\n")
        if drain:
            p.stop()
            tps = t.pgbench(script, n)
            sentinel = t.sentinel()
            t0 = time.time()
            p.start()
            return measure(t, t0, t0, sentinel, n, 2 * n, extra={"client_tps": tps})
        t0 = time.time()
        tps = t.pgbench(script, n)
        t_last = time.time()
        return measure(t, t0, t_last, t.sentinel(), n, 2 * n, extra={"client_tps": tps})

    return run_trial(args, f"{name}-{kind}" + (f"-w{window}" if window else ""), kind, body, window)


def drain_w1(args, kind, window=None, server="bind", txns=None):
    n = txns or args.drain_txns

    def body(t):
        p = t.pipeline
        # The slot exists (setup / --create-slot); the pipeline is not running.
        tps = t.pgbench(insert_script(p.table, "d"), n, clients=2)
        sentinel = t.sentinel()
        t0 = time.time()
        p.start()
        return measure(t, t0, t0, sentinel, n, extra={"client_tps": tps})

    label = f"drain-{kind}" + (f"-w{window}" if window else "") + ("" if server == "bind" else f"-{server}")
    return run_trial(args, label, kind, body, window, server)


class FsyncProbe:
    """A thread writing 512 bytes and fsyncing them every 50 ms in `root`:
    what one fsync costs on this disk meanwhile. BIND's journal and
    PostgreSQL's WAL both wait for one per change, so a slow disk shows in
    every pipeline's tail, not in one pipeline's alone."""

    def __init__(self, root):
        self.path = os.path.join(root, "fsync-probe.dat")
        self.samples = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while not self.stopping.wait(0.05):
                t0 = time.time()
                os.pwrite(fd, b"x" * 512, 0)
                os.fsync(fd)
                self.samples.append((t0, time.time() - t0))
        finally:
            os.close(fd)

    def stop(self):
        self.stopping.set()
        self.thread.join()
        try:
            os.unlink(self.path)
        except OSError:
            pass
        return self.samples


def named_added(named_log, prefix):
    """{owner label: time} of BIND's "updating zone …: adding an RR at
    'PREFIX-N.…'" lines (named -g logs in local time, to the millisecond):
    when the UPDATE reached the server, before its journal is written."""
    import datetime
    import re
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


def latency(args, kind, window=None, load=None, primaries=1):
    """Live latency; with `load`, while a second client commits `load`
    one-row transactions as fast as it can (two pgbench connections); with
    two `primaries`, until both answer.

    Each transaction's latency is split where BIND logs the UPDATE's
    "adding an RR" (the last primary's, with two): commit → at the server
    (PostgreSQL's walsender and the pipeline) and at the server → visible
    (BIND's journal write and fsync, its answer to the probe). A fsync
    probe on the same disk runs meanwhile."""
    rate, secs = args.lat_rate, args.lat_secs

    def body(t):
        p = t.pipeline
        p.start()
        t.wait_visible(t.sentinel(), 60)
        total = rate * secs
        t.workload.append(f"{total} single-row INSERTs at {rate}/s over one connection (bench/pgwire.py); "
                          "each owner polled over UDP until it answers")
        lat, pending, i, trace = [], [], 0, []
        background = None
        if load:
            background = threading.Thread(target=t.pgbench, args=(insert_script(p.table, "bg"), load, 2))
            background.start()
        probe = FsyncProbe(t.root)
        t0 = time.time()
        next_due = t0
        deadline = t0 + secs + 10
        while (i < total or pending) and time.time() < deadline:
            now = time.time()
            if i < total and now >= next_due:
                i += 1
                owner = f"lat-{i}.{ZONE}"
                t.conn.query(f"INSERT INTO {p.table}(owner, type, rdata) VALUES ('{owner}', 'A', {a_rdata(str(i))})")
                pending.append((owner, time.time()))
                next_due += 1.0 / rate
                continue
            still = []
            for owner, tc in pending:
                if t.prober.answers(owner) and (t.prober2 is None or t.prober2.answers(owner)):
                    seen = time.time()
                    lat.append(seen - tc)
                    trace.append((owner, round(tc, 4), round(seen, 4)))
                else:
                    still.append((owner, tc))
            pending = still
            # Probe each pending owner about once per millisecond: finer
            # polling would load the DNS server (and the 2 shared cores)
            # in proportion to the latency being measured.
            time.sleep(max(0.0, min(next_due - time.time(), 0.001 if pending else 0.005)))
        fsyncs = probe.stop()
        t_last = t0 + secs
        if background:
            background.join()
            t_last = time.time()
        res = measure(t, t0, t_last, t.sentinel(), total + (load or 0))
        lat.sort()
        ms = [x * 1000 for x in lat]

        def pct(q):
            return round(ms[min(len(ms) - 1, int(q * len(ms)))], 2) if ms else None

        trace.sort(key=lambda x: x[1])
        res.update({"latency_n": len(ms), "latency_lost": len(pending), "p50_ms": pct(0.50),
                    "p90_ms": pct(0.90), "p99_ms": pct(0.99), "max_ms": round(ms[-1], 2) if ms else None,
                    "mean_ms": round(statistics.mean(ms), 2) if ms else None,
                    "latencies_ms_in_commit_order": [round((seen - tc) * 1000, 2) for _, tc, seen in trace],
                    # Wall-clock commit and answer times (epoch s), to line a
                    # slow transaction up with a pipeline's debug log.
                    "trace": trace})
        added = {}
        for dns in (t.dns, t.second):
            if isinstance(dns, Bind):
                for k, v in named_added(os.path.join(dns.dir, "named.log"), "lat").items():
                    added[k] = max(added.get(k, v), v)
        split = [(added[o.split(".")[0]], tc, seen) for o, tc, seen in trace if o.split(".")[0] in added]
        res.update(pcts([a - tc for a, tc, _ in split], "to_server"))
        res.update(pcts([seen - a for a, _, seen in split], "server_to_visible"))
        res.update(pcts([d for _, d in fsyncs], "fsync"))
        return res

    label = ("latency_load" if load else "latency") + ("2" if primaries > 1 else "")
    return run_trial(args, f"{label}-{kind}" + (f"-w{window}" if window else ""), kind, body, window,
                     primaries=primaries)


def blast(args, label, n, server="bind", per_message=None):
    """The reference client: N A records, messages packed full, one at a time."""
    label += getattr(args, "suffix", "")
    print(f"--- {label}", flush=True)
    root = os.path.join(args.outdir, label)
    os.makedirs(root)
    wait_quiet()
    dns = Bind(root) if server == "bind" else Knot(root)
    started, psi = time.time(), cpu_pressure_total()
    try:
        cmd = [args.blast, "--server", f"127.0.0.1:{dns.port}", "--key-file", dns.key_file, "--zone", ZONE,
               "--records", str(n), "--prefix", "w2"]
        if per_message:
            cmd += ["--per-message", str(per_message)]
        cpu0 = proc_cpu(dns.pid)
        # The client's own CPU (it is this script's only child meanwhile).
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            out = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:
            out = subprocess.CompletedProcess(cmd, 127, "", str(e))
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        res = {"label": label, "pipeline": "blast", "server": server, "rows": n,
               "command": "cargo run --release -p pg2dns --example blast -- " +  " ".join(cmd[1:]).replace(root + "/", "").replace(str(dns.port), "$DNSPORT"),
               "dns_cpu_s": round((proc_cpu(dns.pid) or 0) - (cpu0 or 0), 2),
               "client_cpu_s": round(children1.ru_utime + children1.ru_stime
                                     - children0.ru_utime - children0.ru_stime, 2)}
        if out.returncode != 0:
            res["failed"] = (out.stdout + out.stderr)[-500:]
        for tok in out.stdout.split():
            if "=" in tok:
                k, v = tok.split("=", 1)
                try:
                    res[k] = float(v)
                except ValueError:
                    res[k] = v
        have, err = axfr(dns.port, dns.key_file)
        res["dns_equals_table"] = err is None and len(have) == n
        res["verify"] = err or f"{len(have)} RRs in zone, {n} sent"
        psi2 = cpu_pressure_total()
        res["cpu_pressure_pct"] = round((psi2 - psi) / 1e6 / (time.time() - started) * 100, 1) if psi else None
    finally:
        dns.stop()
    print(json.dumps(res), flush=True)
    return res


def big(args, window=None):
    return w2(args, "pg2dns", window, rows=args.big_rows, label="big")


# ---------------------------------------------------------------- driver


def run_what(args, what, sides, two_primaries=True):
    """The trials of the workloads in `what`, for `sides`, in the bench's
    order. The order inside each workload alternates which side runs
    first, so a slow phase of the shared machine does not always hit the
    same side."""
    results = []
    if "w1" in what:
        results += [w1(args, k) for k in sides]
    if "w3" in what:
        results += [w3(args, k) for k in reversed(sides)]
    if "w2" in what:
        results += [w2(args, k) for k in sides]
        results.append(blast(args, "w2-blast", args.w2_rows))
    if "ingest" in what:
        results.append(blast(args, "ingest-bind", args.w2_rows))
        results.append(blast(args, "ingest-knot", args.w2_rows, server="knot"))
    if "drain" in what or "drain_w1" in what:
        results += [drain_w1(args, k) for k in reversed(sides)]
    if "drain" in what or "drain_w3" in what:
        results += [w3(args, k, drain=True) for k in sides]
    if "latency" in what:
        results += [latency(args, k) for k in sides]
    if "latency2" in what:
        # One primary and two, against the naive pipeline, in one run.
        if "latency" not in what:
            results += [latency(args, k) for k in sides]
        # With two primaries, each side publishes to both (the naive
        # pipeline as two chains, one per primary).
        if two_primaries:
            results += [latency(args, k, primaries=2) for k in sides]
    if "latency_load" in what:
        results += [latency(args, k, load=args.load_txns) for k in sides]
    if "big" in what and "pg2dns" in sides:
        results.append(big(args))
    if "knot" in what:
        results += [drain_w1(args, k, server="knot", txns=args.knot_txns) for k in sides]
    if "reconcile" in what:
        results += reconcile_bench.run(args)
    if "firstload" in what:
        results += reconcile_bench.run_firstload(args)
    if "zones" in what:
        results += zonesbench.run(args)
    if "windows" in what:
        for w in (1, 4, 16):
            results.append(w2(args, "pg2dns", w))
            results.append(drain_w1(args, "pg2dns", w))
    return results


# The workloads in the order `run_what` runs them.
ORDER = ["w1", "w3", "w2", "ingest", "drain", "drain_w1", "drain_w3", "latency", "latency2", "latency_load",
         "big", "knot", "windows"]


def alternate(args, what, sides):
    """`--baseline`: each workload of `what` in `--rounds` rounds, each
    round running it with the build under test (`--pg2dns`) and with the
    baseline build, the order swapped every round (HEAD, baseline;
    baseline, HEAD; ...), so that a slow phase of the shared machine
    does not always hit the same build. The naive pipeline, when not left
    out with --only, and the two-primary latency trial (which a build
    before issue #23 cannot run) run with the build under test only.
    Labels get `-head-rN` or `-before-rN`."""
    head_bin = args.pg2dns
    builds = [("head", head_bin, sides, True), ("before", args.baseline, ["pg2dns"], False)]
    steps = [w for w in ORDER if w in what]
    if "latency2" in steps and "latency" in steps:
        steps.remove("latency")  # latency2 runs the one-primary trials too
    if "drain" in steps:
        steps = [w for w in steps if w not in ("drain_w1", "drain_w3")]
    results = []
    for wl in steps:
        for r in range(1, args.rounds + 1):
            order = builds if r % 2 == 1 else builds[::-1]
            for build, binary, build_sides, two in order:
                if wl == "ingest" and build == "before":
                    continue  # the reference client does not depend on the build
                args.pg2dns, args.build, args.round = binary, build, r
                args.suffix = f"-{build}-r{r}"
                results += run_what(args, {wl}, build_sides, two_primaries=two)
    args.pg2dns, args.suffix = head_bin, ""
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="*", default=["all"],
                    help="w1 w2 w3 drain (= drain_w1 + drain_w3) latency latency2 (two primaries too) latency_load big ingest windows knot reconcile firstload "
                         "zones all")
    ap.add_argument("--pg2dns", default=os.path.join(REPO, "target/release/pg2dns"))
    ap.add_argument("--blast", default=os.path.join(REPO, "target/release/examples/blast"))
    ap.add_argument("--outdir")
    ap.add_argument("--keep", action="store_true", help="keep PostgreSQL data directories")
    ap.add_argument("--only", choices=["naive", "pg2dns"], help="run one side only")
    ap.add_argument("--pin", action="store_true",
                    help="the DNS server on CPU 1, everything else (PostgreSQL, pg2dns, the naive "
                         "pipeline, blast, this script) on CPU 0")
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--baseline", metavar="BIN",
                    help="a pg2dns binary of the build to compare with (e.g. the build before a change): "
                         "each workload runs with --pg2dns and with BIN in --rounds alternating rounds")
    ap.add_argument("--rounds", type=int, default=2, help="--baseline: rounds per workload")
    ap.add_argument("--naive-max-rrs", type=int, default=2500)
    ap.add_argument("--naive-tcp", action="store_true", help="nsupdate -v (TCP for every message)")
    ap.add_argument("--w1-txns", type=int, default=20000)
    ap.add_argument("--w2-rows", type=int, default=200000)
    ap.add_argument("--w3-txns", type=int, default=5000)
    ap.add_argument("--drain-txns", type=int, default=100000)
    ap.add_argument("--drain-w3-txns", type=int, default=20000)
    ap.add_argument("--lat-rate", type=int, default=20)
    ap.add_argument("--lat-secs", type=int, default=30)
    ap.add_argument("--load-txns", type=int, default=100000,
                    help="latency_load: one-row transactions committed by a second client meanwhile")
    ap.add_argument("--big-rows", type=int, default=1000000)
    ap.add_argument("--knot-txns", type=int, default=1000)
    ap.add_argument("--reconcile-sizes", default="10000,100000,1000000",
                    help="zone sizes of `reconcile` (records, comma-separated)")
    ap.add_argument("--reconcile-reps", type=int, default=3)
    ap.add_argument("--firstload-rows", default="1000000",
                    help="firstload: rows of the IPAM table setup loads into an empty zone (comma-separated)")
    ap.add_argument("--zones", default="50000",
                    help="zone counts of `zones` (comma-separated; default 50000)")
    ap.add_argument("--zones-apply-timeout", type=int, default=1200,
                    help="zones: seconds the one transaction may take before it is reported incomplete")
    ap.add_argument("--zones-lat-rate", type=int, default=20)
    ap.add_argument("--zones-lat-secs", type=int, default=60)
    ap.add_argument("--zones-settle", type=int, default=40,
                    help="zones: seconds after the load before RSS, fds and connections are read again")
    ap.add_argument("--zones-blast-connections", type=int, default=16)
    ap.add_argument("--zones-connections", type=int, default=None,
                    help="zones: a [[server]] for BIND with this many connections (default: pg2dns's default)")
    ap.add_argument("--zones-blast-in-flight", type=int, default=64,
                    help="zones: blast's cap on unanswered UPDATEs (BIND's update-quota is 100)")
    ap.add_argument("--zones-bind-timeout", type=int, default=1800,
                    help="zones: seconds BIND may take to load the zones")
    ap.add_argument("--zones-cmd-timeout", type=int, default=1800,
                    help="zones: seconds check-config, setup and the start of run may take each")
    ap.add_argument("--reconcile-drift", type=int, default=0,
                    help="reconcile: also change this percentage of the rows (deletes, adds, TTL changes), "
                         "report, then --apply (0: zones in sync only)")
    ap.add_argument("--no-reconcile-baseline", dest="reconcile_baseline", action="store_false",
                    help="reconcile: skip the COPY + dig + ldns-compare-zones baseline (for 10M records)")
    args = ap.parse_args()
    if args.pin:
        # The fallback when two cores bound W2: BIND on one core, its
        # client and PostgreSQL on the other. Children inherit CPU 0.
        import servers
        os.sched_setaffinity(0, {0})
        servers.DNS_CPUS = {1}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.outdir = args.outdir or os.path.join(HERE, "run", stamp)
    os.makedirs(args.outdir, exist_ok=True)
    os.chmod(args.outdir, 0o755)
    what = set(args.what)
    if "all" in what:
        what = {"w1", "w2", "w3", "drain", "latency", "big", "knot", "ingest"}
    sides = [args.only] if args.only else ["naive", "pg2dns"]
    results = []
    began = time.time()
    if args.baseline:
        results = alternate(args, what, sides)
    else:
        results = run_what(args, what, sides)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "versions": versions(),
        "argv": [a for a in sys.argv[1:] if not a.startswith(("--pg2dns", "--blast", "/"))],
        "total_s": round(time.time() - began, 1),
    }
    with open(os.path.join(args.outdir, "results.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    md = report(meta, results)
    with open(os.path.join(args.outdir, "results.md"), "w") as f:
        f.write(md)
    print(md)
    print(f"results: {args.outdir}/results.md")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def versions():
    def first(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True)
            return (out.stdout or out.stderr).splitlines()[0].strip()
        except (OSError, IndexError):
            return "?"

    from servers import pg_bindir
    return {
        "postgres": first([f"{pg_bindir()}/postgres", "--version"]),
        "named": first(["named", "-v"]),
        "knotd": first(["knotd", "--version"]),
        "nsupdate/dig": first(["dig", "-v"]),
        "python": platform.python_version(),
    }


def fmt(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def ratio(a, b, digits=1):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.{digits}f}×"


def against_baseline(results):
    """`--baseline`: each pg2dns trial of the build under test against the
    baseline's in the same round (above 1: the build under test is faster
    or uses less CPU), then the median ratio over the rounds."""
    pairs = {}
    for r in results:
        if r.get("build") and "failed" not in r:
            base = r["label"].rsplit(f"-{r['build']}-r{r['round']}", 1)[0]
            pairs.setdefault((base, r["round"]), {})[r["build"]] = r
    rows, ratios = [], {}
    for (base, rnd), p in sorted(pairs.items()):
        h, b = p.get("head"), p.get("before")
        if not h or not b:
            continue
        speed = h["rows_per_s"] / b["rows_per_s"] if b.get("rows_per_s") else None
        cpu = (b.get("pipeline_cpu_s") or 0) / h["pipeline_cpu_s"] if h.get("pipeline_cpu_s") else None
        ratios.setdefault(base, []).append((speed, cpu, h.get("p50_ms"), b.get("p50_ms"), h.get("p99_ms"), b.get("p99_ms")))
        lat = (f"{fmt(h.get('p50_ms'))} / {fmt(b.get('p50_ms'))}, {fmt(h.get('p99_ms'))} / {fmt(b.get('p99_ms'))}"
               if h.get("p50_ms") is not None else "-")
        rows.append(f"| {base} | {rnd} | {fmt(h['rows_per_s'])} | {fmt(b['rows_per_s'])} "
                    f"| {f'{speed:.2f}×' if speed else '-'} | {fmt(h['lag_s'])} / {fmt(b['lag_s'])} "
                    f"| {fmt(h.get('pipeline_cpu_s'))} / {fmt(b.get('pipeline_cpu_s'))} | {lat} "
                    f"| {fmt((h.get('peak_rss_kib') or 0) / 1024, 1)} / {fmt((b.get('peak_rss_kib') or 0) / 1024, 1)} "
                    f"| {fmt(h.get('cpu_pressure_pct'), 0)} / {fmt(b.get('cpu_pressure_pct'), 0)} |")
    if not rows:
        return []
    out = ["| trial (HEAD / before, same round) | round | HEAD rows/s | before rows/s | HEAD / before "
           "| lag s | pg2dns CPU s | latency p50, p99 ms | peak RSS MiB | CPU pressure % |",
           "|---|---|---|---|---|---|---|---|---|---|"] + rows + [""]
    out += ["| trial | rounds | median rows/s HEAD / before | median CPU before / HEAD | median p50 ms HEAD / before "
            "| median p99 ms HEAD / before |", "|---|---|---|---|---|---|"]

    def med(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    for base, rs in ratios.items():
        cols = list(zip(*rs))
        sp, cp = med(cols[0]), med(cols[1])
        out.append(f"| {base} | {len(rs)} | {f'{sp:.2f}×' if sp else '-'} | {f'{cp:.2f}×' if cp else '-'} "
                   f"| {fmt(med(cols[2]))} / {fmt(med(cols[3]))} | {fmt(med(cols[4]))} / {fmt(med(cols[5]))} |")
    return out + [""]


def report(meta, results):
    by = {r["label"]: r for r in results}
    out = [f"Run {meta['date']} on {meta['host']} ({meta['cpus']} CPUs, {meta['cpu_model']}), "
           f"bench/bench {' '.join(meta['argv']) or 'all'}, {meta['total_s']} s in total.", ""]
    out.append("| trial | rows | RR ops | commit s | first commit → DNS complete s | lag after last commit s "
               "| rows/s | RR ops/s | peak RSS MiB | pipeline CPU s | its PG backends CPU s | DNS server CPU s | DNS == table | errors | CPU pressure % |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if r["pipeline"] in ("blast", "reconcile", "firstload", "zones"):
            continue
        if "failed" in r:
            out.append(f"| {r['label']} | FAILED: {r['failed'][:200]} | | | | | | | | | | {r.get('dns_equals_table')} "
                       f"({r.get('verify', '')}) | | |")
            continue
        rss = r.get("peak_rss_kib")
        out.append(
            f"| {r['label']} | {fmt(r['rows'])} | {fmt(r['rr_ops'])} | {fmt(r['commit_s'])} | {fmt(r['complete_s'])} "
            f"| {fmt(r['lag_s'])} | {fmt(r['rows_per_s'])} | {fmt(r['rr_ops_per_s'])} "
            f"| {fmt(rss / 1024 if rss else None, 1)} | {fmt(r.get('pipeline_cpu_s'))} | {fmt(r.get('pg_backends_cpu_s'))} "
            f"| {fmt(r.get('dns_cpu_s'))} "
            f"| {'yes' if r['dns_equals_table'] else 'NO: ' + r['verify']} | {r.get('pipeline_errors', 0)} "
            f"| {fmt(r.get('cpu_pressure_pct'), 0)} |")
    out.append("")
    out += against_baseline(results)
    # Ratios pg2dns / naive.
    rows = []
    for wl in ("w1", "w2", "w3", "drain", "drain_w3", "latency", "drain-knot"):
        a, b = by.get(f"{wl}-pg2dns"), by.get(f"{wl}-naive")
        if wl == "drain-knot":
            a, b = by.get("drain-pg2dns-knot"), by.get("drain-naive-knot")
        if not a or not b or "failed" in a or "failed" in b:
            continue
        rows.append(f"| {wl} | {ratio(a['rows_per_s'], b['rows_per_s'])} | {ratio(b['complete_s'], a['complete_s'])} "
                    f"| {fmt(a['lag_s'])} vs {fmt(b['lag_s'])} "
                    f"| {ratio(a.get('peak_rss_kib'), b.get('peak_rss_kib'), 2)} |")
    if rows:
        out.append("| workload | rows/s pg2dns / naive | speed-up of first commit → DNS complete (naive s / pg2dns s) "
                   "| lag after last commit s, pg2dns vs naive | peak RSS pg2dns / naive |")
        out.append("|---|---|---|---|---|")
        out += rows
        out.append("")
    lat = [r for r in results if r["label"].startswith("latency") and "failed" not in r]
    if lat:
        out.append("| latency trial | commits | seen in DNS | p50 ms | p90 ms | p99 ms | max ms | mean ms "
                   "| commit → at BIND p50/p99/max ms | at BIND → visible p50/p99/max ms | fsync p99/max ms "
                   "| CPU pressure % |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")

        def three(r, k):
            return "/".join(fmt(r.get(f"{k}_{q}_ms")) for q in ("p50", "p99", "max"))

        for r in lat:
            out.append(f"| {r['label']} | {r['rows']} | {r['latency_n']} | {fmt(r['p50_ms'])} | {fmt(r['p90_ms'])} "
                       f"| {fmt(r['p99_ms'])} | {fmt(r['max_ms'])} | {fmt(r['mean_ms'])} "
                       f"| {three(r, 'to_server')} | {three(r, 'server_to_visible')} "
                       f"| {fmt(r.get('fsync_p99_ms'))}/{fmt(r.get('fsync_max_ms'))} "
                       f"| {fmt(r.get('cpu_pressure_pct'), 0)} |")
        out.append("")
    apply = [r for r in results if r["pipeline"] != "blast" and "apply_rr_per_s" in r]
    refs = [r for r in results if r["pipeline"] == "blast"]
    if apply or refs:
        out.append("| big-transaction trial | rows | commit → first record visible s | apply phase s | apply RR/s "
                   "| end to end rows/s | vs reference client RR/s | peak RSS MiB |")
        out.append("|---|---|---|---|---|---|---|---|")
        ref = by.get("w2-blast")
        ref_rate = ref.get("rr_per_s") if ref and "failed" not in ref else None
        for r in apply:
            rss = r.get("peak_rss_kib")
            out.append(f"| {r['label']} | {fmt(r['rows'])} | {fmt(r['first_visible_s'])} | {fmt(r['apply_s'])} "
                       f"| {fmt(r['apply_rr_per_s'])} | {fmt(r['rows_per_s'])} "
                       f"| {ratio(r['apply_rr_per_s'], ref_rate, 2)} (end to end {ratio(r['rows_per_s'], ref_rate, 2)}) "
                       f"| {fmt(rss / 1024 if rss else None, 1)} |")
        out.append("")
        out.append("| reference client | server | RRs | messages | s | RR/s | msgs/s | p50 ms/msg | client CPU s "
                   "| DNS server CPU s | all RRs in zone |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in refs:
            out.append(f"| {r['label']} | {r['server']} | {fmt(r['rows'])} | {fmt(r.get('messages'))} "
                       f"| {fmt(r.get('seconds'))} | {fmt(r.get('rr_per_s'))} | {fmt(r.get('msgs_per_s'))} "
                       f"| {fmt(r.get('p50_ms'))} | {fmt(r.get('client_cpu_s'))} | {fmt(r.get('dns_cpu_s'))} "
                       f"| {'yes' if r.get('dns_equals_table') else 'NO: ' + str(r.get('verify'))} |")
        out.append("")
    out.append(reconcile_bench.report(results))
    out.append(zonesbench.report(results))
    out.append("Commands:")
    out.append("")
    for r in results:
        if r.get("command"):
            out.append(f"- {r['label']}: `{r['command']}`")
        if r.get("workload"):
            out.append(f"  - workload: `{r['workload']}`")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    main()
