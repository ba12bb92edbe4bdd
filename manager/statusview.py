"""The human form of `passenger-lite status` (the JSON form is the control socket's answer,
documented in the README as a stable format).

    passenger-lite  pid 4242 · up 5m03s · production · 3 of 6 workers
    config  /srv/sites.yaml
    listen  http://127.0.0.1:8080

    blog  running · python-wsgi · blog.test/ · queue 0 · 1234 requests · 2 spawns, 0 crashes, 1 restart
      last restart 12:00:01 (2m03s ago): restart command
      #   PID   STATE  IN-FLIGHT  REQUESTS  UPTIME  RSS    NOTE
      3   4250  ready  0          600       2m01s   31 MiB
      4   4251  ready  1          634       2m01s   30 MiB
"""
from __future__ import annotations

import time


def duration(s: float) -> str:
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def mib(b: int | None) -> str:
    return f"{b / 1048576:.0f} MiB" if b else "-"


def plural(n: int, word: str, many: str = "") -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


def mount(app: dict) -> str:
    hosts = app.get("hosts") or []
    path = app["path"]
    if not hosts:
        return f"*{path}"
    return ", ".join(h + path for h in hosts)


def table(rows: list[tuple], indent: str = "") -> list[str]:
    """Left-aligned columns; the first row is the header."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return [(indent + "  ".join(str(c).ljust(w) for c, w in zip(r, widths))).rstrip() for r in rows]


def render_status(data: dict, now: float | None = None) -> str:
    now = time.time() if now is None else now
    out = [f"passenger-lite  pid {data['pid']} · up {duration(data['uptime_s'])} · {data['environment']} · "
           f"{data['workers']} of {data['max_pool_size']} workers",
           f"config  {data['config']}",
           f"listen  {', '.join(data['listen']) or '-'}", ""]
    for app in data["apps"]:
        counts = [plural(app.get("spawns", 0), "spawn"), plural(app.get("crashes", 0), "crash", "crashes"),
                  plural(app.get("restarts", 0), "restart")]
        out.append(f"{app['name']}  {app['state']} · {app['type']} · {mount(app)} · queue {app['queue']} · "
                   f"{plural(app['requests'], 'request')} · {', '.join(counts)}")
        lr = app.get("last_restart")
        if lr:
            at = time.strftime("%H:%M:%S", time.localtime(lr["at"]))
            out.append(f"  last restart {at} ({duration(now - lr['at'])} ago): {lr['reason']}")
        if app.get("last_error"):
            out.append(f"  last error: {app['last_error']}")
        rows = [("#", "PID", "STATE", "IN-FLIGHT", "REQUESTS", "UPTIME", "RSS", "NOTE")]
        for w in app["workers"]:
            rows.append((w["id"], w["pid"] or "-", w["state"], w["in_flight"], w["requests"],
                         duration(w["uptime_s"]), mib(w["rss_bytes"]), w.get("stop_reason") or ""))
        if len(rows) == 1:
            idle = app.get("min_processes") == 0
            out.append("  no workers" + (" (min_processes 0: one starts on the next request)" if idle else ""))
        else:
            out += table(rows, "  ")
        out.append("")
    return "\n".join(out).rstrip()
