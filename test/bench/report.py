#!/usr/bin/env python3
"""Writes BENCHMARKS.md and results.json from the bench results.

Input: the JSON lines build/bench writes (one object per measurement) and the
output of `go test -bench`. Called by test/bench/run.sh; standard library only.
"""
import argparse
import datetime
import json
import os
import platform
import re
import subprocess


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    distro = ""
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    distro = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = "%.1f GiB" % (int(line.split()[1]) / 1048576)
    except OSError:
        pass
    pkgs = {}
    for p in ("p11-kit", "softhsm2"):
        v = sh("dpkg-query", "-W", "-f=${Version}", p)
        if v:
            pkgs[p] = v
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "os": distro,
        "memory": mem,
        "packages": pkgs,
    }


GO_LINE = re.compile(r"^(Benchmark\S*)\s+(\d+)\s+([\d.]+) ns/op(?:\s+([\d.]+) B/op)?(?:\s+([\d.]+) allocs/op)?")


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def go_bench(path):
    """One row per benchmark: the median of its runs (-count), with the
    range of ns/op."""
    runs, raw = {}, ""
    try:
        with open(path) as f:
            raw = f.read()
    except OSError:
        return [], raw
    for line in raw.splitlines():
        m = GO_LINE.match(line.strip())
        if m:
            runs.setdefault(m.group(1), []).append({
                "iterations": int(m.group(2)),
                "ns_per_op": float(m.group(3)),
                "bytes_per_op": float(m.group(4)) if m.group(4) else None,
                "allocs_per_op": float(m.group(5)) if m.group(5) else None,
            })
    rows = []
    for name, rs in runs.items():
        def med(key):
            vals = [r[key] for r in rs if r[key] is not None]
            return median(vals) if vals else None
        rows.append({
            "name": name,
            "runs": len(rs),
            "iterations": int(median([r["iterations"] for r in rs])),
            "ns_per_op": med("ns_per_op"),
            "ns_per_op_min": min(r["ns_per_op"] for r in rs),
            "ns_per_op_max": max(r["ns_per_op"] for r in rs),
            "bytes_per_op": med("bytes_per_op"),
            "allocs_per_op": med("allocs_per_op"),
        })
    return rows, raw


def f(v, digits=2):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "%.*f" % (digits, v)
    return str(v)


def find(results, scenario, **kw):
    for r in results:
        if r.get("scenario") == scenario and all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def go_row(rows, members):
    """The engine benchmark of a group of `members`: BenchmarkCheck/members=N,
    BenchmarkCheckN or BenchmarkCheck_N (with the -GOMAXPROCS suffix)."""
    pat = re.compile(r"^BenchmarkCheck(?:/members=|_)?%d(?:-\d+)?$" % members)
    for r in rows:
        if pat.match(r["name"]):
            return r
    return None


