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
        os.chmod(dns.key_file, 0o600)
        # The slot first: `setup` then runs no first load (which would
        # refuse to delete the N records no row holds yet); the rows come
        # after setup, as if the stream had published them.
        pg.psql("SELECT pg_create_logical_replication_slot('pg2dns', 'pgoutput')")
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
        runs = [pg2dns_run(args, config, env) for _ in range(reps)]
        res["pg2dns"] = runs
        res["baseline"] = [baseline(pg, dns, root) for _ in range(reps if args.reconcile_baseline else 0)]
        res["dns_equals_table"] = all(r["exit"] == 0 and r["in_sync"] for r in runs) and \
            all(b["in_sync"] for b in res["baseline"])
        if args.reconcile_drift > 0:
            res.update(drift(args, pg, dns, root, config, env, n, reps))
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
    print(json.dumps({k: v for k, v in res.items()
                      if k not in ("pg2dns", "baseline", "pg2dns_drift", "baseline_drift")}), flush=True)
    return res


def pg2dns_run(args, config, env, extra=()):
    """One `pg2dns reconcile --json` under /usr/bin/time, as a result row."""
    wall, rss, out, rc, err = timed([args.pg2dns, "reconcile", "-c", config, "--json", *extra], env=env)
    try:
        report = json.loads(out)
    except ValueError:
        raise RuntimeError(f"reconcile printed no JSON (exit {rc}): {out[-300:]} {err[-500:]}")
    z = report["zones"][0]
    row = {"wall_s": wall, "rss_kib": rss, "exit": rc,
           "read_s": report["read_ms"] / 1000, "axfr_s": z["axfr_ms"] / 1000,
           "diff_s": z["diff_ms"] / 1000, "repair_s": z.get("repair_ms", 0) / 1000,
           "total_s": report["total_ms"] / 1000, "transferred": z["transferred"],
           "in_sync": z.get("in_sync"), "in_sync_after": z.get("in_sync_after"),
           "missing": z.get("missing_count", len(z.get("missing", []))),
           "extra": z.get("extra_count", len(z.get("extra", []))),
           "ttl": z.get("ttl_count", len(z.get("ttl", []))), "messages_applied": z.get("messages_applied")}
    print(json.dumps(row), flush=True)
    return row


