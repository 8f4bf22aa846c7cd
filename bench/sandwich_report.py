#!/usr/bin/env python3
"""Helper of bench/bench_sandwich.sh: process snapshots and the report.

    sandwich_report.py snap PID             one JSON line: per-thread CPU,
                                            VmRSS/VmHWM, host CPU counters
    sandwich_report.py smaps PID            one JSON line: RSS by mapping
    sandwich_report.py report DIR           the tables, from DIR/a-*.json and
                                            DIR/b-*.json; writes DIR/results.json

A snapshot's per-thread CPU is utime+stime from /proc/PID/task/TID/stat
(clock ticks) and the run time from /proc/PID/task/TID/schedstat (ns, the
finer of the two). The main thread is TID == PID; in sandwich_server every
other thread belongs to the engine (the libwebsockets I/O thread and the
worker threads), since the app itself has only one.
"""
import json
import os
import statistics
import sys

CLK_TCK = os.sysconf("SC_CLK_TCK")


def read(path):
    with open(path) as fh:
        return fh.read()


def snap(pid):
    import time

    out = {"t": time.time(), "tasks": {}}
    base = "/proc/%d" % pid
    for tid in os.listdir(base + "/task"):
        try:
            st = read("%s/task/%s/stat" % (base, tid))
            sched = read("%s/task/%s/schedstat" % (base, tid)).split()
            wchan = read("%s/task/%s/wchan" % (base, tid)).strip()
        except OSError:
            continue
        f = st[st.rindex(")") + 2 :].split()
        # fields after the comm: state is f[0]; utime and stime are fields 14, 15
        out["tasks"][tid] = {
            "ticks": int(f[11]) + int(f[12]),
            "run_ns": int(sched[0]),
            "wchan": wchan,
        }
    for line in read(base + "/status").splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
            out[k] = int(v.split()[0])
    try:
        for line in read(base + "/smaps_rollup").splitlines():
            k, _, v = line.partition(":")
            if k in ("Pss", "Pss_Anon", "Pss_File", "Private_Dirty", "Private_Clean", "Shared_Clean"):
                out[k] = int(v.split()[0])
    except OSError:
        pass
    cpu = read("/proc/stat").splitlines()[0].split()[1:]
    vals = [int(x) for x in cpu]
    out["host_total"] = sum(vals[:8])
    out["host_idle"] = vals[3] + vals[4]
    return out


def smaps(pid):
    """RSS (kB) by what is mapped: each shared library, the executable,
    [heap], [stack], and anonymous mappings (thread stacks, malloc arenas)."""
    exe = os.path.realpath("/proc/%d/exe" % pid)
    cats = {}
    cur = None
    for line in read("/proc/%d/smaps" % pid).splitlines():
        parts = line.split()
        if not parts:
            continue
        if "-" in parts[0] and not parts[0].endswith(":"):
            path = parts[5] if len(parts) > 5 else ""
            if not path:
                cur = "[anon]"
            elif path == exe:
                cur = "[exe]"
            elif path.startswith("["):
                cur = path
            else:
                cur = os.path.basename(path)
            cats.setdefault(cur, 0)
        elif parts[0] == "Rss:" and cur is not None:
            cats[cur] += int(parts[1])
    return {k: v for k, v in cats.items() if v}


def cpu_between(a, b, pid):
    """Seconds of CPU between two snapshots: total, main thread, others."""
    tot = main = 0.0
    per = []
    for tid, tb in b["tasks"].items():
        ta = a["tasks"].get(tid, {"run_ns": 0, "ticks": 0})
        s = (tb["run_ns"] - ta["run_ns"]) / 1e9
        tot += s
        if int(tid) == pid:
            main += s
        else:
            per.append({"tid": int(tid), "s": s, "wchan": tb["wchan"]})
    ticks = sum(t["ticks"] for t in b["tasks"].values()) - sum(
        a["tasks"].get(tid, {"ticks": 0})["ticks"] for tid in b["tasks"]
    )
    host_busy = 1 - (b["host_idle"] - a["host_idle"]) / max(1, b["host_total"] - a["host_total"])
    return {
        "wall_s": b["t"] - a["t"],
        "total_s": tot,
        "stat_s": ticks / CLK_TCK,
        "main_s": main,
        "engine_s": tot - main,
        "threads": sorted(per, key=lambda x: -x["s"]),
        "host_busy": host_busy,
    }