def targets(results, gorows):
    out = []

    def add(name, measured, ok, note=""):
        out.append({"target": name, "measured": measured, "pass": ok, "note": note})

    for regime in ("cold", "hot"):
        r = find(results, "fanout", members=32, latency_us=1000, regime=regime)
        add("against the C fan-out, same process: 32 members, 1 ms injected, %s: libhaext p50 <= 1.10x" % regime,
            "%s ms / %s ms = %.2fx" % (f(r["p50_ms"], 3), f(r["c_fanout_p50_ms"], 3), r["libhaext_over_c_fanout"])
            if r else "not measured",
            r is not None and r["libhaext_over_c_fanout"] <= 1.10)
    s = find(results, "summary", members=32, latency_us=1000)
    v = s.get("legacy_over_libhaext") if s else None
    add("against the legacy sequential check: 32 members, 1 ms injected: legacy p50 / libhaext p50 >= 40x",
        "%s ms / %s ms = %.1fx" % (f(s.get("legacy_p50_ms"), 1), f(s.get("libhaext_p50_ms"), 3), v)
        if s else "not measured", v is not None and v >= 40)
    for name, what, most in (("idle", "libhaext.so beside the module", 2), ("idle_front", "the front module", 1)):
        i = find(results, name)
        add("idle host, 8 healthy members, %s: <= %d wakeups/s (context switches of the process)" % (what, most),
            "%s/s, CPU %s ms/s, over %s s" % (f(i["ctxsw_per_s"], 2), f(i["cpu_ms_per_s"], 3), f(i["seconds"], 0))
            if i else "not measured", i is not None and i["ctxsw_per_s"] <= most)

    d = find(results, "fault_dead", latency_us=1000)
    if d:
        add("dead member reported < 5 ms (every call after the kill)",
            "max %s ms, p99 %s ms, p50 %s ms over %d calls; %d wrong reports" % (
                f(d["max_ms"], 3), f(d["p99_ms"], 3), f(d["p50_ms"], 3), d["samples"], d["errors"]),
            d["max_ms"] < 5 and d["errors"] == 0)
    else:
        add("dead member reported < 5 ms", "not measured", False)
    h = find(results, "fault_hung_first", latency_us=1000)
    if h:
        add("hung member: first report <= statusTimeout + 20 ms",
            "%s ms (statusTimeout %s ms, +%s ms)%s" % (
                f(h["first_call_ms"], 1), f(h["timeout_ms"], 0), f(h["over_timeout_ms"], 1),
                "" if h["first_call_ok"] else "; wrong statuses"),
            h["first_call_ms"] <= h["timeout_ms"] + 20 and h["first_call_ok"])
    else:
        add("hung member: first report <= statusTimeout + 20 ms", "not measured", False)
    for lat, label in ((1000, ""), (0, " [extra: same on a lab with no injected latency]")):
        h = find(results, "fault_hung_during", latency_us=lat)
        ok = find(results, "fault_healthy", latency_us=lat)
        if h:
            add("calls during a hang (stuck call older than statusTimeout) return within 1 ms" + label,
                "max %s ms, p99 %s ms, p50 %s ms over %d calls; %d wrong reports (healthy group before: "
                "p50 %s ms)" % (
                    f(h["max_ms"], 3), f(h["p99_ms"], 3), f(h["p50_ms"], 3), h["samples"], h["errors"],
                    f(ok["p50_ms"], 3) if ok else "n/a"),
                h["max_ms"] <= 1 and h["errors"] == 0)
        elif lat == 1000:
            add("calls during a hang return within 1 ms", "not measured", False)

    g = go_row(gorows, 32)
    a = g["allocs_per_op"] if g else None
    add("engine, fake module, 32 members: <= 64 allocs per status call", "%s allocs/op" % f(a, 0),
        a is not None and a <= 64)

    one = find(results, "concurrency", callers=1)
    many = find(results, "concurrency", callers=64)
    if one and many:
        r = many["p99_ms"] / one["p99_ms"]
        add("64 concurrent callers: p99 <= 2x single-caller p99",
            "%s ms vs %s ms = %.2fx" % (f(many["p99_ms"], 3), f(one["p99_ms"], 3), r), r <= 2)
    else:
        add("64 concurrent callers: p99 <= 2x single-caller p99", "not measured", False)
    front_targets(results, add)
    startup_target(results, add)
    ha_targets(results, add)
    return out


def ha_targets(results, add):
    """The HA slot (test/bench/ha.sh)."""
    for mech in ("HMAC-SHA256", "ECDSA P-256"):
        r = find(results, "ha_overhead", mech=mech)
        add("HA slot: C_SignInit + C_Sign %s, SoftHSM2 directly, added at the median <= 300 ns" % mech,
            "%+d ns (p50 %d ns on m00 directly, %d ns on the HA slot; %d operations each, alternating batches)" % (
                r["added_p50_ns"], r["direct_p50_ns"], r["ha_p50_ns"], r["operations"]) if r else "not measured",
            r is not None and r["added_p50_ns"] <= 300)
    r = find(results, "ha_scale")
    add("HA slot: 3 members, 1 ms injected, 12 threads: throughput >= 2.7x one member's",
        "%d / %d signatures/s = %.2fx" % (r["ha_ops_s"], r["one_member_ops_s"], r["ratio"]) if r else "not measured",
        r is not None and r["ratio"] >= 2.7)
    k = find(results, "ha_failover", fault="kill")
    add("HA slot: a member killed under 8 signing threads: 0 errors, p99 of the second after <= 2x healthy p99",
        "%d errors in %d signatures (%d bad); p99 %s ms after vs %s ms healthy" % (
            k["errors"], k["ops"], k["bad"], f(k["after_p99_ms"], 2), f(k["healthy_p99_ms"], 2)) if k else
        "not measured",
        k is not None and k["errors"] == 0 and k["bad"] == 0 and k["after_p99_ms"] is not None and
        k["after_p99_ms"] <= 2 * k["healthy_p99_ms"])
    t = find(results, "ha_failover", fault="stop")
    add("HA slot: a member stopped, operation timeout 200 ms: 0 errors, max latency <= 200 ms + one operation",
        "%d errors in %d signatures; max %s ms (healthy p99 %s ms)" % (
            t["errors"], t["ops"], f(t["max_ms"], 1), f(t["healthy_p99_ms"], 2)) if t else "not measured",
        t is not None and t["errors"] == 0 and t["max_ms"] is not None and
        t["max_ms"] <= t["op_timeout_ms"] + max(t["healthy_p99_ms"] or 0, 1))


