"""The human form of `passenger-lite status` (the JSON form is the control socket's answer)."""
from __future__ import annotations

import time


def _dur(s: float) -> str:
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _mib(b: int) -> str:
    return f"{b / 1048576:.0f}M" if b else "-"


def render_status(data: dict) -> str:
    out = [f"passenger-lite pid {data['pid']}, up {_dur(data['uptime_s'])}, {data['environment']}, "
           f"{data['workers']}/{data['max_pool_size']} workers",
           f"config  {data['config']}",
           f"listen  {', '.join(data['listen'])}", ""]
    for app in data["apps"]:
        mount = ", ".join(app["hosts"]) or "*"
        out.append(f"{app['name']}  [{app['state']}]  {app['type']}  {mount}{app['path']}  "
                   f"queue {app['queue']}  requests {app['requests']}")
        lr = app.get("last_restart")
        if lr:
            out.append(f"  last restart {time.strftime('%H:%M:%S', time.localtime(lr['at']))}: {lr['reason']}")
        if app.get("last_error"):
            out.append(f"  last error: {app['last_error']}")
        rows = [("  #", "PID", "STATE", "IN-FLIGHT", "REQUESTS", "UPTIME", "RSS", "NOTE")]
        for w in app["workers"]:
            rows.append((f"  {w['id']}", str(w["pid"] or "-"), w["state"], str(w["in_flight"]), str(w["requests"]),
                         _dur(w["uptime_s"]), _mib(w["rss_bytes"]), w.get("stop_reason") or ""))
        if len(rows) == 1:
            out.append("  no workers")
        else:
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            for r in rows:
                out.append("  ".join(c.ljust(wd) for c, wd in zip(r, widths)).rstrip())
        out.append("")
    return "\n".join(out).rstrip()
