#!/usr/bin/env python3
"""The naive pipeline's filter: test_decoding text → nsupdate blocks.

Reads `pg_recvlogical … -P test_decoding -o include-xids=1` output on stdin.
For each COMMIT it writes `zone`, one `update add`/`update delete` line per
row change (an UPDATE row is a delete of the old RR plus an add of the new
one, which needs REPLICA IDENTITY FULL), then `send`, and flushes. A
transaction with more than --max-rrs operations is split into several
`send`s on row boundaries, because nsupdate cannot build a message larger
than 64 KiB ("ran out of space"); atomicity is lost for such transactions.
This is what people write today; it is deliberately small.
"""

import argparse
import re
import sys

FIELD = re.compile(r"(\w+)\[[^\]]+\]:('(?:[^']|'')*'|\S+)")


def fields(text):
    out = {}
    for name, value in FIELD.findall(text):
        if value.startswith("'"):
            value = value[1:-1].replace("''", "'")
        out[name] = value
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True, help="HOST PORT of the primary")
    ap.add_argument("--zone", default="example.test.")
    ap.add_argument("--table", default="public.rr")
    ap.add_argument("--max-rrs", type=int, default=2500)
    a = ap.parse_args()
    out = sys.stdout
    out.write(f"server {a.server}\n")
    prefix = f"table {a.table}: "
    rows = []  # one list of nsupdate lines per row change
    for raw in sys.stdin:
        line = raw.rstrip("\n")
        if line.startswith("BEGIN"):
            rows = []
        elif line.startswith(prefix):
            kind, _, rest = line[len(prefix):].partition(": ")
            if kind == "INSERT":
                r = fields(rest)
                rows.append([f"update add {r['owner']} {r['ttl']} {r['class']} {r['type']} {r['rdata']}"])
            elif kind == "DELETE":
                r = fields(rest)
                rows.append([f"update delete {r['owner']} {r['class']} {r['type']} {r['rdata']}"])
            elif kind == "UPDATE":
                old_text, _, new_text = rest.partition("new-tuple: ")
                old, new = fields(old_text.replace("old-key: ", "")), fields(new_text)
                rows.append([
                    f"update delete {old['owner']} {old['class']} {old['type']} {old['rdata']}",
                    f"update add {new['owner']} {new['ttl']} {new['class']} {new['type']} {new['rdata']}",
                ])
        elif line.startswith("COMMIT"):
            block, n = [], 0
            for ops in rows:
                if n and n + len(ops) > a.max_rrs:
                    out.write(f"zone {a.zone}\n" + "\n".join(block) + "\nsend\n")
                    block, n = [], 0
                block.extend(ops)
                n += len(ops)
            if block:
                out.write(f"zone {a.zone}\n" + "\n".join(block) + "\nsend\n")
            out.flush()
            rows = []


if __name__ == "__main__":
    main()