def ha_section(results):
    rows = [[r["mech"], r["operations"], r["direct_p50_ns"], r.get("front_p50_ns", "n/a"), r["ha_p50_ns"],
             "%+d" % r["added_p50_ns"], "%+d" % r["over_front_p50_ns"] if "over_front_p50_ns" in r else "n/a"]
            for r in results if r.get("scenario") == "ha_overhead"]
    sc = find(results, "ha_scale")
    fo = [r for r in results if r.get("scenario") == "ha_failover"]
    md = ["## 9. The HA slot", "",
          "`test/bench/ha.sh`. Overhead: `ha_bench.c` loads SoftHSM2 and the front (one instance of SoftHSM2) "
          "and times C_SignInit + C_Sign in alternating batches on the HA slot and on member m00's own "
          "session; the HA slot's operation goes to m00 too (one thread: the least busy member is the first). "
          "Scaling: 3 members behind p11-kit servers, 1 ms injected in each by the delay shim, 12 threads "
          "signing with HMAC-SHA256, on m00 alone and on the HA slot. Failover: `test/ha/ha_host.c storm`, "
          "8 threads signing and verifying for 10 s, a member killed or stopped (3 s) 4 s in, the operation "
          "timeout at 200 ms.", ""]
    if rows:
        md += [table(["mechanism", "operations", "m00 directly p50 ns", "m00 through the front p50 ns",
                      "HA slot p50 ns", "added over m00 directly ns", "added over m00 through the front ns"], rows), ""]
    if sc:
        md += ["Scaling: %d signatures/s on m00 alone, %d on the HA slot (%.2fx), %d threads." % (
            sc["one_member_ops_s"], sc["ha_ops_s"], sc["ratio"], sc["threads"]), ""]
    if fo:
        md += [table(["fault", "signatures", "errors", "bad", "healthy p99 ms", "p99 ms, second after", "max ms"],
                     [[r["fault"], r["ops"], r["errors"], r["bad"], f(r["healthy_p99_ms"], 2),
                       f(r["after_p99_ms"], 2), f(r["max_ms"], 1)] for r in fo]), ""]
    return md


def fanout_section(results):
    """libhaext against the C fan-out in the same process, and the idle host."""
    rows = sorted((r for r in results if r.get("scenario") == "fanout"),
                  key=lambda r: (r["latency_us"], r["members"], r["regime"]))
    md = ["## 1b. Against the C fan-out, cold and hot", "",
          "The reference is the best a C program does here: one parked pthread per member, each holding its "
          "own session, all released by one condition broadcast, each making one C_GetSessionInfo. libhaext "
          "and the fan-out run in the same process, alternating call by call; \"cold\" waits 20 ms before "
          "each call (how a periodic monitor calls), \"hot\" calls back to back.", ""]
    if rows:
        md += [table(["injected", "members", "regime", "libhaext p50 ms", "C fan-out p50 ms", "ratio",
                      "libhaext p99 ms", "C fan-out p99 ms"],
                     [["%g ms" % (r["latency_us"] / 1000), r["members"], r["regime"], f(r["p50_ms"], 3),
                       f(r["c_fanout_p50_ms"], 3), "%.2fx" % r["libhaext_over_c_fanout"], f(r["p99_ms"], 3),
                       f(r["c_fanout_p99_ms"], 3)] for r in rows]), ""]
    a, b = find(results, "stage3_session"), find(results, "stage3_token")
    if a and b:
        md += ["**Without a session.** 8 members, 1 ms injected, the same lab, one process each: stage 3 over "
               "libhaext's monitor session (C_GetSessionInfo, the default) against no session at all "
               "(`haExtMonitorSession = disabled`: C_GetTokenInfo on the member's slot).", "",
               table(["stage 3", "p50 ms", "p99 ms", "CPU ms per call (bench process)"],
                     [["C_GetSessionInfo, monitor session", f(a["p50_ms"], 3), f(a["p99_ms"], 3),
                       f(a.get("cpu_ms_per_call"), 3)],
                      ["C_GetTokenInfo, no session", f(b["p50_ms"], 3), f(b["p99_ms"], 3),
                       f(b.get("cpu_ms_per_call"), 3)]]), ""]
    for name, what in (("idle", "`libhaext.so` loaded beside the module"), ("idle_front", "the front module as its module")):
        i = find(results, name)
        if i:
            md += ["**Idle, %s.** A host with 8 healthy members and one status call behind it, then doing "
                   "nothing for %s s: %s context switches per second over all its threads (%s threads), %s ms of "
                   "CPU per second." % (what, f(i["seconds"], 0), f(i["ctxsw_per_s"], 2), i["threads"],
                                        f(i["cpu_ms_per_s"], 3))
                   + (" Measured after %s s of settling (statusTimeout + 1 s), which had %s context switches: "
                      "the status call's tail, whose waits are bounded by statusTimeout (the Go runtime may "
                      "wake once at such a wait's deadline)." % (f(i["settle_seconds"], 0), f(i["settle_ctxsw"], 0))
                      if "settle_seconds" in i else ""), ""]
    return md


