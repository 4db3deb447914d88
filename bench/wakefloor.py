"""The CPU floor of one wake-up on this machine, for scale against pg2dns's
CPU per live transaction (bench/livecpu.py).

    python3 bench/wakefloor.py [N] [RATE]          # e.g. 400 20

Compiles two minimal C servers (gcc) on a UDP socket at 127.0.0.1: one that
only receives (epoll_wait + recvfrom per datagram) and one that also answers
(+ sendto, whose loopback delivery runs in the sender). Sends them N
datagrams at RATE per second and prints each one's CPU (from
/proc/PID/schedstat) per datagram. A live one-row transaction costs pg2dns
at least two such wake-ups (the transaction arrives; the DNS answer
arrives) and one send (the UPDATE), over TCP, before any of its own work.
Not a benchmark of record: a calibration.
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

SERVER = r"""
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
    int answer = argc > 2;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[1]));
    a.sin_addr.s_addr = htonl(0x7f000001);
    bind(s, (void *)&a, sizeof a);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = s};
    epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
    char buf[2048];
    for (;;) {
        struct epoll_event out;
        epoll_wait(ep, &out, 1, -1);
        struct sockaddr_in from;
        socklen_t len = sizeof from;
        int n = recvfrom(s, buf, sizeof buf, 0, (void *)&from, &len);
        if (answer && n > 0)
            sendto(s, buf, n, 0, (void *)&from, len);
    }
}
"""

n = int(sys.argv[1]) if len(sys.argv) > 1 else 400
rate = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
tmp = tempfile.mkdtemp(prefix="wakefloor-")
src, binary = os.path.join(tmp, "server.c"), os.path.join(tmp, "server")
open(src, "w").write("#include <stdlib.h>\n" + SERVER)
subprocess.run(["gcc", "-O2", "-o", binary, src], check=True)


def on_cpu_ns(pid):
    return int(open(f"/proc/{pid}/schedstat").read().split()[0])


for answer in (False, True):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    proc = subprocess.Popen([binary, str(port)] + (["answer"] if answer else []))
    try:
        time.sleep(0.3)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        before = on_cpu_ns(proc.pid)
        for _ in range(n):
            s.sendto(b"x" * 100, ("127.0.0.1", port))
            if answer:
                s.recv(2048)
            time.sleep(1 / rate)
        per = (on_cpu_ns(proc.pid) - before) / n / 1000
        what = "epoll_wait + recvfrom + sendto" if answer else "epoll_wait + recvfrom"
        print(f"{what:32} {per:7.1f} us CPU per datagram ({n} at {rate:g}/s)")
    finally:
        proc.kill()
        proc.wait()
