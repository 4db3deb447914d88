"""Where W2's CPU goes: pg2dns, its walsender and its SQL backend, apart.

    python3 bench/w2profile.py BINARY [ROWS]            # e.g. target/release/pg2dns 200000
    PERF=/tmp/w2 python3 bench/w2profile.py ...          # also perf record -g, one file per process
    PERF=/tmp/w2 PERF_CALLGRAPH=dwarf python3 ...        # pg2dns's call graph by DWARF unwinding

Starts its own PostgreSQL (with pg_stat_statements) and BIND under /tmp,
runs `pg2dns run`, commits one ROWS-row INSERT (W2's statement), waits
until its last row answers, then prints the CPU seconds of pg2dns, of its
walsender and of its SQL backend, and the statements by total time. With
PERF=prefix, writes prefix.pg2dns.data, prefix.walsender.data and
prefix.backend.data. Not a benchmark of record: a profile.
"""
import os
import subprocess
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B
from servers import Postgres, Bind, ZONE, proc_cpu
from dnswire import Prober
import pgwire

binary = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 200000
root = f"/tmp/w2prof-{os.getpid()}"
os.makedirs(root)
os.chmod(root, 0o755)
pg = Postgres(root)
with open(os.path.join(pg.data, "postgresql.conf"), "a") as f:
    f.write("shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = all\n")
subprocess.run(["runuser", "-u", "postgres", "--", pg.tool("pg_ctl"), "-D", pg.data, "-l", pg.log, "-w", "restart"],
               check=True, stdout=subprocess.DEVNULL)
dns = Bind(root)
prober = Prober(dns.port)
conn = pgwire.Connection("127.0.0.1", pg.port)
conn.query("CREATE EXTENSION pg_stat_statements")
p = B.Pg2dns(pg, dns, root, binary, 4)
p.start()


def visible(owner, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if prober.answers(owner):
            return time.time()
        time.sleep(0.005)
    raise SystemExit(f"{owner} not visible; see {p.log}")


conn.query(f"INSERT INTO pg2dns.rr(owner, type, rdata) VALUES ('warm.{ZONE}', 'A', '192.0.2.1')")
visible(f"warm.{ZONE}", 60)
time.sleep(0.5)
conn.query("SELECT pg_stat_statements_reset()")
kinds = {int(r[0]): r[1] for r in conn.query(
    "SELECT pid, backend_type FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
    "AND backend_type IN ('walsender', 'client backend')")}
procs = {"pg2dns": p.proc.pid}
for pid, kind in sorted(kinds.items()):
    procs["walsender" if kind == "walsender" else f"backend-{pid}"] = pid
c0 = {name: proc_cpu(pid) for name, pid in procs.items()}
perfs = []
if os.environ.get("PERF"):
    for name, pid in procs.items():
        # PERF_CALLGRAPH=dwarf for the Rust process (built without frame pointers).
        graph = os.environ.get("PERF_CALLGRAPH", "fp") if name == "pg2dns" else "fp"
        perfs.append(subprocess.Popen(["perf", "record", "-F", "2000", "--call-graph", graph, "-p", str(pid), "-o",
                                       f"{os.environ['PERF']}.{name}.data"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(0.5)
t0 = time.time()
conn.query(f"INSERT INTO pg2dns.rr(owner, type, rdata) SELECT 'w2-' || i || '.{ZONE}', 'A', "
           f"{B.a_rdata('i')} FROM generate_series(1, {n}) AS i")
t1 = time.time()
conn.query(f"INSERT INTO pg2dns.rr(owner, type, rdata) VALUES ('end.{ZONE}', 'A', '192.0.2.2')")
t2 = visible(f"end.{ZONE}", 600)
time.sleep(0.5)  # the checkpoint commit
for perf in perfs:
    perf.send_signal(2)
    perf.wait()
print(f"commit {t1 - t0:.2f} s, complete {t2 - t0:.2f} s, {n / (t2 - t0):.0f} rows/s")
for name, pid in procs.items():
    print(f"{name:10} pid {pid:7} cpu {(proc_cpu(pid) or 0) - (c0[name] or 0):.2f} s")
for r in conn.query("SELECT calls, round(total_exec_time::numeric,1), round(total_plan_time::numeric,1), "
                    "left(regexp_replace(query,'\\s+',' ','g'),110) FROM pg_stat_statements "
                    "ORDER BY total_exec_time+total_plan_time DESC LIMIT 8"):
    print(r)
p.stop()
dns.stop()
pg.stop()
