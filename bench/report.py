"""From the raw records of one run to the checks: medians, ratios inside the run, the one table.

A repetition during which processes not of this run used more than CLEAN_MAX % of the machine is
left out of the median when at least 2 undisturbed repetitions remain (the anchors' rule).
"""
from __future__ import annotations

import statistics as st
from collections import defaultdict

CLEAN_MAX = 10.0
MIB = 1 << 20


class Results:
    def __init__(self, records: list[dict], cold: list[dict], memory: dict | None, profile: dict | None,
                 notes: list[str], skipped: set[str]):
        self.by = defaultdict(list)
        for r in records:
            self.by[(r["target"], r["load"])].append(r)
        self.cold = cold
        self.memory = memory
        self.profile = profile
        self.notes = notes
        self.skipped = skipped
        self.checks: list[dict] = []

    # ---------------------------------------------------------------- medians

    def rows(self, t: str, load: str) -> list[dict]:
        rows = self.by.get((t, load), [])
        clean = [r for r in rows if r.get("foreign") is None or r["foreign"] < CLEAN_MAX]
        return clean if len(clean) >= 2 else rows

    def med(self, t: str, load: str, key: str) -> float | None:
        v = [r[key] for r in self.rows(t, load) if r.get(key) is not None]
        return st.median(v) if v else None

    def dirty(self) -> list[tuple[str, str]]:
        """(target, load) pairs with fewer than 2 undisturbed repetitions."""
        out = []
        for k, rows in self.by.items():
            if sum(1 for r in rows if r.get("foreign") is None or r["foreign"] < CLEAN_MAX) < 2:
                out.append(k)
        return out

    def summary(self) -> dict:
        out = {}
        for (t, load), rows in sorted(self.by.items()):
            use = self.rows(t, load)
            out.setdefault(t, {})[load] = {
                k: (round(self.med(t, load, k), 1) if self.med(t, load, k) is not None else None)
                for k in ("rps", "mbs", "p50", "p90", "p99", "front_pct", "front_us_per_req", "workers_pct",
                          "workers_us_per_req", "busy", "foreign")}
            out[t][load].update(reps=len(rows), used=len(use), errors=sum(r["errors"] for r in rows),
                                non2xx=sum(r["non2xx"] for r in rows),
                                rps_min=round(min(r["rps"] for r in use)), rps_max=round(max(r["rps"] for r in use)))
        return out

    # ---------------------------------------------------------------- checks

    def add(self, cid: str, what: str, pl, ref, value, target: str, ok, unit: str = "", note: str = "") -> None:
        self.checks.append({"id": cid, "what": what, "passenger_lite": pl, "reference": ref, "value": value,
                            "unit": unit, "target": target, "ok": ok, "note": note})

    def ratio_check(self, cid: str, what: str, a: str, b: str, load: str, key: str, at_least: float | None,
                    aim: bool = False, label: str = "") -> None:
        va, vb = self.med(a, load, key), self.med(b, load, key)
        if va is None or vb is None:
            missing = a if va is None else b
            self.add(cid, what, va, vb, None, self._target(at_least, aim), None,
                     note=self.skip_note(missing))
            return
        r = va / vb
        unit = {"rps": "req/s", "mbs": "MB/s"}[key]
        if not label:  # latencies beside the throughput (issue 2 asks for p50/p99 of both)
            label = f"p50/p99 ({load}): " + ", ".join(
                f"{t} {_ms(self.med(t, load, 'p50'))}/{_ms(self.med(t, load, 'p99'))}" for t in (a, b))
        self.add(cid, what, round(va), round(vb), round(r, 2), self._target(at_least, aim),
                 None if at_least is None else r >= at_least, unit=unit, note=label)

    @staticmethod
    def _target(at_least, aim) -> str:
        if at_least is None:
            return "report"
        return f"{'aim ' if aim else ''}>= {at_least:.1f}x"

    def skip_note(self, target: str) -> str:
        for n in self.notes:
            kind = target.split("-")[-1]
            if n.startswith(kind + ":") or n.startswith(target + ":"):
                return n.split(": ", 1)[1]
        return "not measured"

    def build(self) -> list[dict]:
        R = self.ratio_check
        R("1", "c32 req/s: passenger-lite asgi / aiohttp proxy -> uvicorn 2w", "pl-asgi", "aioproxy", "c32", "rps", 2.0)
        R("2a", "c1 req/s: passenger-lite wsgi / Passenger wsgi", "pl-wsgi", "passenger-wsgi", "c1", "rps", 1.0)
        R("2b", "c32 req/s: passenger-lite wsgi / Passenger wsgi", "pl-wsgi", "passenger-wsgi", "c32", "rps", 1.0)
        for k in ("rack", "node"):
            R("2c" if k == "rack" else "2d", f"c1 req/s: passenger-lite {k} / Passenger {k}", f"pl-{k}",
              f"passenger-{k}", "c1", "rps", 1.0, aim=True)
            R("2c" if k == "rack" else "2d", f"c32 req/s: passenger-lite {k} / Passenger {k}", f"pl-{k}",
              f"passenger-{k}", "c32", "rps", 1.0, aim=True)
        for k in ("asgi", "wsgi", "rack", "node"):
            R("2e", f"c32 req/s: passenger-lite {k} / nginx -> the same workers", f"pl-{k}", f"nginx-pl-{k}",
              "c32", "rps", 0.7 if k in ("asgi", "wsgi") else None)
        R("2f", "c32 req/s: passenger-lite asgi / nginx -> uvicorn 2w", "pl-asgi", "nginx-uvicorn", "c32", "rps", 0.5,
          aim=True)
        self._latency()
        R("4", "1 MiB bodies MB/s: passenger-lite / nginx default buffers, same workers", "pl-asgi", "nginx-pl-asgi",
          "1m", "mbs", 1.0)
        self._memory()
        self._cold()
        R("7a", "c32 req/s: with metrics_listen / without", "pl-metrics", "pl-asgi", "c32", "rps", None)
        R("7b", "static 1 MiB file MB/s: passenger-lite / nginx (sendfile)", "pl-static", "nginx-static", "static",
          "mbs", None)
        R("7c", "TLS c32 req/s: passenger-lite / nginx TLS -> same workers", "pl-tls", "nginx-tls", "tls", "rps", None)
        self._front_share()
        return self.checks

    def _latency(self) -> None:
        for k in ("asgi", "wsgi"):
            pl, direct, ngx = self.med(f"pl-{k}", "p1", "p50"), self.med(f"{k}-direct", "p1", "p50"), \
                self.med(f"nginx-pl-{k}", "p1", "p50")
            if pl is None or direct is None:
                self.add("3", f"added p50 at c1 over the same worker, {k} (probe)", None, None, None, "<= 150 us", None,
                         note="not measured")
                continue
            note = f"probe p50 {pl:.0f} us via passenger-lite, {direct:.0f} us direct"
            if ngx is not None:
                note += f"; nginx adds {ngx - direct:+.0f} us"
            self.add("3", f"added p50 at c1 over the same worker, {k} (probe)", round(pl), round(direct),
                     round(pl - direct), "<= 150 us", pl - direct <= 150, unit="us", note=note)
        pl, d, ngx = self.med("pl-asgi", "c1", "p50"), self.med("direct-uvicorn", "c1", "p50"), \
            self.med("nginx-uvicorn", "c1", "p50")
        if pl is not None and d is not None:
            note = f"wrk p50: direct uvicorn {d:.0f} us" + (f"; nginx adds {ngx - d:+.0f} us" if ngx else "")
            aio = self.med("aioproxy", "c1", "p50")
            if aio is not None:
                note += f"; aiohttp proxy adds {aio - d:+.0f} us"
            self.add("3", "added p50 at c1 over direct uvicorn TCP (wrk, anchors' way)", round(pl), round(d),
                     round(pl - d), "<= 150 us", pl - d <= 150, unit="us", note=note)

    def _memory(self) -> None:
        m = self.memory
        if not m:
            self.add("5", "front RSS, 6 apps idle", None, None, None, "<= 60 MiB", None, note="not measured")
            return
        if "error" in m:
            self.add("5", "front RSS, 6 apps idle", None, None, None, "<= 60 MiB", None, note=m["error"])
            return
        idle = m["idle_rss"] / MIB
        imports = m.get("import_rss")
        self.add("5a", f"front RSS, {m['apps']} apps configured and idle", round(idle, 1), None, round(idle, 1),
                 "<= 60 MiB", idle <= 60, unit="MiB",
                 note=f"a bare python importing passenger-lite's runtime: {imports / MIB:.1f} MiB" if imports else "")
        g = m["growth"] / MIB
        size = m["transfer_bytes"] / (1 << 30)
        up, down = m["upload"], m["download"]
        ok_io = up.get("ok") and down.get("ok")
        note = (f"upload {up.get('mbs', 0):.0f} MB/s {'ok' if up.get('ok') else 'FAILED ' + str(up.get('error', up.get('status')))}, "
                f"download {down.get('mbs', 0):.0f} MB/s {'ok' if down.get('ok') else 'FAILED ' + str(down.get('error', down.get('status')))}")
        self.add("5b", f"front RSS growth, {size:g} GiB upload + {size:g} GiB download at once", round(g, 1), None,
                 round(g, 1), "<= 50 MiB", bool(g <= 50 and ok_io), unit="MiB", note=note)

    def _cold(self) -> None:
        by = defaultdict(list)
        for c in self.cold:
            if "error" not in c:
                by[(c["name"], c["mode"])].append(c)
        errors = [c for c in self.cold if "error" in c]
        for k in ("wsgi", "asgi"):
            rows = by.get((f"pl-{k}", "start"), [])
            if rows:
                v = [c["first_200_s"] for c in rows]
                m = st.median(v)
                listen = st.median(c["listen_s"] for c in rows)
                self.add("6a", f"`passenger-lite start` -> first 200, python {k}", round(m, 3), None, round(m, 3),
                         "<= 1 s", m <= 1.0, unit="s",
                         note=f"min-max {min(v):.2f}-{max(v):.2f} s; listening after {listen:.2f} s")
        for k, ref in (("wsgi", "wsgi"), ("asgi", "wsgi"), ("rack", "rack"), ("node", "node")):
            v = [c["ondemand_first_req_ms"] for c in by.get((f"pl-{k}", "ondemand"), [])]
            w = [c["ondemand_first_req_ms"] for c in by.get((f"passenger-{ref}", "passenger"), [])]
            what = f"on-demand spawn, first request ms: passenger-lite {k} / Passenger {ref}"
            if not v or not w:
                self.add("6b", what, st.median(v) if v else None, st.median(w) if w else None, None, "<= 1.0x", None,
                         note=self.skip_note(f"pl-{k}") if not v else "Passenger's figure missing")
                continue
            a, b = st.median(v), st.median(w)
            self.add("6b", what, round(a), round(b), round(a / b, 2), "<= 1.0x", a <= b, unit="ms")
        for c in errors:
            self.notes.append(f"cold start {c['name']} ({c['mode']}, rep {c['rep']}) failed: {c['error']}")

    def _front_share(self) -> None:
        f, busy, w = self.med("pl-asgi", "c32", "front_pct"), self.med("pl-asgi", "c32", "busy"), \
            self.med("pl-asgi", "c32", "workers_pct")
        a1, a2 = self.med("aioproxy", "c32", "rps"), self.med("aioproxy2", "c32", "rps")
        if f is None:
            return
        note = f"front {f:.0f}% of a core, workers {w:.0f}%, machine busy {busy:.0f}% (of 2 cores)"
        if a1 and a2:
            note += f"; aiohttp proxy 2 procs / 1 proc = {a2 / a1:.2f}x"
        per = [(name, self.med(t, "c32", "front_us_per_req")) for name, t in (
            ("passenger-lite", "pl-asgi"), ("nginx", "nginx-pl-asgi"), ("Passenger core (wsgi)", "passenger-wsgi"),
            ("aiohttp proxy", "aioproxy"))]
        per = [f"{name} {v:.0f}" for name, v in per if v is not None]
        if per:
            note += "; proxy CPU per request at c32 (us): " + ", ".join(per)
        wa, wb = self.med("pl-asgi", "c32", "workers_us_per_req"), self.med("nginx-pl-asgi", "c32", "workers_us_per_req")
        if wa is not None and wb is not None:
            note += f"; the same 2 workers' CPU per request: {wa:.0f} us behind passenger-lite, {wb:.0f} us behind nginx"
        self.add("8", "front process CPU under c32 (passenger-lite asgi)", round(f), None, round(f), "report",
                 None, unit="% core", note=note)