FRONT = "libhaext-pkcs11"
BARE = "bare C module"
BARE_PADDED = "bare C module, 2 MB padded"


def front_targets(results, add):
    """The front module's forwarding cost (test/bench/front_bench.c)."""
    for call in ("C_GetSessionInfo", "C_Sign"):
        r = find(results, "front_forwarding", call=call, vendor="SoftHSM2", module=FRONT)
        if r:
            refs = [(name, find(results, "front_forwarding", call=call, vendor="SoftHSM2", module=name))
                    for name in (BARE, BARE_PADDED)]
            add("front module: %s on SoftHSM2, added at the median <= 50 ns" % call,
                "%+d ns (%+d ns over a bare C trampoline; %s); p50 %d ns direct, %d ns through the front" % (
                    r["added_p50_ns"], r["over_trampoline_p50_ns"],
                    ", ".join("%s %+d ns" % (n, x["added_p50_ns"]) for n, x in refs if x) or "no reference module",
                    r["direct_p50_ns"], r["front_p50_ns"]),
                r["added_p50_ns"] <= 50)
        else:
            add("front module: %s added at the median <= 50 ns" % call, "not measured", False)


def startup_target(results, add):
    """The front's start-up cost against the vendor alone (harm_host startup)."""
    r = find(results, "front_startup")
    if r:
        add("front module: process start-up cost over SoftHSM2 alone <= 0.5 ms",
            "%+.2f ms at the median (%.2f ms alone, %.2f ms through the front; %d processes each, alternating)" % (
                r["added_median_us"] / 1000, r["vendor_median_us"] / 1000, r["front_median_us"] / 1000, r["n"]),
            r["added_median_us"] <= 500)
    else:
        add("front module: process start-up cost <= 0.5 ms", "not measured", False)


def startup_section(results):
    r = find(results, "front_startup")
    if not r:
        return []
    return ["## 8. The front module's start-up cost", "",
            "`test/consumers/harm_host.c startup`: a parent forks one child after another, alternating between "
            "SoftHSM2 alone and the front over SoftHSM2; each child loads the module, calls C_GetFunctionList, "
            "C_Initialize and C_Finalize, and exits. The time is the parent's, from fork to the child's end. The "
            "front is plain C and loads libhaext.so (the Go runtime) only on the host's first CA_* call, so a "
            "process that never asks libhaext anything pays for the front's own load and the configuration "
            "file's reading, nothing more.", "",
            table(["module", "median ms", "mean ms", "processes"],
                  [["SoftHSM2 alone", "%.2f" % (r["vendor_median_us"] / 1000), "%.2f" % (r["vendor_mean_us"] / 1000),
                    str(r["n"])],
                   ["front over SoftHSM2", "%.2f" % (r["front_median_us"] / 1000),
                    "%.2f" % (r["front_mean_us"] / 1000), str(r["n"])],
                   ["added by the front", "%+.2f" % (r["added_median_us"] / 1000), "%+.2f" % (
                       (r["front_mean_us"] - r["vendor_mean_us"]) / 1000), ""]]), ""]


