"""CPU per live one-row transaction: pg2dns and each PostgreSQL backend, apart.

    python3 bench/livecpu.py BINARY [N] [RATE]          # e.g. target/release/pg2dns 400 20
    PERF=/tmp/live python3 bench/livecpu.py ...          # also perf record of pg2dns (prefix.data)
    PERF=/tmp/live PERF_CALLGRAPH=fp ...                 # with call graphs (a frame-pointer build)
    IDLE=0 python3 bench/livecpu.py ...                  # skip the 10 s idle measurement

Starts its own PostgreSQL and BIND under /tmp, runs `pg2dns run`, measures
it idle for 10 s, then commits N one-row INSERTs at RATE per second and
prints the CPU time (from /proc/PID/schedstat, nanosecond-exact, unlike
the tick-counted utime) per transaction of pg2dns and of every PostgreSQL
process by application name and backend type (the client's own backend
included, for scale), and pg2dns's context switches per transaction. Not
a benchmark of record (bench.py latency is): a profile.
"""
import os
import subprocess
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402
from servers import Postgres, Bind  # noqa: E402
import pgwire  # noqa: E402

binary = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 400
rate = float(sys.argv[3]) if len(sys.argv) > 3 else 20.0
root = f"/tmp/livecpu-{os.getpid()}"
os.makedirs(root)
os.chmod(root, 0o755)
pg = Postgres(root)
dns = Bind(root)
conn = pgwire.Connection("127.0.0.1", pg.port)
p = B.Pg2dns(pg, dns, root, binary, 4)


def on_cpu_ns(pid):
    """CPU time of every thread of `pid`, in nanoseconds."""
    return sum(int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0])
               for t in os.listdir(f"/proc/{pid}/task"))


def switches(pid):
    out = 0
    for line in open(f"/proc/{pid}/status"):
        if "ctxt_switches" in line:
            out += int(line.split(":")[1])
    return out


def postgres_ns(names):
    """CPU ns of each PostgreSQL process of this cluster, by name."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if not open(f"/proc/{d}/cmdline").read().startswith("postgres"):
                continue
            ns = int(open(f"/proc/{d}/schedstat").read().split()[0])
        except OSError:
            continue
        out[d] = (names.get(d, "other"), ns)
    return out


def commits(prefix):
    for i in range(n):
        conn.query(f"INSERT INTO pg2dns.rr(owner, type, rdata) VALUES "
                   f"('{prefix}-{i}.example.test.', 'A', '10.0.{i // 256 % 256}.{i % 256}')")
        time.sleep(1 / rate)


try:
    p.start()
    time.sleep(3)
    pid = p.proc.pid
    idle = float(os.environ.get("IDLE", "10"))
    if idle:
        a = on_cpu_ns(pid)
        time.sleep(idle)
        print(f"pg2dns idle: {(on_cpu_ns(pid) - a) / 1e6:.2f} ms CPU in {idle:g} s")
    names = {r[0]: f"{r[1] or '-'}/{r[2]}" for r in
             conn.query("SELECT pid::text, application_name, backend_type FROM pg_stat_activity")}
    a, s0, g0 = on_cpu_ns(pid), switches(pid), postgres_ns(names)
    commits("live")
    time.sleep(1)
    b, s1, g1 = on_cpu_ns(pid), switches(pid), postgres_ns(names)
    print(f"{n} one-row transactions at {rate:g}/s, CPU ms per transaction:")
    print(f"  pg2dns                              {(b - a) / 1e6 / n:.3f}   "
          f"({(s1 - s0) / n:.1f} context switches per transaction)")
    per = {}
    for k, (name, ns) in g1.items():
        per[name] = per.get(name, 0) + ns - (g0[k][1] if k in g0 else 0)
    for name, ns in sorted(per.items()):
        if ns / 1e6 / n >= 0.001:
            print(f"  postgres {name:26} {ns / 1e6 / n:.3f}")
    if os.environ.get("PERF"):
        graph = ["--call-graph", os.environ["PERF_CALLGRAPH"]] if os.environ.get("PERF_CALLGRAPH") else []
        rec = subprocess.Popen(["perf", "record", "-F", "20000", *graph, "-o", os.environ["PERF"] + ".data",
                                "-p", str(pid)])
        commits("perf")
        rec.send_signal(2)
        rec.wait()
finally:
    p.stop()
    dns.stop()
    pg.stop()
