#!/usr/bin/env python3
"""Soak: pg2dns under a mixed workload for a long time, with faults.

Run through `scripts/soak` (which builds pg2dns in release mode). Starts its
own PostgreSQL and BIND (zones example.test. and 2.0.192.in-addr.arpa.) on
free 127.0.0.1 ports under bench/run/soak-<stamp>/, then for --minutes:

  - a writer thread commits a mixed workload to pg2dns.rr: inserts, rdata and
    TTL updates, deletes, forward+reverse transactions, TXT values of several
    kB in many strings, rolled-back transactions, savepoints undone with
    ROLLBACK TO, and now and then a 5,000-row transaction;
  - pg2dns is SIGKILLed and restarted every --kill-every seconds (on average);
  - BIND is stopped for a few seconds and started again every
    --bind-restart-every seconds;
  - every --check-every minutes, and at the end, the writer pauses and the
    AXFR of each zone must equal the table within --converge seconds.

Counts: committed changes are rows changed by committed work (from the
command tags, minus what ROLLBACK and ROLLBACK TO undid); changes verified
are those committed before the last check that found DNS equal to the table;
a divergence is a record that differs at a check. Exit status 1 if any
divergence, if pg2dns exited on its own, or if the writer failed.
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pgwire  # noqa: E402
from servers import Postgres, free_port, make_key, proc_status, stop_proc, wait_soa, KEY_NAME  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FWD = "example.test."
REV = "2.0.192.in-addr.arpa."
ZONES = (FWD, REV)
BULK_ROWS = 5000
MAX_HOSTS = 2000  # live hosts before the oldest are deleted
MAX_TXTS = 200

ZONE_FILE = """$TTL 3600
@ IN SOA ns.soak.invalid. hostmaster.soak.invalid. 1 3600 600 86400 60
@ IN NS ns.soak.invalid.
"""


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- servers


class Bind:
    """named -g serving both zones; stopped and started on the same port."""

    def __init__(self, root):
        self.dir = os.path.join(root, "bind")
        os.makedirs(self.dir)
        self.port = free_port()
        self.key_file = os.path.join(self.dir, "tsig.key")
        make_key(self.key_file)
        conf = (
            f'include "{self.key_file}";\n'
            f'options {{\n  directory "{self.dir}";\n  pid-file "{self.dir}/named.pid";\n'
            f"  listen-on port {self.port} {{ 127.0.0.1; }};\n  listen-on-v6 {{ none; }};\n"
            f"  recursion no;\n  notify no;\n  allow-transfer {{ key {KEY_NAME}; }};\n}};\n"
            "controls { };\n"
        )
        for zone in ZONES:
            path = os.path.join(self.dir, zone + "zone")
            with open(path, "w") as f:
                f.write(ZONE_FILE)
            conf += (f'zone "{zone}" {{\n  type primary;\n  file "{path}";\n'
                     f"  allow-update {{ key {KEY_NAME}; }};\n}};\n")
        self.conf = os.path.join(self.dir, "named.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.log = os.path.join(self.dir, "named.log")
        self.proc = None
        self.start()

    def start(self):
        self.logf = open(self.log, "a")
        self.proc = subprocess.Popen(["named", "-g", "-n", "2", "-c", self.conf],
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        wait_soa(self.port, self.proc, self.log)

    def stop(self):
        stop_proc(self.proc)
        self.logf.close()
        self.proc = None

    def axfr(self, zone):
        """The zone as a set of (owner, ttl, TYPE, rdata), apex SOA/NS left out."""
        out = subprocess.run(["dig", "-k", self.key_file, "@127.0.0.1", "-p", str(self.port),
                              "+noall", "+answer", "+time=10", "+tries=1", "AXFR", zone],
                             capture_output=True, text=True)
        records = [line.split(None, 4) for line in out.stdout.splitlines()
                   if line.strip() and not line.startswith(";")]
        if out.returncode != 0 or not any(len(r) == 5 and r[3] == "SOA" for r in records):
            raise RuntimeError(f"AXFR {zone} failed: {out.stdout[-300:]} {out.stderr[-300:]}")
        have = set()
        for owner, ttl, _cls, rtype, rdata in records:
            owner = owner.lower()
            if owner == zone and rtype in ("SOA", "NS"):
                continue
            have.add((owner, int(ttl), rtype, rdata.strip()))
        return have


class Pg2dns:
    def __init__(self, binary, root, pg, bind):
        self.binary = binary
        self.config = os.path.join(root, "pg2dns.toml")
        with open(self.config, "w") as f:
            f.write(f'version = 1\n[database]\nurl = "{pg.url}"\nslot = "pg2dns"\npublication = "pg2dns"\n')
            for zone in ZONES:
                f.write(f'[[zone]]\nname = "{zone}"\nprimary = "127.0.0.1:{bind.port}"\n'
                        f'tsig_key_file = "{bind.key_file}"\n')
            # The workload deletes whole batches of hosts on purpose: the
            # mass-delete guard would hold them (docs/operations.md, "The mass-delete guard").
            f.write("[guard]\nmax_delete_share = 1.0\n")
        self.log = os.path.join(root, "pg2dns.log")
        self.env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        subprocess.run([binary, "setup", "-c", self.config], check=True, env=self.env,
                       stdout=subprocess.DEVNULL, stderr=open(self.log, "a"))
        self.proc = None
        self.started = None

    def start(self):
        with open(self.log, "a") as f:
            f.write(f"----- soak: pg2dns run started at {time.strftime('%H:%M:%S')}\n")
        self.proc = subprocess.Popen([self.binary, "run", "-c", self.config], env=self.env,
                                     stdout=open(self.log, "a"), stderr=subprocess.STDOUT)
        self.started = time.time()

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def resources(self):
        """(RSS kB, open file descriptors) of the running process."""
        pid = self.proc.pid
        try:
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            fds = None
        return proc_status(pid, "VmRSS"), fds

    def tail(self, lines=15):
        with open(self.log, errors="replace") as f:
            return "".join(f.readlines()[-lines:])


# ---------------------------------------------------------------- workload


class TaggedConnection(pgwire.Connection):
    """pgwire.Connection that returns the command tags of a query."""

    def tags(self, sql):
        body = sql.encode() + b"\0"
        self.sock.sendall(b"Q" + len(body + b"....").to_bytes(4, "big") + body)
        tags, error = [], None
        while True:
            tag, payload = self._read()
            if tag == b"C":
                tags.append(payload.rstrip(b"\0").decode())
            elif tag == b"E":
                error = pgwire._error_text(payload)
            elif tag == b"Z":
                if error:
                    raise pgwire.PgError(f"{error} in: {sql[:300]}")
                return tags


class Workload:
    """Seeded transactions; each keeps every RRset at one TTL and no CNAME,
    so DNS must end up equal to the table."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.lo = 0      # hosts below lo are deleted
        self.next = 0    # hosts lo..next-1 may exist
        self.txts = 0
        self.bulk_live = []
        self.bulk_next = 0
        self.count = 0

    def host(self):
        k = self.next
        self.next += 1
        sql = (f"INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES "
               f"('w{k}.{FWD}', 300, 'A', '10.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}');")
        if k % 2 == 0:
            sql += (f" INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES "
                    f"('{k % 256}.{REV}', 300, 'PTR', 'w{k}.{FWD}');")
        return sql

    def pick(self):
        return self.rng.randrange(self.lo, max(self.next, self.lo + 1))

    def update(self):
        ttl = f", ttl = {self.rng.randint(60, 900)}" if self.rng.random() < 0.3 else ""
        return (f"UPDATE pg2dns.rr SET rdata = '172.16.{self.rng.randrange(256)}.{self.rng.randrange(256)}'"
                f"{ttl} WHERE owner = 'w{self.pick()}.{FWD}' AND type = 'A';")

    def delete(self, k=None):
        k = self.pick() if k is None else k
        return f"DELETE FROM pg2dns.rr WHERE owner = 'w{k}.{FWD}' OR (type = 'PTR' AND rdata = 'w{k}.{FWD}');"

    def trim(self):
        """Deletes of the oldest hosts beyond MAX_HOSTS (committed work only)."""
        sql = ""
        while self.next - self.lo > MAX_HOSTS:
            sql += self.delete(self.lo)
            self.lo += 1
        return sql

    def big_txt(self, k):
        version = self.rng.randrange(1_000_000)
        filler = "abcdefghijklmnopqrstuvwxyz0123456789" * 8
        strings = []
        for j in range(self.rng.randint(12, 24)):
            head = f"t{k}-v{version}-s{j}-"
            strings.append('"' + head + filler[: 250 - len(head)] + '"')
        return " ".join(strings)

    def txt(self):
        if self.txts >= MAX_TXTS or (self.txts and self.rng.random() < 0.5):
            k = self.rng.randrange(self.txts)
            return f"UPDATE pg2dns.rr SET rdata = '{self.big_txt(k)}' WHERE owner = 't{k}.{FWD}' AND type = 'TXT';"
        k = self.txts
        self.txts += 1
        return f"INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('t{k}.{FWD}', 300, 'TXT', '{self.big_txt(k)}');"

    def bulk(self):
        choice = self.rng.randrange(3)
        if len(self.bulk_live) >= 2 or (choice == 0 and self.bulk_live):
            n = self.bulk_live.pop(0)
            return f"BEGIN; DELETE FROM pg2dns.rr WHERE owner LIKE 'b{n}-%'; COMMIT;"
        if choice == 1 and self.bulk_live:
            n = self.bulk_live[-1]
            o = self.rng.randrange(256)
            return (f"BEGIN; UPDATE pg2dns.rr SET rdata = '10.{o}.' || ((id / 256) % 256) || '.' || (id % 256) "
                    f"WHERE owner LIKE 'b{n}-%'; COMMIT;")
        n = self.bulk_next
        self.bulk_next += 1
        self.bulk_live.append(n)
        return (f"BEGIN; INSERT INTO pg2dns.rr (owner, ttl, type, rdata) SELECT 'b{n}-' || g || '.{FWD}', 300, 'A', "
                f"'10.250.' || (g / 256) || '.' || (g % 256) FROM generate_series(1, {BULK_ROWS}) g; COMMIT;")

    def transaction(self):
        self.count += 1
        if self.count == 1:
            return f"BEGIN; {self.host()} {self.host()} {self.txt()} COMMIT;"
        if self.rng.random() < 1 / 300:
            return self.bulk()
        r = self.rng.randrange(100)
        if r < 30:
            body = " ".join(self.host() for _ in range(self.rng.randint(1, 3))) + self.trim()
            return f"BEGIN; {body} COMMIT;"
        if r < 45:
            return f"BEGIN; {self.update()} {self.host()} {self.trim()} COMMIT;"
        if r < 60:
            return f"BEGIN; {self.delete()} {self.update()} COMMIT;"
        if r < 70:
            return f"BEGIN; {self.txt()} {self.host()} {self.trim()} COMMIT;"
        if r < 80:
            txt = self.txt() if self.txts >= MAX_TXTS else ""  # an insert would burn a TXT number
            return f"BEGIN; {self.host()} {self.delete()} {txt} ROLLBACK;"
        return (f"BEGIN; {self.host()} {self.trim()} SAVEPOINT s1; {self.host()} {self.delete()} "
                f"{self.update()} ROLLBACK TO SAVEPOINT s1; {self.update()} COMMIT;")


