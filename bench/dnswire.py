"""Just enough DNS over UDP (stdlib only) to poll a server for a name.

Polling runs in tight loops while a workload commits, so it must not spawn a
`dig` per probe. A probe is one A (or SOA) query; the answer count says
whether the record is visible yet.
"""

import os
import socket
import struct

TYPE_A = 1
TYPE_SOA = 6


def _encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


class Prober:
    """A UDP socket aimed at one server."""

    def __init__(self, port, host="127.0.0.1", timeout=1.0):
        self.addr = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)

    def answers(self, name, qtype=TYPE_A):
        """Number of answer RRs for (name, qtype), or None on timeout."""
        qid = struct.unpack("!H", os.urandom(2))[0]
        msg = struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 0) + _encode_name(name) + struct.pack("!HH", qtype, 1)
        self.sock.sendto(msg, self.addr)
        while True:
            try:
                data, _ = self.sock.recvfrom(65535)
            except socket.timeout:
                return None
            if len(data) >= 12 and struct.unpack("!H", data[:2])[0] == qid:
                return struct.unpack("!H", data[6:8])[0]

    def soa_serial(self, zone):
        """The zone's SOA serial, or None."""
        qid = struct.unpack("!H", os.urandom(2))[0]
        msg = struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 0) + _encode_name(zone) + struct.pack("!HH", TYPE_SOA, 1)
        self.sock.sendto(msg, self.addr)
        try:
            data, _ = self.sock.recvfrom(65535)
        except socket.timeout:
            return None
        if struct.unpack("!H", data[6:8])[0] < 1:
            return None
        # The SOA answer is the last RR and its serial is the first of the
        # five trailing 32-bit fields.
        return struct.unpack("!I", data[-20:-16])[0]

    def close(self):
        self.sock.close()
