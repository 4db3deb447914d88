"""Where pg2dns's memory goes at many zones (issue #24), and which allocator
returns it: BIND serving Z zones at its defaults, PostgreSQL and `pg2dns
setup` once (bench/zonesbench.py's set-up), then `pg2dns run` once per
variant, one after the other on the same data: RSS idle (8 s after /readyz),
one transaction adding a record to every zone, RSS 15 s after the slot
confirmed it (VmRSS, VmHWM in KiB). A variant sets environment variables
(`LD_PRELOAD` of another malloc, glibc's `MALLOC_*`) or wraps the command
(`heaptrack -o FILE`). `"burst": false` skips the transaction (RSS idle
only); `"kill": "SIGKILL"` ends the process so (under heaptrack) every
allocation still live counts as leaked: `heaptrack_print --print-leaks`
then lists what was live at that moment by call site.

    python3 bench/zonesmem.py BIN/pg2dns 10000 /tmp/zm \
        '[{"name":"default"},{"name":"jemalloc","env":{"LD_PRELOAD":"/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}},
          {"name":"heap","wrap":"heaptrack -o /tmp/zm-heap"}]'

ZMEM_CHECKS=N times `check-config` N times first; ZMEM_PERF_CHECK=FILE
records one with `perf record -g`."""
import os, sys, time, json, subprocess, signal, shlex
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zonesbench as zb
import pgwire
from servers import proc_status

binary, zones, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
variants = json.loads(sys.argv[4])  # [{"name":..,"env":{..},"wrap":"heaptrack -o X"}]
os.makedirs(root, exist_ok=True); os.chmod(root, 0o755)
dns = zb.ManyZonesBind(root, zones, 600)
print("bind up", dns.start_s, flush=True)
pg = zb.Postgres(root)
svc = zb.Service(binary, root, pg, dns, zones)
for k in range(int(os.environ.get("ZMEM_CHECKS", "0"))):
    print("check-config", svc.command("check-config", 600), open("/proc/loadavg").read().split()[:3], flush=True)
if os.environ.get("ZMEM_PERF_CHECK"):
    t = time.time()
    subprocess.run(["perf", "record", "-F", "999", "-g", "-o", os.environ["ZMEM_PERF_CHECK"], binary, "check-config", "-c", svc.config],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=svc.env())
    print("perf check-config", round(time.time() - t, 2), flush=True)
print("setup", svc.command("setup", 1800), flush=True)
conn = pgwire.Connection("127.0.0.1", pg.port)

def pid_of(proc):
    # the pg2dns process itself (a wrapper's child, if wrapped)
    for _ in range(100):
        try:
            out = subprocess.run(["pgrep", "-f", "-n", f"{binary} run"], capture_output=True, text=True).stdout.split()
        except Exception:
            out = []
        if out:
            return int(out[-1])
        time.sleep(0.1)
    return proc.pid

def rss(pid):
    return proc_status(pid, "VmRSS"), proc_status(pid, "VmHWM")

def confirmed_all():
    lsn = conn.query("SELECT pg_current_wal_lsn()::text")
    return lsn

for n, v in enumerate(variants):
    env = svc.env(); env.update(v.get("env", {}))
    argv = shlex.split(v.get("wrap", "")) + [binary, "run", "-c", svc.config]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=open(svc.log, "a"))
    t0 = time.time()
    while not svc.ready():
        time.sleep(0.2)
        if proc.poll() is not None: raise SystemExit("exited")
    ready = time.time() - t0
    pid = pid_of(proc)
    time.sleep(8)
    idle = rss(pid)
    if not v.get("burst", True):
        print(json.dumps({"variant": v["name"], "ready_s": round(ready, 2), "idle_kib": idle, "pid": pid}), flush=True)
        os.kill(pid, getattr(signal, v.get("kill", "SIGTERM")))
        proc.wait(300)
        continue
    sql = (f"INSERT INTO pg2dns.rr(owner, type, rdata) SELECT 'v{n}.z' || i || '.bench.', 'A', "
           f"'10.' || ((i >> 16) & 255) || '.' || ((i >> 8) & 255) || '.' || (i & 255) FROM generate_series(1, {zones}) AS i")
    t1 = time.time()
    conn.query(sql)
    target = conn.query("SELECT pg_current_wal_lsn()::text")[0][0]
    while True:
        r = conn.query(f"SELECT confirmed_flush_lsn >= '{target}'::pg_lsn FROM pg_replication_slots WHERE slot_name = 'pg2dns'")
        if r and r[0][0] == "t":
            break
        if time.time() - t1 > 900 or proc.poll() is not None: break
        time.sleep(0.5)
    applied = time.time() - t1
    time.sleep(15)
    after = rss(pid)
    print(json.dumps({"variant": v["name"], "ready_s": round(ready, 2), "idle_kib": idle, "applied_s": round(applied, 1), "after_kib": after, "pid": pid}), flush=True)
    os.kill(pid, getattr(signal, v.get("kill", "SIGTERM")))
    proc.wait(300)
conn.close(); dns.stop(); pg.stop()