def committed_changes(tags):
    """Rows changed by the committed part of one transaction's tags."""
    done, pending, saved = 0, 0, None
    for tag in tags:
        word, *rest = tag.split()
        if word in ("INSERT", "UPDATE", "DELETE"):
            pending += int(rest[-1])
        elif word == "SAVEPOINT":
            saved = pending
        elif word == "ROLLBACK":
            pending, saved = (saved, None) if saved is not None else (0, None)
        elif word == "COMMIT":
            done += pending
            pending = 0
    return done


class Writer(threading.Thread):
    def __init__(self, port, seed):
        super().__init__(daemon=True)
        self.conn = TaggedConnection("127.0.0.1", port)
        self.workload = Workload(seed)
        self.rng = random.Random(seed + 1)
        self.committed = 0
        self.transactions = 0
        self.rolled_back = 0
        self.error = None
        self.stop_flag = threading.Event()
        self.pause_flag = threading.Event()
        self.paused = threading.Event()

    def run(self):
        try:
            while not self.stop_flag.is_set():
                if self.pause_flag.is_set():
                    self.paused.set()
                    time.sleep(0.05)
                    continue
                self.paused.clear()
                sql = self.workload.transaction()
                changes = committed_changes(self.conn.tags(sql))
                self.committed += changes
                self.transactions += 1
                if sql.rstrip().endswith("ROLLBACK;"):
                    self.rolled_back += 1
                time.sleep(self.rng.uniform(0.002, 0.02))
        except Exception as e:  # noqa: BLE001 - reported by the main loop
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.paused.set()

    def pause(self):
        self.pause_flag.set()
        while not self.paused.wait(0.1):
            pass
        return self.committed

    def resume(self):
        self.paused.clear()
        self.pause_flag.clear()