# -------------------------------------------------------------------- rendering


def _ms(us: float | None) -> str:
    if us is None:
        return "-"
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} us"


def _fmt(v, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and abs(v) < 10:
        s = f"{v:.2f}"
    elif isinstance(v, (int, float)):
        s = f"{v:,.0f}"
    else:
        s = str(v)
    return s


def profile_lines(profile: dict | None) -> list[str]:
    """A few lines on where the profiled front process spends its time."""
    if not profile:
        return []
    out = []
    for kind in ("python", "native"):
        p = profile.get(kind)
        if not p:
            continue
        if "error" in p:
            out.append(f"profile ({kind}): {p['error']}")
            continue
        head = (f"profile of {profile.get('target', 'pl-asgi')} under c32 ({kind} frames, {p['samples']} busy samples, "
                f"{p['rps_while_profiled']:,} req/s while sampled): front {p['front_cpu_us_per_request']} us CPU/request "
                f"(user {p.get('user_us_per_request', '?')}, system {p.get('system_us_per_request', '?')}), "
                f"{p['involuntary_switches_per_request']} involuntary switches/request")
        out.append(head)
        out.append("  areas: " + ", ".join(f"{k} {v}%" for k, v in p["areas"][:6]))
        out.append("  hottest lines (self): " + ", ".join(f"{k} {v}%" for k, v in p["self_lines"][:6]))
    return out


def render(checks: list[dict]) -> str:
    """The table; rows for which this run measured nothing at all (--only, --skip) are left out."""
    head = ("#", "measure", "passenger-lite", "reference", "ratio / figure", "target", "")
    rows = []
    checks = [c for c in checks if not (c["value"] is None and c["passenger_lite"] is None and c["reference"] is None
                                        and c["note"] == "not measured")]
    for c in checks:
        unit = c["unit"]
        val = c["value"]
        if val is None:
            shown = "-"
        elif unit in ("req/s", "MB/s", "ms") and c["reference"] is not None:
            shown = f"{val:.2f}x"
        else:
            shown = f"{_fmt(val)} {unit}".strip()
        verdict = {True: "OK", False: "MISSED", None: ""}[c["ok"]]
        if val is None:
            verdict = "skipped"
        pl = f"{_fmt(c['passenger_lite'])} {unit}".strip() if c["passenger_lite"] is not None else "-"
        ref = f"{_fmt(c['reference'])} {unit}".strip() if c["reference"] is not None else "-"
        rows.append((c["id"], c["what"], pl, ref, shown, c["target"], verdict))
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), line]
    for r, c in zip(rows, checks):
        out.append("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip())
        if c["note"]:
            out.append(" " * (widths[0] + 2) + "  " + c["note"])
    return "\n".join(out)


if __name__ == "__main__":  # print the table of a results file again: python bench/report.py bench/results/latest.json
    import json
    import sys

    doc = json.load(open(sys.argv[1] if len(sys.argv) > 1 else "bench/results/latest.json"))
    res = Results(doc["records"], doc["cold"], doc["memory"], doc["profile"], list(doc["notes"]), set())
    print(render(res.build()))
    print("\n".join(profile_lines(doc["profile"])))