def front_section(results):
    rows = []
    for module, vendor in ((FRONT, "SoftHSM2"), (BARE, "SoftHSM2"), (BARE_PADDED, "SoftHSM2"), (FRONT, "null")):
        for call in ("C_GetSessionInfo", "C_Sign"):
            r = find(results, "front_forwarding", call=call, vendor=vendor, module=module)
            if r:
                rows.append([module, vendor, call, "%d / %d" % (r["direct_p50_ns"], r["direct_p99_ns"]),
                             "%d / %d" % (r["trampoline_p50_ns"], r["trampoline_p99_ns"]),
                             "%d / %d" % (r["front_p50_ns"], r["front_p99_ns"]), "%+d" % r["added_p50_ns"],
                             "%+d" % r["over_trampoline_p50_ns"],
                             "%d x %d" % (r["rounds"], r["samples"] // r["rounds"])])
    if not rows:
        return []
    return ["## 7. The front module's forwarding cost", "",
            "`test/bench/front_bench.c`: one process loads SoftHSM2 directly and a forwarding module configured "
            "with the same SoftHSM2 (one instance), and calls, on one session, through three paths: the vendor's "
            "list; a bare C trampoline in the bench (one more call frame, no bookkeeping); the module. Every call "
            "is timed alone (CLOCK_MONOTONIC, whose own cost is in every figure alike); C_Sign is HMAC-SHA256 "
            "over 32 bytes, its C_SignInit untimed. Added: the median over the rounds of each round's p50 "
            "difference.", "",
            "The modules: `libhaext-pkcs11` is the front. The two reference modules are "
            "`test/bench/bare_module.c`, the least a module in front does that looks at the vendor's result "
            "(a trampoline through its copy of the vendor's list that counts failed calls, nothing else; like "
            "the front, it has a call frame of its own, so the vendor returns to it, not to the host): built "
            "small, and built with 2 MB of data between its code and its data, as the front has (its C code and "
            "the data it reads lie 1.2 to 1.9 MB apart, the Go runtime's read-only data between them). After "
            "the vendor's work, the module's frame, code and data are reached again at a cost that grows with "
            "that distance, whatever the module does; the padded bare module shows that part alone. The null "
            "vendor (`test/bench/null_vendor.c`) answers every call at once: the front's own work, with "
            "everything in cache.", "",
            table(["module", "vendor", "call", "direct p50 / p99 ns", "bare trampoline p50 / p99 ns",
                   "module p50 / p99 ns", "added by the module ns", "over the bare trampoline ns",
                   "rounds x calls per path"], rows), ""]


def table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(meta, results, gorows, goraw, tgts, network=()):
    m = meta["machine"]
    md = ["# libhaext benchmarks", "",
          "Generated by `test/bench/run.sh`; do not edit by hand. Raw numbers: `build/bench/results.json` (written by the run, not committed).", ""]
    if meta.get("quick"):
        md += ["**Smoke run (BENCH_QUICK=1): a tenth of the samples; not a reference.**", ""]
    md += [
        "- Command: `make bench`",
        "- Date: %s (run took %s s)" % (meta["date"], meta["seconds"]),
        "- Machine: %s CPUs, %s, %s; kernel %s; %s" % (m["nproc"], m["cpu"] or "unknown CPU", m["memory"],
                                                        m["kernel"], m["os"]),
        "- Components: %s; %s" % (", ".join("%s %s" % kv for kv in sorted(m["packages"].items())),
                                  meta.get("go_version") or "go"),
        "- Lab: `test/lab/lab.sh up --mode net --timeout 3`: every member is a SoftHSM2 token served by its own "
        "`p11-kit server` over a unix socket; the vendor module is p11-kit-proxy.so. Injected latency: the "
        "member's server loads `test/shim/delayshim.c`, which sleeps that long before every call it forwards "
        "(once per round trip); 0 means no shim.",
        "- Percentiles are nearest-rank over the samples taken after a warm-up.",
        "",
        "## 1. Latency per group size and injected latency",
        "",
        "legacy: for each member in turn, C_OpenSession (read-only) + C_GetSessionInfo + C_CloseSession "
        "(3 round trips per member). libhaext: one CA_GetCurrentHAState on the group. floor: one "
        "C_GetSessionInfo round trip over a session the bench holds on member 0. Times in ms.",
        "",
    ]
    rows, cost = [], []
    lats = sorted({r["latency_us"] for r in results if r["scenario"] == "summary"})
    sizes = sorted({r["members"] for r in results if r["scenario"] == "summary"})
    for lat in lats:
        for n in sizes:
            s = find(results, "summary", members=n, latency_us=lat)
            if not s:
                continue
            leg = find(results, "legacy", members=n, latency_us=lat)
            lib = find(results, "libhaext", members=n, latency_us=lat)
            flo = find(results, "floor", members=n, latency_us=lat)
            fan = find(results, "c_fanout", members=n, latency_us=lat)
            rows.append([n, "%g ms" % (lat / 1000), f(s["legacy_p50_ms"], 2), f(s["legacy_p99_ms"], 2),
                         f(s["libhaext_p50_ms"], 3), f(s["libhaext_p99_ms"], 3),
                         "%.1fx" % s["legacy_over_libhaext"], f(s["floor_p50_ms"], 3),
                         "%.2fx" % s["libhaext_over_floor"], f(fan["p50_ms"], 3) if fan else "n/a",
                         "%d/%d/%d" % (leg["samples"], lib["samples"], flo["samples"])])
            cost.append([n, "%g ms" % (lat / 1000), f(lib.get("cpu_ms_per_call"), 3),
                         f(lib.get("machine_cpu_ms_per_call"), 3),
                         f(fan.get("cpu_ms_per_call"), 3) if fan else "n/a",
                         f(fan.get("machine_cpu_ms_per_call"), 3) if fan else "n/a",
                         f(flo.get("machine_cpu_ms_per_call"), 3), f(leg.get("machine_cpu_ms_per_call"), 3)])
    md += [table(["members", "injected", "legacy p50", "legacy p99", "libhaext p50", "libhaext p99",
                  "legacy/libhaext", "floor p50", "libhaext/floor", "C fan-out p50", "samples leg/lib/floor"],
                 rows), ""]
    md += ["C fan-out: not libhaext; the bench's own ideal parallel check in C (one thread per member, each "
           "holding a session, released together for one C_GetSessionInfo each; done when the last answers). "
           "It is a reference for what a parallel check can reach on this machine.", "",
           "CPU time per call (ms): the bench process (user+sys, p11-kit-proxy's client side included) and the "
           "whole machine (from /proc/stat: the member servers and the kernel too). A machine figure near 0 "
           "means below the 10 ms tick resolution over the run.", ""]
    md += [table(["members", "injected", "libhaext process", "libhaext machine", "C fan-out process",
                  "C fan-out machine", "floor machine", "legacy machine"], cost), ""]

    md += fanout_section(results)
    md += ["## 2. Faults", "",
           "8 members, HAMemberEndpoints configured (lab default), statusTimeout 3 s; the reference lab has "
           "1 ms injected, a second one none. Member 1's p11-kit-remote is SIGKILLed (`lab.sh kill`); then "
           "member 2's is SIGSTOPped (`lab.sh stop`, member 1 still dead); then SIGCONT. A call returns when "
           "every member has a verdict, so it can never be faster than the healthy members' round trip.", ""]
    rows = []
    for lat in sorted({r["latency_us"] for r in results if r["scenario"].startswith("fault_")}, reverse=True):
        inj = "%g ms" % (lat / 1000)
        r = find(results, "fault_healthy", latency_us=lat)
        if r:
            rows.append([inj, "healthy group (before the faults)", "all CKR_OK", f(r["p50_ms"], 3),
                         f(r["max_ms"], 3), r["samples"], r["errors"]])
        r = find(results, "fault_dead", latency_us=lat)
        if r:
            rows.append([inj, "dead member: calls after the kill (first call %s ms, %s)" % (
                f(r["first_call_ms"], 3), "correct" if r["first_call_ok"] else "not yet reported"),
                "member 1 CKR_HA_SOCKET_DOWN", f(r["p50_ms"], 3), f(r["max_ms"], 3), r["samples"], r["errors"]])
        r = find(results, "fault_hung_first", latency_us=lat)
        if r:
            rows.append([inj, "hung member: first call (statusTimeout %s ms)" % f(r["timeout_ms"], 0),
                         "member 2 CKR_HA_TIMEOUT", f(r["first_call_ms"], 1), f(r["first_call_ms"], 1), 1,
                         0 if r["first_call_ok"] else 1])
        r = find(results, "fault_hung_during", latency_us=lat)
        if r:
            rows.append([inj, "hung member: calls once the stuck call is older than statusTimeout",
                         "member 2 CKR_HA_TIMEOUT", f(r["p50_ms"], 3), f(r["max_ms"], 3), r["samples"],
                         r["errors"]])
        r = find(results, "fault_resume", latency_us=lat)
        if r:
            rows.append([inj, "resume: SIGCONT until member 2 is CKR_OK again", "member 2 CKR_OK",
                         f(r["resume_ms"], 1) if r["ok"] else "not within statusTimeout + 5 s", "", "", ""])
    md += [table(["injected", "case", "expected", "p50 ms", "max ms", "calls", "wrong reports"], rows), ""]

    md += ["## 3. Concurrency", "",
           "8 members, 1 ms injected; N caller threads call CA_GetCurrentHAState back to back.", ""]
    rows = []
    for r in sorted((r for r in results if r["scenario"] == "concurrency"), key=lambda r: r["callers"]):
        rows.append([r["callers"], f(r["seconds"], 1), "%.0f" % r["calls_per_s"], f(r["p50_ms"], 3),
                     f(r["p99_ms"], 3), f(r["max_ms"], 3), r["errors"], "%.2f" % r["cpu_util"],
                     f(r.get("machine_cores_busy"), 2)])
    md += [table(["callers", "seconds", "calls/s", "p50 ms", "p99 ms", "max ms", "wrong reports",
                  "bench process CPUs busy", "machine CPUs busy"], rows), ""]

    md += ["## 4. Resources", "", "8 members, no injected latency; VmRSS and Threads from /proc/self/status.", ""]
    r = find(results, "resources")
    if r:
        md += [table(["point", "RSS KiB", "threads"], [
            ["host loaded both libraries, no call yet", r["rss_at_load_kib"], r["threads_at_load"]],
            ["after 1,000 warm-up calls", r["rss_before_kib"], r["threads_before"]],
            ["after %s more calls" % format(r["calls"], ","), r["rss_after_kib"], r["threads_after"]],
            ["peak during the run (sampled every 10,000 calls)", r["rss_peak_kib"], r["threads_peak"]],
        ]), "", "%s calls in %s s (%s ms/call), %d wrong reports; RSS growth over the run: %+d KiB." % (
            format(r["calls"], ","), f(r["seconds"], 1), f(r["mean_ms"], 3), r["errors"],
            r["rss_after_kib"] - r["rss_before_kib"]), ""]

    md += ["## 5. Go engine benchmarks", "",
           "`go test -run='^$' -bench=. -benchmem -count=%s ./pkg/probe`: probe.Engine.Check over a fake, "
           "zero-latency module (the engine's own cost); the median of the runs, and the range of ns/op." % (
               gorows[0]["runs"] if gorows else "N"), ""]
    if gorows:
        md += [table(["benchmark", "runs", "iterations", "ns/op (median)", "ns/op range", "B/op", "allocs/op"],
                     [[g["name"], g["runs"], g["iterations"], "%.0f" % g["ns_per_op"],
                       "%.0f..%.0f" % (g["ns_per_op_min"], g["ns_per_op_max"]), f(g["bytes_per_op"], 0),
                       f(g["allocs_per_op"], 0)] for g in gorows]), ""]
    else:
        md += ["No benchmark lines; the command printed:", "", "```", goraw.strip() or "(nothing)", "```", ""]

    md += transports_section(network)
    md += front_section(results)
    md += startup_section(results)
    md += ha_section(results)

    md += ["## Targets", ""]
    md += [table(["target", "measured", "result"],
                 [[t["target"], t["measured"], "PASS" if t["pass"] else "**MISS**"] for t in tgts]), ""]

    notes = notes_for(results, gorows)
    if notes:
        md += ["## Notes", ""] + ["- " + n for n in notes] + [""]
    return "\n".join(md)


TRANSPORTS = [("net", "p11-kit, unix socket"), ("tcp", "Caml Crush, TCP")]


def transports_section(net):
    """Section 6: the sweep over p11-kit's unix sockets and Caml Crush's TCP
    (test/bench/run.sh, 4a)."""
    if not net:
        return []
    md = ["## 6. Network transports", "",
          "The sweep of section 1, 1 ms injected behind each member's server, over two transports. p11-kit: "
          "`lab.sh --mode net`, one `p11-kit server` per member over a unix socket, p11-kit-proxy.so. Caml Crush: "
          "`lab.sh --mode tcp`, one `pkcs11proxyd` on 127.0.0.1 in the lab's network namespace serving every "
          "member's token, the vendor module `libp11clienttcp.so` (one TCP connection per process). Times in ms.",
          ""]
    rows, notes = [], []
    for n in sorted({r["members"] for r in net if r["scenario"] == "summary"}):
        for key, name in TRANSPORTS:
            s = find(net, "summary", members=n, transport=key)
            fan = find(net, "c_fanout", members=n, transport=key)
            if not s:
                continue
            rows.append([name, n, f(s["floor_p50_ms"], 3), f(s["libhaext_p50_ms"], 3), f(s["libhaext_p99_ms"], 3),
                         f(fan["p50_ms"], 3) if fan else "n/a", f(s["legacy_p50_ms"], 2),
                         "%.2fx" % s["libhaext_over_c_fanout"]])
        u, t = find(net, "summary", members=n, transport="net"), find(net, "summary", members=n, transport="tcp")
        if u and t and n == 1:
            notes.append("One round trip (floor) over Caml Crush's TCP: %s ms, over p11-kit's unix socket: %s ms." % (
                f(t["floor_p50_ms"], 3), f(u["floor_p50_ms"], 3)))
        if t and n > 1:
            notes.append("%d members behind one Caml Crush connection: libhaext %s ms = %.1f round trips, the C "
                         "fan-out %.1f. Caml Crush's client holds one lock around every call, so a process's calls "
                         "to its server run one at a time, however many threads make them." % (
                             n, f(t["libhaext_p50_ms"], 3), t["libhaext_p50_ms"] / t["floor_p50_ms"],
                             find(net, "c_fanout", members=n, transport="tcp")["p50_ms"] / t["floor_p50_ms"]))
    md += [table(["transport", "members", "floor p50", "libhaext p50", "libhaext p99", "C fan-out p50",
                  "legacy p50", "libhaext/fan-out"], rows), ""]
    md += ["- " + n for n in notes] + ([""] if notes else [])
    return md


def notes_for(results, gorows):
    """Observations computed from this run's numbers."""
    notes = []
    ncpu = os.cpu_count()
    one = find(results, "concurrency", callers=1)
    many = find(results, "concurrency", callers=64)
    if one and many:
        notes.append(
            "Concurrency: 64 callers get %.0f calls/s (1 caller: %.0f), with the machine's CPUs %s busy of %s "
            "(1 caller: %s): the callers wait, the CPUs are not saturated. p99 %s ms against %s ms. The bench "
            "process makes %s context switches per call with 64 callers (%.0f per second). Every waiting "
            "caller is a C thread parked inside Go: its goroutine is locked to that thread, so each wake-up "
            "hands a Go P to that very thread." % (
                many["calls_per_s"], one["calls_per_s"], f(many.get("machine_cores_busy"), 2), ncpu,
                f(one.get("machine_cores_busy"), 2), f(many["p99_ms"], 3), f(one["p99_ms"], 3),
                f(many.get("ctxsw_per_call"), 1), (many.get("ctxsw_per_call") or 0) * many["calls_per_s"]))
    h = find(results, "fault_hung_during", latency_us=1000)
    ok = find(results, "fault_healthy", latency_us=1000)
    if h and ok and h["max_ms"] > 1:
        text = ("Hang at 1 ms injected: calls during the hang take p50 %s ms, max %s ms; the healthy group "
                "before the faults took p50 %s ms. A call also waits for the 6 healthy members' round trips "
                "(at least 1 ms each), so 'within 1 ms' cannot hold on this lab" % (
                    f(h["p50_ms"], 3), f(h["max_ms"], 3), f(ok["p50_ms"], 3)))
        if h["p50_ms"] <= ok["p50_ms"] * 1.1:
            text += "; the hung member itself adds no wait."
        else:
            text += "; and the calls during the hang are slower than healthy ones."
        notes.append(text)
    s = find(results, "summary", members=32, latency_us=1000)
    if s and s.get("c_fanout_p50_ms") and s.get("legacy_p50_ms"):
        notes.append(
            "Legacy, 32 members at 1 ms: the sequential check takes %s ms; libhaext %s ms (%.1fx), the ideal C "
            "fan-out %s ms (%.1fx). The legacy target measures the machine as much as libhaext: where even the C "
            "fan-out stays under 40x, no parallel check reaches it; libhaext is %.2fx the C fan-out here. This "
            "sweep measures libhaext and the fan-out in separate blocks of calls, a few seconds apart, and the "
            "machine drifts between them by up to 10%%; section 1b alternates them call by call." % (
                f(s["legacy_p50_ms"], 1), f(s["libhaext_p50_ms"], 3), s["legacy_over_libhaext"],
                f(s["c_fanout_p50_ms"], 3), s["legacy_p50_ms"] / s["c_fanout_p50_ms"], s["libhaext_over_c_fanout"]))
    notes.append("The bench ignores SIGPIPE (it measures time, not signal safety; test/c covers that).")
    return notes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--go-bench", required=True)
    ap.add_argument("--net-results", default="")
    ap.add_argument("--out-json", required=True)
    ap.add_argument("--out-md", required=True)
    ap.add_argument("--seconds", type=int, default=0)
    ap.add_argument("--quick", default="0")
    ap.add_argument("--go-version", default="")
    a = ap.parse_args()

    results = []
    with open(a.results) as fh:
        for line in fh:
            line = line.strip()
            if line:
                results.append(json.loads(line))
    gorows, goraw = go_bench(a.go_bench)
    network = []
    if a.net_results and os.path.exists(a.net_results):
        with open(a.net_results) as fh:
            network = [json.loads(line) for line in fh if line.strip()]
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "make bench",
        "seconds": a.seconds,
        "quick": a.quick == "1",
        "machine": machine(),
        "go_version": a.go_version,
    }
    tgts = targets(results, gorows)
    doc = {"meta": meta, "results": results, "network": network, "go_bench": gorows, "targets": tgts}
    with open(a.out_json, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    with open(a.out_md, "w") as fh:
        fh.write(markdown(meta, results, gorows, goraw, tgts, network))


if __name__ == "__main__":
    main()
