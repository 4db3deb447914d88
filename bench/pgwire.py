"""A minimal PostgreSQL client (protocol 3.0, simple query, trust auth only).

The bench needs to know *when* a commit returned, to the millisecond, without
third-party modules; psql cannot tell us that. This speaks just enough of the
frontend/backend protocol: StartupMessage, then Query → rows until
ReadyForQuery. Authentication other than trust is refused.
"""

import socket
import struct


class PgError(Exception):
    """An ErrorResponse from the server, or a protocol surprise."""


class Connection:
    """One session to a trust-authenticated PostgreSQL on TCP."""

    def __init__(self, host, port, user="postgres", database="postgres"):
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        params = b"user\0" + user.encode() + b"\0database\0" + database.encode() + b"\0\0"
        body = struct.pack("!I", 196608) + params
        self.sock.sendall(struct.pack("!I", len(body) + 4) + body)
        while True:
            tag, payload = self._read()
            if tag == b"R":
                (code,) = struct.unpack("!I", payload[:4])
                if code != 0:
                    raise PgError(f"authentication method {code} requested; the bench needs trust")
            elif tag == b"E":
                raise PgError(_error_text(payload))
            elif tag == b"Z":
                return

    def _read(self):
        while len(self.buf) < 5:
            self._fill()
        tag = self.buf[:1]
        (length,) = struct.unpack("!I", self.buf[1:5])
        while len(self.buf) < 1 + length:
            self._fill()
        payload = self.buf[5 : 1 + length]
        self.buf = self.buf[1 + length :]
        return tag, payload

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise PgError("server closed the connection")
        self.buf += data

    def query(self, sql):
        """Runs `sql` (may hold several statements); returns the rows of the
        last result as lists of text (None for NULL)."""
        body = sql.encode() + b"\0"
        self.sock.sendall(b"Q" + struct.pack("!I", len(body) + 4) + body)
        rows, error = [], None
        while True:
            tag, payload = self._read()
            if tag == b"T":
                rows = []
            elif tag == b"D":
                (n,) = struct.unpack("!H", payload[:2])
                pos, row = 2, []
                for _ in range(n):
                    (ln,) = struct.unpack("!i", payload[pos : pos + 4])
                    pos += 4
                    if ln < 0:
                        row.append(None)
                    else:
                        row.append(payload[pos : pos + ln].decode())
                        pos += ln
                rows.append(row)
            elif tag == b"E":
                error = _error_text(payload)
            elif tag == b"Z":
                if error:
                    raise PgError(error)
                return rows

    def close(self):
        try:
            self.sock.sendall(b"X\0\0\0\4")
        finally:
            self.sock.close()


def _error_text(payload):
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[part[:1]] = part[1:].decode(errors="replace")
    return f"{fields.get(b'S', 'ERROR')}: {fields.get(b'M', '?')}"
