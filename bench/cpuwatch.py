"""How much of the machine's CPU goes to work that is not this bench's (other engineers' tests),
so disturbed measurements can be waited out, flagged and repeated.

The approach of /work/shared/anchors/cpusampler.py, as a thread: every 0.25 s it reads the machine's
busy jiffies and those of "our" processes: descendants of the bench, processes whose command line
names the run folder, processes named by *.pid files under it (daemons: Passenger's watchdog), and
their descendants. foreign = busy - ours, as a share of the whole machine (all cores).
"""
from __future__ import annotations

import bisect
import glob
import os
import threading
import time
from pathlib import Path


def _machine() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    return sum(v), v[0] + v[1] + v[2] + v[5] + v[6]


class CpuWatch(threading.Thread):
    def __init__(self, run_dir: Path, interval: float = 0.25):
        super().__init__(daemon=True, name="cpuwatch")
        self.folder = str(run_dir)
        self.interval = interval
        self.root = os.getpid()
        self.times: list[float] = []
        self.samples: list[tuple[int, int, int]] = []  # (total, busy, ours) jiffies
        self._halt = threading.Event()

    def _ours(self) -> int:
        procs = {}
        marker = self.folder.encode()
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    named = marker in f.read()
            except (OSError, IndexError):
                continue
            procs[int(d)] = (int(rest[1]), sum(int(x) for x in rest[11:15]), named)
        roots = {self.root} | {p for p, v in procs.items() if v[2]}
        for pf in glob.glob(os.path.join(self.folder, "**", "*.pid"), recursive=True):
            try:
                with open(pf) as f:
                    roots.add(int(f.read().strip()))
            except (OSError, ValueError):
                pass
        kids: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in procs.items():
            kids.setdefault(ppid, []).append(pid)
        seen: set[int] = set()
        todo = [r for r in roots if r in procs]
        while todo:
            p = todo.pop()
            if p not in seen:
                seen.add(p)
                todo.extend(kids.get(p, []))
        return sum(procs[p][1] for p in seen)

    def run(self) -> None:  # noqa: D102 - threading.Thread
        while not self._halt.is_set():
            total, busy = _machine()
            ours = self._ours()
            self.times.append(time.time())
            self.samples.append((total, busy, ours))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=2)

    def _span(self, t0: float, t1: float):
        """The first and last samples covering [t0, t1], or None."""
        i = bisect.bisect_left(self.times, t0 - self.interval / 2)
        j = bisect.bisect_right(self.times, t1 + self.interval / 2) - 1
        if j - i < 1 or self.samples[j][0] <= self.samples[i][0]:
            return None
        return self.samples[i], self.samples[j]

    def foreign(self, t0: float, t1: float) -> float | None:
        """% of the machine's CPU used by others during [t0, t1] (None: too few samples)."""
        span = self._span(t0, t1)
        if span is None:
            return None
        a, b = span
        return max(0.0, 100.0 * ((b[1] - a[1]) - (b[2] - a[2])) / (b[0] - a[0]))

    def busy(self, t0: float, t1: float) -> float | None:
        """% of the machine's CPU busy (anyone) during [t0, t1]."""
        span = self._span(t0, t1)
        if span is None:
            return None
        a, b = span
        return 100.0 * (b[1] - a[1]) / (b[0] - a[0])


class QuietGate:
    """Before each measurement: wait until others use < `threshold` % of the machine, within a
    total budget of seconds for the whole run (the anchors' quiet_gate)."""

    def __init__(self, watch: CpuWatch, budget_s: float, threshold: float = 5.0):
        self.watch = watch
        self.left = budget_s
        self.threshold = threshold
        self.waited = 0.0

    def wait(self) -> None:
        while self.left > 0:
            now = time.time()
            f = self.watch.foreign(now - 0.6, now)
            if f is not None and f < self.threshold:
                return
            time.sleep(0.5)
            self.left -= 0.5
            self.waited += 0.5
