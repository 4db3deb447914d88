"""Per-statement cost of pg2dns's SQL backends on N one-row transactions.

    python3 bench/sqlprofile.py BINARY N RATE      # e.g. target/release/pg2dns 300 50
    PERF=/tmp/p.data python3 bench/sqlprofile.py ...  # also perf record -e cpu-clock -g

Starts its own PostgreSQL (with pg_stat_statements) and BIND under /tmp,
runs `pg2dns run`, commits N one-row INSERTs at RATE per second, then
prints the CPU seconds of each of pg2dns's backends and of pg2dns, and the
statements by total time. Not a benchmark of record: a profile.
"""
import os
import subprocess
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B
from servers import Postgres, Bind, proc_cpu
import pgwire
binary = sys.argv[1]; n = int(sys.argv[2]); rate = float(sys.argv[3])
root = f"/tmp/prof-{os.getpid()}"; os.makedirs(root); os.chmod(root, 0o755)
pg = Postgres(root)
with open(os.path.join(pg.data, "postgresql.conf"), "a") as f:
    f.write("shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = all\n")
subprocess.run(["runuser","-u","postgres","--",pg.tool("pg_ctl"),"-D",pg.data,"-l",pg.log,"-w","restart"],check=True,stdout=subprocess.DEVNULL)
dns = Bind(root)
conn = pgwire.Connection("127.0.0.1", pg.port)
conn.query("CREATE EXTENSION pg_stat_statements")
p = B.Pg2dns(pg, dns, root, binary, 4)
p.start()
time.sleep(2)
conn.query("SELECT pg_stat_statements_reset()")
pids = [int(r[0]) for r in conn.query("SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND backend_type IN ('walsender','client backend')")]
types = {int(r[0]): (r[1], r[2]) for r in conn.query("SELECT pid, backend_type, application_name FROM pg_stat_activity")}
c0 = {pid: proc_cpu(pid) for pid in pids}; p0 = p.cpu()
perf = None
if os.environ.get("PERF"):
    target = ",".join(str(x) for x in pids + [p.proc.pid])
    perf = subprocess.Popen(["perf","record","-e","cpu-clock","-F","4000","-g","-p",target,"-o",os.environ["PERF"]],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
for i in range(n):
    conn.query(f"INSERT INTO pg2dns.rr(owner, type, rdata) VALUES ('p-{i}.example.test.', 'A', '10.0.{i//256%256}.{i%256}')")
    time.sleep(1/rate)
time.sleep(2)
if perf:
    perf.send_signal(2); perf.wait()
for pid in pids:
    print(pid, types.get(pid), round((proc_cpu(pid) or 0) - (c0[pid] or 0), 3), "s")
print("pg2dns", round(p.cpu() - p0, 3), "s")
for r in conn.query("SELECT calls, round(total_exec_time::numeric,1), round(total_plan_time::numeric,1), left(regexp_replace(query,'\\s+',' ','g'),110) FROM pg_stat_statements ORDER BY total_exec_time+total_plan_time DESC LIMIT 12"):
    print(r)
p.stop(); dns.stop(); pg.stop()
