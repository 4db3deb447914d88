"""`bench/bench reconcile`: `pg2dns reconcile` on zones in sync, against an
nsdiff-style baseline measured in the same trial.

For each size N (--reconcile-sizes, default 10,000, 100,000, 1,000,000):
  - a fresh PostgreSQL and BIND; the zone file BIND loads already holds the
    N A records (h<i>.example.test. 3600 A 10.x.y.z), and pg2dns.rr holds
    the same N rows (plus ns.example.test., which the zone file has): the
    zone is in sync from the start, without sending N records by UPDATE;
  - `pg2dns setup`, then the rows inserted (no service running: reconcile
    reads the tables now), VACUUM ANALYZE;
  - per repetition (--reconcile-reps): `pg2dns reconcile --json` under
    /usr/bin/time (wall time, peak RSS), its per-phase times from the JSON
    (database read, AXFR, diff), and the exit code (0 = in sync, checked);
  - the baseline, each step under /usr/bin/time: `psql` COPY of the table
    to text, `dig` TSIG AXFR to text, a zone file written from the COPY
    (the AXFR's apex SOA and NS added, as nsdiff leaves them out of the
    comparison), and `ldns-compare-zones` of the two files (it reads, sorts
    and compares both zones; "+0 -0 ~0" = in sync, checked).
"""

import json
import os
import subprocess
import time

import servers
from servers import Bind, Postgres, ZONE

TIME_FMT = "TIME %e %M"


def timed(cmd, stdout=None, env=None):
    """Runs `cmd` under /usr/bin/time; returns (wall s, peak RSS KiB, stdout, rc)."""
    proc = subprocess.run(["/usr/bin/time", "-f", TIME_FMT] + cmd, stdout=stdout or subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env)
    wall, rss = None, None
    for line in proc.stderr.splitlines():
        if line.startswith("TIME "):
            _, w, m = line.split()
            wall, rss = float(w), int(m)
    out = proc.stdout if stdout is None else ""
    if wall is None:
        raise RuntimeError(f"{cmd[0]} failed: {proc.stderr[-500:]}")
    return wall, rss, out, proc.returncode, proc.stderr


def a_rdata(i):
    return f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"


def zone_file(n):
    lines = [servers.ZONE_FILE]
    lines += [f"h{i} 3600 IN A {a_rdata(i)}\n" for i in range(1, n + 1)]
    return "".join(lines)