# ------------------------------------------------------------------ report


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt_us(x):
    return "%.0f" % x if x >= 100 else "%.1f" % x


def rng(xs, f=fmt_us):
    return "%s [%s–%s]" % (f(med(xs)), f(min(xs)), f(max(xs)))


def pct(v, p):
    """Nearest-rank percentile."""
    if not v:
        return float("nan")
    v = sorted(v)
    k = -(-p * len(v) // 100)  # ceil
    return v[max(1, min(len(v), int(k))) - 1]


def jload(path):
    with open(path) as fh:
        return json.load(fh)


def load_a(rd):
    """One (a) run directory -> the record report_a reads."""
    pid = int(read(os.path.join(rd, "pid")).strip())
    j = lambda n: jload(os.path.join(rd, n))
    return {
        "kind": read(os.path.join(rd, "kind")).strip(),
        "seq": int(read(os.path.join(rd, "seq")).strip()),
        "load": j("load.json"),
        "idle": cpu_between(j("snap_idle0.json"), j("snap_idle1.json"), pid),
        "cpu": cpu_between(j("snap_load0.json"), j("snap_load1.json"), pid),
        "idle_snap": j("snap_idle1.json"),
        "after": j("snap_load1.json"),
        "smaps_idle": j("smaps_idle.json"),
        "smaps_after": j("smaps_after.json"),
    }


def report_a(d, res):
    runs = []
    for name in sorted(os.listdir(d)):
        if name.startswith("a-") and os.path.exists(os.path.join(d, name, "snap_load1.json")):
            runs.append(load_a(os.path.join(d, name)))
    if not runs:
        return
    by = {"plain": [], "engine": []}
    for r in runs:
        by[r["kind"]].append(r)
    print("\n### (a) idle engine vs migration compiled out: %d runs each, interleaved" % len(by["plain"]))
    print("order: " + ", ".join("%s" % r["kind"] for r in sorted(runs, key=lambda r: r["seq"])))
    lat = {}
    for k in by:
        g = [r["load"]["groups"]["users"] for r in by[k]]
        lat[k] = {m: [x[m] for x in g] for m in ("p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us", "frames", "late", "errors")}
    print()
    print("| run | server | frames | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | late | CPU % (of one core) | main thread % | engine threads % | VmHWM MiB | idle VmRSS MiB | host busy % |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(runs, key=lambda r: r["seq"]):
        g = r["load"]["groups"]["users"]
        c = r["cpu"]
        print("| %d | %s | %d | %s | %s | %s | %s | %s | %d | %.2f | %.2f | %.3f | %.2f | %.2f | %.0f |" % (
            r["seq"], r["kind"], g["frames"], fmt_us(g["p50_us"]), fmt_us(g["p90_us"]), fmt_us(g["p99_us"]),
            fmt_us(g["p999_us"]), fmt_us(g["max_us"]), g["late"],
            100 * c["total_s"] / c["wall_s"], 100 * c["main_s"] / c["wall_s"], 100 * c["engine_s"] / c["wall_s"],
            r["after"]["VmHWM"] / 1024, r["idle_snap"]["VmRSS"] / 1024, 100 * c["host_busy"]))
    print()
    summ = {}
    for k in by:
        cpu = [100 * r["cpu"]["total_s"] / r["cpu"]["wall_s"] for r in by[k]]
        cpu_stat = [100 * r["cpu"]["stat_s"] / r["cpu"]["wall_s"] for r in by[k]]
        eng = [100 * r["cpu"]["engine_s"] / r["cpu"]["wall_s"] for r in by[k]]
        main = [100 * r["cpu"]["main_s"] / r["cpu"]["wall_s"] for r in by[k]]
        hwm = [r["after"]["VmHWM"] / 1024 for r in by[k]]
        idle_rss = [r["idle_snap"]["VmRSS"] / 1024 for r in by[k]]
        idle_anon = [r["idle_snap"]["RssAnon"] / 1024 for r in by[k]]
        idle_file = [r["idle_snap"]["RssFile"] / 1024 for r in by[k]]
        idle_pss = [r["idle_snap"].get("Pss", 0) / 1024 for r in by[k]]
        after_anon = [r["after"]["RssAnon"] / 1024 for r in by[k]]
        after_rss = [r["after"]["VmRSS"] / 1024 for r in by[k]]
        idle_cpu = [100 * r["idle"]["total_s"] / r["idle"]["wall_s"] for r in by[k]]
        idle_eng = [100 * r["idle"]["engine_s"] / r["idle"]["wall_s"] for r in by[k]]
        loadcpu = [100 * r["load"]["load_cpu_s"] / r["load"]["duration_s"] for r in by[k]]
        summ[k] = dict(cpu=cpu, cpu_stat=cpu_stat, eng=eng, main=main, hwm=hwm, idle_rss=idle_rss,
                       idle_anon=idle_anon, idle_file=idle_file, idle_pss=idle_pss, after_anon=after_anon,
                       after_rss=after_rss,
                       idle_cpu=idle_cpu, idle_eng=idle_eng, loadcpu=loadcpu, **lat[k])
    f2 = lambda x: "%.2f" % x
    f3 = lambda x: "%.3f" % x
    print("| median [min–max] | plain | engine, idle | engine − plain |")
    print("|---|---:|---:|---:|")
    rows = [
        ("frame latency p50 (µs)", "p50_us", fmt_us),
        ("frame latency p99 (µs)", "p99_us", fmt_us),
        ("frame latency max (µs)", "max_us", fmt_us),
        ("server CPU under load, % of one core (schedstat)", "cpu", f2),
        ("server CPU under load, % of one core (/proc stat utime+stime)", "cpu_stat", f2),
        ("↳ main thread (the app)", "main", f2),
        ("↳ engine threads", "eng", f3),
        ("server CPU idle (no clients, 5 s), % of one core", "idle_cpu", f3),
        ("↳ engine threads", "idle_eng", lambda x: "%.4f" % x),
        ("VmHWM after the run (MiB)", "hwm", f2),
        ("VmRSS idle, before the load (MiB)", "idle_rss", f2),
        ("↳ RssAnon (private: heap, stacks, relocated library data)", "idle_anon", f2),
        ("↳ RssFile (library and executable pages, shareable)", "idle_file", f2),
        ("Pss idle (MiB)", "idle_pss", f2),
        ("VmRSS after the run (MiB)", "after_rss", f2),
        ("RssAnon after the run (MiB)", "after_anon", f2),
        ("load generator CPU, % of one core", "loadcpu", f2),
    ]
    for label, key, f in rows:
        p, e = summ["plain"][key], summ["engine"][key]
        print("| %s | %s | %s | %s |" % (label, rng(p, f), rng(e, f), f(med(e) - med(p))))
    res["a"] = {k: {kk: vv for kk, vv in v.items()} for k, v in summ.items()}
    # RSS by mapping, engine vs plain (median over runs, at the idle snapshot and after)
    print()
    print("RSS by mapping (kB, median over runs; libraries only the engine build maps are marked *):")
    print()
    print("| mapping | plain idle | engine idle | plain after load | engine after load |")
    print("|---|---:|---:|---:|---:|")
    keys = set()
    for r in runs:
        keys |= set(r["smaps_idle"]) | set(r["smaps_after"])
    def mkb(kind, which, k):
        return med([r[which].get(k, 0) for r in by[kind]])
    tot = {}
    rows = []
    for k in keys:
        vals = [mkb("plain", "smaps_idle", k), mkb("engine", "smaps_idle", k),
                mkb("plain", "smaps_after", k), mkb("engine", "smaps_after", k)]
        rows.append((k, vals))
    rows.sort(key=lambda x: -(x[1][1] - x[1][0]))
    plain_libs = set()
    for r in by["plain"]:
        plain_libs |= set(r["smaps_idle"])
    for k, v in rows:
        if max(v) < 8:
            continue
        mark = "" if k in plain_libs or k.startswith("[") else " *"
        print("| %s%s | %.0f | %.0f | %.0f | %.0f |" % (k, mark, *v))
    sums = [sum(v[i] for _, v in rows) for i in range(4)]
    print("| **sum** | %.0f | %.0f | %.0f | %.0f |" % tuple(sums))
    res["a_smaps"] = {k: v for k, v in rows}
    # Engine threads during the load: which, how much
    print()
    print("Engine threads (engine runs, CPU s over the run / over 5 s idle, by kernel wait channel):")
    for r in by["engine"]:
        print("- run %d: load %s; idle %s" % (
            r["seq"],
            ", ".join("%s %.2f ms" % (t["wchan"], 1000 * t["s"]) for t in r["cpu"]["threads"]),
            ", ".join("%s %.3f ms" % (t["wchan"], 1000 * t["s"]) for t in r["idle"]["threads"])))


def windows_stats(samples, lo, hi):
    v = [lat for (t, lat) in samples if lo <= t < hi]
    return v


def load_b(rd):
    """One (b) run directory -> the record report_b reads. The migration
    window is from the source's STARTED event ("migrate" line of A.log) to
    its COMMITTED event ("committed" line), both wall-clock stamps."""
    f = lambda n: os.path.join(rd, n)
    r = {
        "rep": int(read(f("rep")).strip()),
        "warmup_s": float(read(f("warmup")).strip()),
        "control_gap_s": float(read(f("gap")).strip()),
        "nice": read(f("nice")).strip() if os.path.exists(f("nice")) else "0",
        "worker_nice": int(read(f("worker_nice")).strip()) if os.path.exists(f("worker_nice")) else 0,
        "precopy_rate": int(read(f("precopy_rate")).strip()) if os.path.exists(f("precopy_rate")) else 0,
        "load": jload(f("load.json")),
        "samples": f("samples.txt"),
    }
    ev = {}
    for line in read(f("A.log")).splitlines():
        p = line.split()
        if len(p) >= 4 and p[2] in ("migrate", "committed", "aborted"):
            e = ev.setdefault(p[3], {})
            e[p[2]] = float(p[0])
            for kv in p[4:]:
                k, _, v = kv.partition("=")
                if k in ("bytes_sent", "rounds", "duration_us", "downtime_us"):
                    e[k] = int(v)
    migs = []
    for line in read(f("migrations.txt")).splitlines():
        user, rc, t0, t1, seed = line.split()
        e = ev.get(user, {})
        m = {"user": user, "rc": int(rc), "ctl_s": float(t1) - float(t0), "seed_bytes": int(seed),
             "start": e.get("migrate", float(t0)), "end": e.get("committed", e.get("aborted", float(t1)))}
        for k in ("bytes_sent", "rounds", "duration_us", "downtime_us"):
            if k in e:
                m[k] = e[k]
        migs.append(m)
    r["migrations"] = migs
    if os.path.exists(f("snapA1.json")):
        r["cpu"] = {
            x: cpu_between(jload(f("snap%s0.json" % x)), jload(f("snap%s1.json" % x)),
                           int(read(f("pid" + x)).strip()))
            for x in ("A", "B")
        }
    return r


def report_b(d, res):
    runs = []
    for name in sorted(os.listdir(d)):
        if name.startswith("b-") and os.path.exists(os.path.join(d, name, "load.json")):
            runs.append(load_b(os.path.join(d, name)))
    if not runs:
        return
    res["b"] = []
    for r in runs:
        samples = []
        with open(r["samples"]) as fh:
            for line in fh:
                t, g, idx, fid, lat = line.split()
                if g == "u":
                    samples.append((float(t), float(lat)))
        samples.sort()
        t_first = samples[0][0] + r["warmup_s"]
        t_last = samples[-1][0]
        migs = r["migrations"]
        print("\n### (b) other users' frames while one user is migrated (run %d, engine threads' nice %s, worker_nice %d, precopy_rate_limit %d)" % (r["rep"], r["nice"], r["worker_nice"], r["precopy_rate"]))
        print()
        print("| user | seeded frames.log | migratectl | bytes sent | rounds | duration (engine) | downtime | window (STARTED → COMMITTED) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for m in migs:
            print("| %s | %.1f MiB | rc %s, %.2f s | %.1f MiB | %s | %.0f ms | %.1f ms | %.0f ms |" % (
                m["user"], m["seed_bytes"] / 1048576, m["rc"], m["ctl_s"], m.get("bytes_sent", 0) / 1048576,
                m.get("rounds", "?"), m.get("duration_us", 0) / 1000, m.get("downtime_us", 0) / 1000,
                1000 * (m["end"] - m["start"])))
        mw, cw, aw = [], [], []
        rows = []
        gap = r.get("control_gap_s", 2.0)
        for m in migs:
            D = m["end"] - m["start"]
            v = windows_stats(samples, m["start"], m["end"])
            c = windows_stats(samples, m["start"] - gap - D, m["start"] - gap)
            after = windows_stats(samples, m["end"], m["end"] + 1.0)
            mw += v
            cw += c
            aw += after
            rows.append((m["user"], D, v, c))
        print()
        print("| window | frames | p50 µs | p99 µs | max µs |")
        print("|---|---:|---:|---:|---:|")
        for user, D, v, c in rows:
            print("| %s migrating (%.0f ms) | %d | %s | %s | %s |" % (user, D * 1000, len(v), fmt_us(pct(v, 50)), fmt_us(pct(v, 99)), fmt_us(max(v) if v else 0)))
            print("| same length, %.0f s before | %d | %s | %s | %s |" % (gap, len(c), fmt_us(pct(c, 50)), fmt_us(pct(c, 99)), fmt_us(max(c) if c else 0)))
        print("| **all migration windows** | %d | **%s** | **%s** | %s |" % (len(mw), fmt_us(pct(mw, 50)), fmt_us(pct(mw, 99)), fmt_us(max(mw) if mw else 0)))
        print("| **all control windows** | %d | **%s** | **%s** | %s |" % (len(cw), fmt_us(pct(cw, 50)), fmt_us(pct(cw, 99)), fmt_us(max(cw) if cw else 0)))
        print("| the 1 s after each COMMITTED (B installs, A keeps a copy) | %d | %s | %s | %s |" % (len(aw), fmt_us(pct(aw, 50)), fmt_us(pct(aw, 99)), fmt_us(max(aw) if aw else 0)))
        # Noise: every window of the median migration length that does not
        # touch a migration (±1 s) nor the warm-up, tiled over the run.
        Dm = med([m["end"] - m["start"] for m in migs])
        busy = [(m["start"] - 1.0, m["end"] + 1.0) for m in migs]
        t = t_first
        p99s, p50s = [], []
        while t + Dm <= t_last:
            if not any(t < b and t + Dm > a for a, b in busy):
                v = windows_stats(samples, t, t + Dm)
                if len(v) >= 20:
                    p99s.append(pct(v, 99))
                    p50s.append(pct(v, 50))
            t += Dm
        quiet = [lat for (tt, lat) in samples if tt >= t_first and not any(a <= tt < b for a, b in busy)]
        print()
        print("Noise: %d windows of %.0f ms away from any migration: p50 %s µs [%s–%s], p99 %s µs [%s–%s] (median [min–max] of the windows); "
              "the 90th percentile of the windows' p99 is %s µs. All frames away from migrations: p50 %s, p99 %s, n=%d." % (
                  len(p99s), Dm * 1000, fmt_us(med(p50s)), fmt_us(min(p50s)), fmt_us(max(p50s)),
                  fmt_us(med(p99s)), fmt_us(min(p99s)), fmt_us(max(p99s)), fmt_us(pct(p99s, 90)),
                  fmt_us(pct(quiet, 50)), fmt_us(pct(quiet, 99)), len(quiet)))
        mig_p99 = [pct(v, 99) for _, _, v, _ in rows]
        rank = [sum(1 for x in p99s if x < y) / max(1, len(p99s)) for y in mig_p99]
        print("Each migration window's p99 against those windows' p99s (share of quiet windows below it): " +
              ", ".join("%s %s µs → %.0f %%" % (u, fmt_us(p), 100 * q) for (u, _, _, _), p, q in zip(rows, mig_p99, rank)))
        if "cpu" in r:
            c = r["cpu"]
            print("Source A over the whole run: CPU %.1f %% of one core (main %.1f %%, engine threads %.1f %%); destination B: %.1f %% (engine threads %.1f %%); host busy %.0f %%." % (
                100 * c["A"]["total_s"] / c["A"]["wall_s"], 100 * c["A"]["main_s"] / c["A"]["wall_s"],
                100 * c["A"]["engine_s"] / c["A"]["wall_s"], 100 * c["B"]["total_s"] / c["B"]["wall_s"],
                100 * c["B"]["engine_s"] / c["B"]["wall_s"], 100 * c["A"]["host_busy"]))
        ex = r["load"]["groups"]["extra"]
        print("Migrated users (\"extra\" group): moved %d, waits %d, errors %d; others: errors %d, late %d." % (
            ex["moved"], ex["waits"], ex["errors"], r["load"]["groups"]["users"]["errors"], r["load"]["groups"]["users"]["late"]))
        res["b"].append({
            "rep": r["rep"],
            "nice": r["nice"],
            "worker_nice": r["worker_nice"],
            "precopy_rate": r["precopy_rate"],
            "migration_windows": {"n": len(mw), "p50_us": pct(mw, 50), "p99_us": pct(mw, 99), "max_us": max(mw) if mw else 0},
            "control_windows": {"n": len(cw), "p50_us": pct(cw, 50), "p99_us": pct(cw, 99), "max_us": max(cw) if cw else 0},
            "after_commit_1s": {"n": len(aw), "p50_us": pct(aw, 50), "p99_us": pct(aw, 99), "max_us": max(aw) if aw else 0},
            "quiet_window_p99s": p99s, "migration_p99s": mig_p99, "migrations": migs,
        })


def report_footprint(d, res):
    path = os.path.join(d, "footprint.jsonl")
    if not os.path.exists(path):
        return
    st = [json.loads(l) for l in open(path) if l.strip()]
    res["footprint"] = st
    print("\n### engine_footprint: an engine like the server's, by stage")
    print()
    print("| stage | VmRSS kB | RssAnon kB | RssFile kB | heap in use kB | threads | RSS change by mapping since the stage before (kB) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for x in st:
        print("| %s | %d | %d | %d | %.0f | %d | %s |" % (
            x["stage"], x["VmRSS"], x["RssAnon"], x["RssFile"], x["heap_in_use"] / 1024, x["Threads"],
            ", ".join("%s %+d" % kv for kv in x["delta"].items()) or "–"))
    idle = [x for x in st if x["stage"] == "idle"]
    if idle:
        x = idle[0]
        print()
        print("Idle %d s: %d dispatches, the engine fd readable %d times; threads: %s." % (
            x["idle_s"], x["dispatches"], x["engine_fd_wakeups"],
            ", ".join("%s %.3f ms CPU, %d wake-ups" % ("main" if t["main"] else "engine", t["cpu_ms"], t["wakeups"])
                      for t in x["threads_idle"])))


def main():
    cmd = sys.argv[1]
    if cmd == "snap":
        print(json.dumps(snap(int(sys.argv[2]))))
    elif cmd == "smaps":
        print(json.dumps(smaps(int(sys.argv[2]))))
    elif cmd == "cpu":  # cpu PID SNAP_A SNAP_B
        pid = int(sys.argv[2])
        a = json.load(open(sys.argv[3]))
        b = json.load(open(sys.argv[4]))
        print(json.dumps(cpu_between(a, b, pid)))
    elif cmd == "report":
        res = {}
        report_a(sys.argv[2], res)
        report_b(sys.argv[2], res)
        report_footprint(sys.argv[2], res)
        with open(os.path.join(sys.argv[2], "results.json"), "w") as fh:
            json.dump(res, fh, indent=1)
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
