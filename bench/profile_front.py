"""Where the front process spends its time under c32 load: py-spy samples it (`record --format raw`,
collapsed stacks) while wrk runs, and the stacks are summed per function (self and inclusive) and
per area (front = client side, forward = worker side, event loop, parser, ...).
"""
from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from pathlib import Path

from loadgen import wrk
from procs import TICK, cpu_split, cpu_ticks

FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
AREAS = [  # first match wins, tested against "file function" (py-spy names files relative to sys.path)
    ("front.py", "proxy: client side (front.py)"),
    ("forward.py", "proxy: the exchange (forward.py)"),
    ("upstream.py", "proxy: worker side (upstream.py)"),
    ("reply.py", "proxy: responses (reply.py)"),
    ("headers.py", "proxy: headers.py"),
    ("router.py", "proxy: router.py"),
    ("static.py", "proxy: static files (static.py)"),
    ("server.py", "proxy: server.py"),
    ("pool.py", "pool checkout/release (pool.py)"),
    ("aiohttp", "aiohttp (parser, streams)"),
    ("httptools", "httptools"),
    ("runners.py Runner.run", "event loop + syscalls below Python (uvloop, C)"),
    ("uvloop", "event loop (uvloop)"),
    ("asyncio", "event loop (asyncio)"),
]


def area(file: str, fn: str) -> str:
    key = f"{file} {fn}"
    for needle, name in AREAS:
        if needle in key:
            return name
    return "other: " + (file.rsplit("/", 1)[-1] or fn)


def parse(raw: str) -> list[tuple[list[tuple[str, str]], int]]:
    out = []
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = []
        for f in stack.split(";"):
            m = FRAME.match(f.strip())
            frames.append((m.group("fn"), m.group("file"), m.group("line") or "") if m else (f.strip(), "", ""))
        out.append((frames, int(n)))
    return out


IDLE_LEAVES = ("epoll_wait", "epoll_pwait", "epoll_pwait2")  # native mode: the loop waiting for events


def summarize(raw: str, top: int = 15) -> dict:
    """Shares of the samples in which the process was busy (native idle samples left out)."""
    stacks = parse(raw)
    idle = sum(n for frames, n in stacks if frames[-1][0] in IDLE_LEAVES)
    stacks = [(frames, n) for frames, n in stacks if frames[-1][0] not in IDLE_LEAVES]
    total = sum(n for _, n in stacks) or 1
    self_fn: Counter = Counter()
    self_line: Counter = Counter()
    incl_fn: Counter = Counter()
    by_area: Counter = Counter()
    for frames, n in stacks:
        fn, file, line = frames[-1]
        self_fn[f"{fn} ({file})"] += n
        self_line[f"{fn} ({file}:{line})"] += n
        by_area[area(file, fn)] += n
        for name in {f"{f} ({fi})" for f, fi, _ in frames}:
            incl_fn[name] += n

    def pct(c: Counter) -> list[list]:
        return [[k, round(100 * v / total, 1)] for k, v in c.most_common(top)]

    return {"samples": total, "idle_samples_left_out": idle, "areas": pct(by_area), "self": pct(self_fn), "self_lines": pct(self_line),
            "inclusive": pct(incl_fn)}


def _switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of every thread of the process so far."""
    out = [0, 0]
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches"):
                out[0] = int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                out[1] = int(line.split()[1])
    return out[0], out[1]


def profile(front_pid: int, url: str, dur: float, out: Path, native: bool = False) -> dict:
    """wrk c32 for `dur` s against `url` while py-spy records `front_pid` for the middle of it."""
    rec = max(2.0, dur - 2)
    # Python frames: sampled without stopping the process; native frames need it stopped per sample
    argv = ["py-spy", "record", "--pid", str(front_pid), "--duration", f"{rec:g}", "--format", "raw",
            "--output", str(out)] + (["--native", "--rate", "100"] if native else ["--nonblocking", "--rate", "200"])
    spy = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(0.5)
    t0, c0, x0, s0 = time.monotonic(), cpu_ticks([front_pid]), _switches(front_pid), cpu_split(front_pid)
    result = wrk(url, "c32", dur)
    front_pct = 100 * (cpu_ticks([front_pid]) - c0) / TICK / (time.monotonic() - t0)
    x1, s1 = _switches(front_pid), cpu_split(front_pid)
    msg = spy.communicate(timeout=dur + 30)[0].decode(errors="replace")
    if spy.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed (exit {spy.returncode}): {msg[-600:]}")
    summary = summarize(out.read_text())
    n = max(1, result["requests"])
    summary.update(rps_while_profiled=round(result["rps"]), front_cpu_pct=round(front_pct), native=native,
                   raw_file=str(out), front_cpu_us_per_request=round(1e6 * front_pct / 100 / max(1, result["rps"]), 1),
                   user_us_per_request=round(1e6 * (s1[0] - s0[0]) / TICK / n, 1),
                   system_us_per_request=round(1e6 * (s1[1] - s0[1]) / TICK / n, 1),
                   voluntary_switches_per_request=round((x1[0] - x0[0]) / n, 2),
                   involuntary_switches_per_request=round((x1[1] - x0[1]) / n, 3))
    return summary