def trial(args, n, reps):
    label = f"reconcile-{n}"
    print(f"--- {label}", flush=True)
    root = os.path.join(args.outdir, label)
    os.makedirs(root)
    os.chmod(root, 0o755)
    res = {"label": label, "pipeline": "reconcile", "server": "bind", "rows": n}
    original, soa_wait = servers.ZONE_FILE, servers.SOA_WAIT
    t = time.time()
    pg = Postgres(root)
    servers.ZONE_FILE, servers.SOA_WAIT = zone_file(n), 600
    try:
        dns = Bind(root)
    finally:
        servers.ZONE_FILE, servers.SOA_WAIT = original, soa_wait
    res["bind_load_s"] = round(time.time() - t, 1)
    try:
        config = os.path.join(root, "pg2dns.toml")
        with open(config, "w") as f:
            f.write("version = 1\n[database]\n"
                    f'url = "{pg.url}"\nslot = "pg2dns"\npublication = "pg2dns"\n'
                    f'[[zone]]\nname = "{ZONE}"\nprimary = "127.0.0.1:{dns.port}"\n'
                    f'tsig_key_file = "{dns.key_file}"\n')
        env = dict(os.environ, RUST_LOG="warn")
        subprocess.run([args.pg2dns, "setup", "-c", config], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t = time.time()
        pg.psql("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('ns.example.test.', 3600, 'A', '192.0.2.53');"
                "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) "
                "SELECT 'h' || g || '.example.test.', 3600, 'A', "
                "'10.' || (g >> 16) || '.' || ((g >> 8) & 255) || '.' || (g & 255) "
                f"FROM generate_series(1, {n}) AS g")
        pg.psql("VACUUM ANALYZE pg2dns.rr")
        res["db_load_s"] = round(time.time() - t, 1)
        res["command"] = "RUST_LOG=warn /usr/bin/time -f '%e %M' pg2dns reconcile -c pg2dns.toml --json"
        runs = []
        for _ in range(reps):
            wall, rss, out, rc, err = timed([args.pg2dns, "reconcile", "-c", config, "--json"], env=env)
            try:
                report = json.loads(out)
            except ValueError:
                raise RuntimeError(f"reconcile printed no JSON (exit {rc}): {out[-300:]} {err[-500:]}")
            z = report["zones"][0]
            runs.append({"wall_s": wall, "rss_kib": rss, "exit": rc,
                         "read_s": report["read_ms"] / 1000, "axfr_s": z["axfr_ms"] / 1000,
                         "diff_s": z["diff_ms"] / 1000, "total_s": report["total_ms"] / 1000,
                         "transferred": z["transferred"], "in_sync": z.get("in_sync")})
            print(json.dumps(runs[-1]), flush=True)
        res["pg2dns"] = runs
        res["baseline"] = [baseline(pg, dns, root) for _ in range(reps)]
        res["dns_equals_table"] = all(r["exit"] == 0 and r["in_sync"] for r in runs) and \
            all(b["in_sync"] for b in res["baseline"])
    finally:
        dns.stop()
        pg.stop()
        if not args.keep:
            import shutil
            shutil.rmtree(os.path.join(root, "pg"), ignore_errors=True)
            for f in ("db.txt", "db.zone", "axfr.zone"):
                try:
                    os.remove(os.path.join(root, f))
                except OSError:
                    pass
    print(json.dumps({k: v for k, v in res.items() if k not in ("pg2dns", "baseline")}), flush=True)
    return res


def baseline(pg, dns, root):
    """The nsdiff-style comparison: COPY out, AXFR, zone file, ldns-compare-zones."""
    db_txt, db_zone, ax = (os.path.join(root, f) for f in ("db.txt", "db.zone", "axfr.zone"))
    out = {}
    with open(db_txt, "w") as f:
        out["copy_s"], out["copy_rss_kib"], _, rc, err = timed(
            [pg.tool("psql"), "-X", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-c",
             "COPY (SELECT owner, ttl, type, rdata FROM pg2dns.rr) TO STDOUT"], stdout=f)
    with open(ax, "w") as f:
        out["axfr_s"], out["axfr_rss_kib"], _, rc, err = timed(
            ["dig", "-k", dns.key_file, "AXFR", ZONE, "@127.0.0.1", "-p", str(dns.port),
             "+noall", "+answer"], stdout=f)
    t = time.time()
    # The database's side as a zone file: the apex SOA and NS from the
    # transfer (not the database's business), then one line per row.
    with open(ax) as src, open(db_zone, "w") as dst:
        for line in src:
            parts = line.split()
            if len(parts) > 3 and parts[0] == ZONE and parts[3] in ("SOA", "NS"):
                dst.write(line)
        with open(db_txt) as rows:
            for row in rows:
                owner, ttl, rtype, rdata = row.rstrip("\n").split("\t")
                dst.write(f"{owner} {ttl} IN {rtype} {rdata}\n")
    out["to_zone_s"] = round(time.time() - t, 2)
    out["compare_s"], out["compare_rss_kib"], stdout, rc, err = timed(
        ["ldns-compare-zones", "-a", db_zone, ax])
    summary = stdout.strip().splitlines()[-1] if stdout.strip() else err.strip()
    out["compare_output"] = summary[-200:]
    out["in_sync"] = rc == 0 and summary.split() == ["+0", "-0", "~0"]
    out["total_s"] = round(out["copy_s"] + out["axfr_s"] + out["to_zone_s"] + out["compare_s"], 2)
    print(json.dumps(out), flush=True)
    return out


def run(args):
    sizes = [int(s) for s in args.reconcile_sizes.split(",")]
    return [trial(args, n, args.reconcile_reps) for n in sizes]


def median(values):
    values = sorted(values)
    return values[len(values) // 2] if values else None


def report(results):
    """The markdown table of the reconcile trials."""
    rows = [r for r in results if r.get("pipeline") == "reconcile"]
    if not rows:
        return ""
    out = ["", "### reconcile, zone in sync (medians of the repetitions)", "",
           "| records | pg2dns total s | DB read s | AXFR s | diff s | peak RSS MiB | baseline total s "
           "(COPY / AXFR / to zone / compare) | baseline peak RSS MiB | in sync (both) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, b = r.get("pg2dns", []), r.get("baseline", [])
        if not p:
            out.append(f"| {r['rows']:,} | failed: {r.get('failed', '?')} |")
            continue
        m = lambda k, src=p: median([x[k] for x in src])  # noqa: E731
        brss = max(max(x["copy_rss_kib"], x["axfr_rss_kib"], x["compare_rss_kib"]) for x in b) if b else 0
        out.append(
            f"| {r['rows']:,} | **{m('wall_s'):.2f}** | {m('read_s'):.2f} | {m('axfr_s'):.2f} | {m('diff_s'):.2f} "
            f"| {max(x['rss_kib'] for x in p) / 1024:.1f} | **{m('total_s', b):.2f}** ({m('copy_s', b):.2f} / "
            f"{m('axfr_s', b):.2f} / {m('to_zone_s', b):.2f} / {m('compare_s', b):.2f}) | {brss / 1024:.1f} "
            f"| {'yes' if r.get('dns_equals_table') else 'NO'} |")
    return "\n".join(out) + "\n"