def drift(args, pg, dns, root, config, env, n, reps):
    """`--reconcile-drift P`: P % of the rows changed in the database (a
    third deleted, a third added, a third given another TTL, spread over
    the zone by id), so DNS holds P % differences; then the report under
    time (pg2dns and the baseline, `reps` each), and one `--apply` (repair
    time, UPDATE rate) followed by a check that the zone is in sync."""
    k = max(3, n * args.reconcile_drift // 100) // 3
    step = max(1, n // k)
    pg.psql(f"DELETE FROM pg2dns.rr WHERE id IN (SELECT id FROM pg2dns.rr WHERE id % {step} = 3 LIMIT {k});"
            f"UPDATE pg2dns.rr SET ttl = 600 WHERE id IN (SELECT id FROM pg2dns.rr WHERE id % {step} = 4 LIMIT {k});"
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) "
            "SELECT 'new' || g || '.example.test.', 3600, 'AAAA', '2001:db8::' || to_hex(g) "
            f"FROM generate_series(1, {k}) AS g")
    pg.psql("VACUUM ANALYZE pg2dns.rr")
    out = {"drift_records": 3 * k}
    out["pg2dns_drift"] = [pg2dns_run(args, config, env) for _ in range(reps)]
    out["baseline_drift"] = [baseline(pg, dns, root) for _ in range(reps if args.reconcile_baseline else 0)]
    # The report must be exact: k missing, k extra, k TTL differences.
    out["drift_exact"] = all(r["exit"] == 1 and r["missing"] == k and r["extra"] == k and r["ttl"] == k
                             for r in out["pg2dns_drift"])
    out["apply"] = pg2dns_run(args, config, env, ("--apply",))
    out["after_apply"] = pg2dns_run(args, config, env)
    out["apply_ok"] = out["apply"]["exit"] == 0 and out["after_apply"]["exit"] == 0
    return out


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


def run_firstload(args):
    sizes = [int(s) for s in args.firstload_rows.split(",")]
    return [firstload(args, n) for n in sizes]


def firstload(args, n):
    """`bench/bench firstload`: `pg2dns setup`'s first load of an IPAM table
    of N rows into an empty BIND zone (wall time, peak RSS), a check that
    the zone is in sync after, then 1 % of the rows changed (a third
    deleted, a third inserted, a third given another address) and
    `pg2dns reconcile --apply` of that drift (repair time, UPDATE rate,
    peak RSS), then a check again."""
    label = f"firstload-{n}"
    print(f"--- {label}", flush=True)
    root = os.path.join(args.outdir, label)
    os.makedirs(root)
    os.chmod(root, 0o755)
    res = {"label": label, "pipeline": "firstload", "server": "bind", "rows": n}
    pg = Postgres(root)
    dns = Bind(root)
    try:
        t = time.time()
        pg.psql("CREATE SCHEMA ipam;"
                "CREATE TABLE ipam.hosts (id bigint PRIMARY KEY, name text NOT NULL, address inet NOT NULL);"
                "INSERT INTO ipam.hosts "
                "SELECT g, 'h' || g || '.example.test', "
                "('10.' || (g >> 16) || '.' || ((g >> 8) & 255) || '.' || (g & 255))::inet "
                f"FROM generate_series(1, {n}) AS g")
        pg.psql("VACUUM ANALYZE ipam.hosts")
        res["db_load_s"] = round(time.time() - t, 1)
        config = os.path.join(root, "pg2dns.toml")
        with open(config, "w") as f:
            f.write("version = 1\n[database]\n"
                    f'url = "{pg.url}"\nslot = "pg2dns"\npublication = "pg2dns"\n'
                    f'[[zone]]\nname = "{ZONE}"\nprimary = "127.0.0.1:{dns.port}"\n'
                    f'tsig_key_file = "{dns.key_file}"\n'
                    '[[source]]\ntable = "ipam.hosts"\nowner_column = "name"\n'
                    'address_column = "address"\nttl = 3600\n')
        env = dict(os.environ, RUST_LOG="warn")
        os.chmod(dns.key_file, 0o600)
        res["command"] = "RUST_LOG=warn /usr/bin/time -f '%e %M' pg2dns setup -c pg2dns.toml"
        wall, rss, out, rc, err = timed([args.pg2dns, "setup", "-c", config], env=env)
        res["setup"] = {"wall_s": wall, "rss_kib": rss, "exit": rc, "stderr": err[-300:]}
        print(json.dumps(res["setup"]), flush=True)
        after = pg2dns_run(args, config, env)
        res["loaded_in_sync"] = rc == 0 and after["exit"] == 0 and after["in_sync"]
        k = max(3, n // 100) // 3
        step = max(1, n // k)
        pg.psql(f"DELETE FROM ipam.hosts WHERE id IN (SELECT id FROM ipam.hosts WHERE id % {step} = 3 LIMIT {k});"
                "UPDATE ipam.hosts SET address = ('172.16.' || ((id >> 8) & 255) || '.' || (id & 255))::inet "
                f"WHERE id IN (SELECT id FROM ipam.hosts WHERE id % {step} = 4 LIMIT {k});"
                "INSERT INTO ipam.hosts "
                "SELECT 100000000 + g, 'new' || g || '.example.test', ('2001:db8::' || to_hex(g))::inet "
                f"FROM generate_series(1, {k}) AS g")
        pg.psql("VACUUM ANALYZE ipam.hosts")
        res["drift_records"] = 3 * k
        res["apply"] = pg2dns_run(args, config, env, ("--apply",))
        res["after_apply"] = pg2dns_run(args, config, env)
        res["apply_ok"] = res["apply"]["exit"] == 0 and res["after_apply"]["exit"] == 0
    finally:
        dns.stop()
        pg.stop()
        if not args.keep:
            import shutil
            shutil.rmtree(os.path.join(root, "pg"), ignore_errors=True)
    print(json.dumps({k: v for k, v in res.items() if k not in ("apply", "after_apply")}), flush=True)
    return res


def median(values):
    values = sorted(values)
    return values[len(values) // 2] if values else None


def report(results):
    """The markdown tables of the reconcile and first-load trials."""
    return report_reconcile(results) + report_firstload(results)


def report_firstload(results):
    rows = [r for r in results if r.get("pipeline") == "firstload"]
    if not rows:
        return ""
    out = ["", "### setup's first load into an empty zone, then `reconcile --apply` of 1 % drift", "",
           "| rows | setup s | setup peak RSS MiB | in sync after | drifted | --apply s | repair s "
           "| UPDATE rate record ops/s | UPDATEs | --apply peak RSS MiB | in sync after |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, a = r.get("setup", {}), r.get("apply", {})
        # A changed address is a delete and an add.
        ops = r.get("drift_records", 0) // 3 * 4
        rate = ops / a["repair_s"] if a.get("repair_s") else 0
        out.append(
            f"| {r['rows']:,} | **{s.get('wall_s', 0):.1f}** | **{s.get('rss_kib', 0) / 1024:.1f}** "
            f"| {'yes' if r.get('loaded_in_sync') else 'NO'} | {r.get('drift_records', 0):,} "
            f"| {a.get('wall_s', 0):.2f} | {a.get('repair_s', 0):.2f} | {rate:,.0f} | {a.get('messages_applied')} "
            f"| {a.get('rss_kib', 0) / 1024:.1f} | {'yes' if r.get('apply_ok') else 'NO'} |")
    return "\n".join(out) + "\n"


def report_reconcile(results):
    rows = [r for r in results if r.get("pipeline") == "reconcile"]
    if not rows:
        return ""
    out = ["", "### reconcile, zone in sync (medians of the repetitions)", "",
           "| records | pg2dns total s | DB read s | AXFR s | diff s | peak RSS MiB | baseline total s "
           "(COPY / AXFR / to zone / compare) | baseline peak RSS MiB | ratio | in sync (both) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
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
            f"| {m('wall_s') / m('total_s', b):.2f} "
            f"| {'yes' if r.get('dns_equals_table') else 'NO'} |") if b else out.append(
            f"| {r['rows']:,} | **{m('wall_s'):.2f}** | {m('read_s'):.2f} | {m('axfr_s'):.2f} | {m('diff_s'):.2f} "
            f"| {max(x['rss_kib'] for x in p) / 1024:.1f} | - | - | - "
            f"| {'yes' if r.get('dns_equals_table') else 'NO'} |")
    drifted = [r for r in rows if r.get("pg2dns_drift")]
    if drifted:
        out += ["", "### reconcile, 1 in 100 records drifted, then `--apply` (medians of the repetitions)", "",
                "| records | drifted | pg2dns report s | peak RSS MiB | exact | baseline s | ratio | "
                "--apply s | repair s | UPDATE rate records/s | peak RSS MiB | in sync after |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in drifted:
            p, b, a = r["pg2dns_drift"], r.get("baseline_drift", []), r["apply"]
            pw = median([x["wall_s"] for x in p])
            bw = median([x["total_s"] for x in b]) if b else None
            changed = r["drift_records"] + r["drift_records"] // 3  # a TTL change is a delete and an add
            rate = changed / a["repair_s"] if a["repair_s"] else 0
            out.append(
                f"| {r['rows']:,} | {r['drift_records']:,} | **{pw:.2f}** | {max(x['rss_kib'] for x in p) / 1024:.1f} "
                f"| {'yes' if r.get('drift_exact') else 'NO'} | {f'{bw:.2f}' if bw else '-'} "
                f"| {f'{pw / bw:.2f}' if bw else '-'} | {a['wall_s']:.2f} | {a['repair_s']:.2f} | {rate:,.0f} "
                f"| {a['rss_kib'] / 1024:.1f} | {'yes' if r.get('apply_ok') else 'NO'} |")
    return "\n".join(out) + "\n"
