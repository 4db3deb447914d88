"""pgoutput against pg2dns_plugin's protobuf format, in the same run.

    python3 bench/plugin.py BINARY [ROWS] [N] [RATE] [ROUNDS]   # e.g. target/release/pg2dns 200000 400 20 2

For each round and each plugin (alternating, so that the host's load hits
both alike) on fresh PostgreSQL and BIND under /tmp:

- W2: one ROWS-row INSERT while `pg2dns run` streams; the time until its
  last row answers and the CPU seconds of pg2dns and of its walsender;
- live: N one-row transactions at RATE per second; the CPU ms per
  transaction of pg2dns and of its walsender (/proc/PID/schedstat).

The extension must be installed (a release build: `cargo pgrx install
--release`, docs/plugin.md). Prints one line per measurement and the
medians' ratios protobuf / pgoutput.
"""
import os
import statistics
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402
from servers import Postgres, Bind, ZONE  # noqa: E402
from dnswire import Prober  # noqa: E402
import pgwire  # noqa: E402

binary = sys.argv[1]
rows = int(sys.argv[2]) if len(sys.argv) > 2 else 200000
n = int(sys.argv[3]) if len(sys.argv) > 3 else 400
rate = float(sys.argv[4]) if len(sys.argv) > 4 else 20.0
rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 2


def task_ns(pid):
    """CPU time of every thread of `pid`, in nanoseconds."""
    return sum(int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0])
               for t in os.listdir(f"/proc/{pid}/task"))


def trial(plugin, k):
    root = f"/tmp/pluginbench-{os.getpid()}-{plugin}-{k}"
    os.makedirs(root)
    os.chmod(root, 0o755)
    pg = Postgres(root)
    dns = Bind(root)
    p = None
    try:
        if plugin == "pg2dns":
            pg.psql("ALTER SYSTEM SET output_plugin_libraries = pgoutput, pg2dns_plugin")
            pg.psql("SELECT pg_reload_conf()")
            while "pg2dns_plugin" not in pg.psql("SHOW output_plugin_libraries"):
                time.sleep(0.05)
        p = B.Pg2dns(pg, dns, root, binary, 4, plugin=plugin)
        p.start()
        prober = Prober(dns.port)
        conn = pgwire.Connection("127.0.0.1", pg.port)

        def visible(owner, timeout):
            end = time.time() + timeout
            while time.time() < end:
                if prober.answers(owner):
                    return time.time()
                time.sleep(0.005)
            raise SystemExit(f"{owner} not visible; see {p.log}")

        conn.query(f"INSERT INTO pg2dns.rr(owner, type, rdata) VALUES ('warm.{ZONE}', 'A', '192.0.2.1')")
        visible(f"warm.{ZONE}", 60)
        walsender = int(conn.query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walsender'")[0][0])
        pid = p.proc.pid
        # live
        a, w = task_ns(pid), task_ns(walsender)
        for i in range(n):
            conn.query(f"INSERT INTO pg2dns.rr(owner, type, rdata) VALUES "
                       f"('live-{i}.{ZONE}', 'A', '10.0.{i // 256 % 256}.{i % 256}')")
            time.sleep(1 / rate)
        visible(f"live-{n - 1}.{ZONE}", 60)
        time.sleep(0.5)
        live = ((task_ns(pid) - a) / 1e6 / n, (task_ns(walsender) - w) / 1e6 / n)
        # W2
        a, w = task_ns(pid), task_ns(walsender)
        t0 = time.time()
        conn.query(f"INSERT INTO pg2dns.rr(owner, type, rdata) SELECT 'w2-' || i || '.{ZONE}', 'A', "
                   f"{B.a_rdata('i')} FROM generate_series(1, {rows}) AS i")
        conn.query(f"INSERT INTO pg2dns.rr(owner, type, rdata) VALUES ('end.{ZONE}', 'A', '192.0.2.2')")
        t1 = visible(f"end.{ZONE}", 900)
        time.sleep(0.5)
        w2 = (t1 - t0, (task_ns(pid) - a) / 1e9, (task_ns(walsender) - w) / 1e9)
        print(f"{plugin:8} round {k}: live pg2dns {live[0]:.3f} ms walsender {live[1]:.3f} ms per txn; "
              f"W2 {w2[0]:.2f} s ({rows / w2[0]:.0f} rows/s) pg2dns {w2[1]:.2f} s walsender {w2[2]:.2f} s",
              flush=True)
        return live, w2
    finally:
        if p:
            p.stop()
        dns.stop()
        pg.stop()


results = {"pgoutput": [], "pg2dns": []}
for k in range(rounds):
    for plugin in (["pgoutput", "pg2dns"] if k % 2 == 0 else ["pg2dns", "pgoutput"]):
        results[plugin].append(trial(plugin, k))


def med(plugin, f):
    return statistics.median(f(r) for r in results[plugin])


for label, f in [("live pg2dns ms/txn", lambda r: r[0][0]), ("live walsender ms/txn", lambda r: r[0][1]),
                 ("W2 seconds", lambda r: r[1][0]), ("W2 pg2dns CPU s", lambda r: r[1][1]),
                 ("W2 walsender CPU s", lambda r: r[1][2])]:
    a, b = med("pgoutput", f), med("pg2dns", f)
    print(f"{label:24} pgoutput {a:8.3f}  protobuf {b:8.3f}  protobuf/pgoutput {b / a:5.2f}x")