# ---------------------------------------------------------------- checks


def table(pg):
    want = {zone: set() for zone in ZONES}
    for line in pg.psql("SELECT lower(owner), ttl, upper(type), rdata FROM pg2dns.rr").splitlines():
        owner, ttl, rtype, rdata = line.split("|", 3)
        zone = REV if owner.endswith("." + REV) else FWD
        want[zone].add((owner, int(ttl), rtype, rdata))
    return want


def compare(pg, bind):
    """(number of differing records, a sample of them)."""
    want = table(pg)
    diff, sample = 0, []
    for zone in ZONES:
        have = bind.axfr(zone)
        missing, extra = want[zone] - have, have - want[zone]
        diff += len(missing) + len(extra)
        sample += [f"missing {r}" for r in sorted(missing)[:3]] + [f"unexpected {r}" for r in sorted(extra)[:3]]
    return diff, sample


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg2dns", required=True, help="the pg2dns binary")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--kill-every", type=float, default=20, help="mean seconds between SIGKILLs (0: never)")
    ap.add_argument("--bind-restart-every", type=float, default=120, help="seconds between BIND restarts (0: never)")
    ap.add_argument("--check-every", type=float, default=5, help="minutes between AXFR-versus-table checks")
    ap.add_argument("--converge", type=float, default=180, help="seconds DNS may take to equal the table")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)

    root = os.path.join(HERE, "run", time.strftime("soak-%Y%m%d-%H%M%S"))
    os.makedirs(root)
    os.chmod(root, 0o755)
    log(f"soak: {args.minutes} min, seed {seed}, SIGKILL every ~{args.kill_every} s, BIND restart every "
        f"{args.bind_restart_every} s, check every {args.check_every} min; files in {root}")
    pg = Postgres(root)
    bind = Bind(root)
    pg2dns = Pg2dns(args.pg2dns, root, pg, bind)
    pg2dns.start()
    writer = Writer(pg.port, seed)
    writer.start()

    kills = bind_restarts = unexpected_exits = 0
    divergences = checks = verified = 0
    peak_rss = 0
    first = None

    def next_kill(now):
        return now + rng.uniform(0.5, 1.5) * args.kill_every if args.kill_every > 0 else float("inf")

    def check(label):
        nonlocal divergences, checks, verified
        committed = writer.pause()
        t0 = time.time()
        diff, sample = None, []
        while time.time() - t0 < args.converge:
            try:
                diff, sample = compare(pg, bind)
            except RuntimeError as e:
                sample = [str(e)]
            if diff == 0:
                break
            time.sleep(1)
        checks += 1
        if diff == 0:
            verified = committed
            log(f"check {label}: DNS equals the table ({committed} changes committed, "
                f"converged in {time.time() - t0:.1f} s)")
        else:
            divergences += diff if diff is not None else 1
            log(f"check {label}: DIVERGENCE, {diff} records differ after {args.converge:.0f} s: {sample}")
        writer.resume()

    start = time.time()
    end = start + args.minutes * 60
    sample_at = start + 10
    kill_at = max(next_kill(start), sample_at + 1)
    bind_at = start + args.bind_restart_every if args.bind_restart_every > 0 else float("inf")
    check_at = start + args.check_every * 60
    while time.time() < end and writer.error is None:
        time.sleep(0.1)
        now = time.time()
        if pg2dns.proc.poll() is not None:
            unexpected_exits += 1
            log(f"pg2dns exited on its own ({pg2dns.proc.returncode}); its log:\n{pg2dns.tail()}")
            pg2dns.start()
            continue
        rss, fds = pg2dns.resources()
        peak_rss = max(peak_rss, rss or 0)
        if first is None and now >= sample_at:
            first = (rss, fds, now - pg2dns.started)
        if now >= kill_at:
            pg2dns.kill()
            kills += 1
            pg2dns.start()
            kill_at = next_kill(now)
        if now >= bind_at:
            bind.stop()
            time.sleep(rng.uniform(1, 5))
            bind.start()
            bind_restarts += 1
            bind_at = now + args.bind_restart_every
        if now >= check_at:
            check(f"at {(now - start) / 60:.1f} min")
            check_at = time.time() + args.check_every * 60

    last = (pg2dns.resources(), time.time() - pg2dns.started)
    if writer.error is None:
        check("final")
    writer.stop_flag.set()
    writer.join(10)
    if pg2dns.proc.poll() is None:
        last = (pg2dns.resources(), time.time() - pg2dns.started)
        peak_rss = max(peak_rss, last[0][0] or 0)
    pg2dns.proc.send_signal(signal.SIGTERM)
    try:
        clean = pg2dns.proc.wait(30) == 0
    except subprocess.TimeoutExpired:
        pg2dns.kill()
        clean = False
    bind.stop()
    pg.stop()

    def mb(kb):
        return f"{kb / 1024:.1f} MB" if kb else "?"

    first = first or (None, None, 0)
    (end_rss, end_fds), end_age = last
    ok = divergences == 0 and unexpected_exits == 0 and writer.error is None and checks > 0
    print()
    print(f"soak summary ({(time.time() - start) / 60:.1f} min, seed {seed}, {root})")
    print(f"  committed changes        {writer.committed} ({writer.transactions} transactions, "
          f"{writer.rolled_back} rolled back on purpose)")
    print(f"  changes verified in DNS  {verified} ({checks} checks)")
    print(f"  divergences              {divergences}")
    print(f"  restarts survived        {kills} pg2dns SIGKILLs, {bind_restarts} BIND restarts; "
          f"unexpected pg2dns exits: {unexpected_exits}; final SIGTERM exit clean: {clean}")
    print(f"  pg2dns RSS               start {mb(first[0])} (up {first[2]:.0f} s), end {mb(end_rss)} "
          f"(up {end_age:.0f} s), peak {mb(peak_rss)}")
    print(f"  pg2dns open fds          start {first[1]}, end {end_fds}")
    if writer.error:
        print(f"  writer failed: {writer.error}")
    print(f"  result                   {'OK' if ok else 'FAILED'}")
    if ok and not args.keep:
        subprocess.run(["rm", "-rf", os.path.join(root, "pg")])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
