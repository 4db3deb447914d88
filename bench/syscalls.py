"""System calls of `pg2dns run` over N one-row transactions.

    python3 bench/syscalls.py BINARY N RATE            # strace -c summary
    STRACE="-tt -e trace=epoll_wait,recvfrom,sendto" TAIL=20000 python3 bench/syscalls.py ...

Starts its own PostgreSQL and BIND under /tmp, runs `pg2dns run`, attaches
strace to it, commits N one-row INSERTs at RATE per second, and prints
strace's output (the last TAIL characters). Not a benchmark of record: a
profile of the wake-ups and system calls per transaction.
"""
import os, subprocess, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B
from servers import Postgres, Bind
import pgwire
binary, n, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
root = f"/tmp/strace-{os.getpid()}"; os.makedirs(root); os.chmod(root, 0o755)
pg = Postgres(root); dns = Bind(root)
conn = pgwire.Connection("127.0.0.1", pg.port)
p = B.Pg2dns(pg, dns, root, binary, 4); p.start(); time.sleep(2)
st = subprocess.Popen(["strace", "-f", *os.environ.get("STRACE","-c").split(), "-p", str(p.proc.pid), "-o", "/tmp/strace.out"])
time.sleep(0.5)
for i in range(n):
    conn.query(f"INSERT INTO pg2dns.rr(owner, type, rdata) VALUES ('p-{i}.example.test.', 'A', '10.0.{i//256%256}.{i%256}')")
    time.sleep(1/rate)
time.sleep(1)
st.send_signal(2); st.wait()
print(open("/tmp/strace.out").read()[-int(os.environ.get("TAIL","100000")):])
p.stop(); dns.stop(); pg.stop()
