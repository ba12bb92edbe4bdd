#!/usr/bin/env python3
"""passenger-lite's benchmark: every figure of issues 8, 2, 3, 6 and 7 in ONE run, beside nginx,
Passenger 6.0.17 (builtin engine), uvicorn alone and the straightforward aiohttp proxy, with the
same 2 workers behind each setup. Start it with `bash bench/run.sh` (it checks the tools first).

Phases: cold starts (nothing else running) -> start every setup -> interleaved repetitions of
every (target, load), each after a quiet-machine gate, disturbed ones repeated -> front-process
memory -> profile of the front process -> stop everything, prove nothing is left -> one table
on stdout, JSON in bench/results/latest.json.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cpuwatch import CpuWatch, QuietGate  # noqa: E402
from loadgen import probe, wrk  # noqa: E402
from procs import TICK, Procs, cpu_ticks  # noqa: E402
from report import CLEAN_MAX, Results, profile_lines, render  # noqa: E402
from setups import P, Env, Setups, prepare  # noqa: E402

BASE = Path(os.environ.get("BENCH_DIR", "/tmp/pl-bench"))


def options(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/run.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="development run of a few minutes: 2 s per load, 1 repetition, 256 MiB transfers, no profile")
    ap.add_argument("--dur", type=float, help="seconds per wrk run (default 5; quick 2)")
    ap.add_argument("--reps", type=int, help="interleaved repetitions (default 3; quick 1)")
    ap.add_argument("--gate", type=float, help="seconds in all to wait for a quiet machine (default 45; quick 10)")
    ap.add_argument("--retry", type=float, help="seconds for extra repetitions of disturbed runs (default 45; quick 0)")
    ap.add_argument("--cold-reps", type=int, help="cold-start repetitions (default 3; quick 1)")
    ap.add_argument("--transfer-mib", type=int, help="size of the upload and of the download (default 1024; quick 256)")
    ap.add_argument("--profile", dest="profile", action="store_true", default=None,
                    help="profile the front process under c32 with py-spy (default in a full run)")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--profile-target", default="pl-asgi", help="the passenger-lite target to profile (default pl-asgi)")
    ap.add_argument("--only", help="comma-separated target names to load-test (development; default all)")
    ap.add_argument("--skip", default="", help="comma-separated phases to skip: cold,load,memory,profile")
    ap.add_argument("--out", default=str(HERE / "results"), help="where latest.json/latest.txt go")
    a = ap.parse_args(argv)
    q = a.quick
    a.dur = a.dur or (2 if q else 5)
    a.reps = a.reps or (1 if q else 3)
    a.gate = a.gate if a.gate is not None else (10 if q else 45)
    a.retry = a.retry if a.retry is not None else (0 if q else 45)
    a.cold_reps = a.cold_reps or (1 if q else 3)
    a.transfer_mib = a.transfer_mib or (256 if q else 1024)
    if a.profile is None:
        a.profile = not q
    a.skip = set(filter(None, a.skip.split(",")))
    if a.profile is False:
        a.skip.add("profile")
    return a


def versions(py: str) -> dict:
    def out(*cmd) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    import importlib.metadata as md

    v = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "kernel": platform.release(),
         "cpus": os.cpu_count(), "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                              if line.startswith("model name")), "?"),
         "python": platform.python_version(), "nginx": out("nginx", "-v"), "wrk": out("wrk", "-v"),
         "passenger": out("passenger", "--version"), "ruby": out("ruby", "-v"), "node": out("node", "-v")}
    for p in ("passenger-lite", "aiohttp", "uvicorn", "uvloop", "httptools"):
        try:
            v[p] = md.version(p)
        except md.PackageNotFoundError:
            v[p] = "-"
    rev = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(HERE.parent), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    v["commit"] = rev.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")
    return v


def ports_free(patience: float = 10) -> None:
    """Every port the bench listens on is free (a port busy for a moment is waited for)."""
    deadline = time.monotonic() + patience
    while True:
        busy = []
        for name, port in P.items():
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no obstacle
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    busy.append(f"{port} ({name})")
        if not busy:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: ports in use: {', '.join(busy)}; the bench needs 127.0.0.1:18100-18199 "
                             "(another bench run? see `ss -ltnp`)")
        time.sleep(0.5)


class Bench:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.run = BASE / "run"
        self.records: list[dict] = []
        self.cold: list[dict] = []
        self.memory: dict | None = None
        self.profile: dict | None = None
        self.leftovers: list[str] = []
        self.t_start = time.monotonic()

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t_start:6.0f}s] {msg}", flush=True)

    # ---------------------------------------------------------------- main

    def main(self) -> int:
        a = self.a
        if self.run.exists():
            shutil.rmtree(self.run)  # only this script writes here (see the lock)
        (self.run / "logs").mkdir(parents=True)
        procs = Procs(self.run, self.run / "logs")
        py = sys.executable
        cli = [str(Path(py).parent / "passenger-lite")]
        if not os.access(cli[0], os.X_OK):
            cli = [py, "-m", "passenger_lite.manager.cli"]
        from passenger_lite.spawners.registry import default_registry

        env = Env(run=self.run, py=py, cli=cli, node=shutil.which("node") or "node",
                  types=default_registry().types(), procs=procs)
        self.env = env
        self.meta = versions(py)
        self.meta.update(dur_s=a.dur, reps=a.reps, quick=a.quick, cold_reps=a.cold_reps,
                         spawner_types=env.types)
        watch = CpuWatch(self.run)
        watch.start()
        self.watch = watch
        self.gate = QuietGate(watch, a.gate)
        setups = Setups(env, set(a.only.split(",")) if a.only else None)  # checks --only before anything starts
        try:
            prepare(env)
            if "cold" not in a.skip:
                self.cold_phase()
            if not {"load", "profile"} <= a.skip:
                self.log("starting " + ("every setup" if not a.only else "what " + a.only + " needs"))
                setups.start()
                self.setups = setups
                if "load" not in a.skip:
                    self.load_phase(setups)
            if "memory" not in a.skip:
                self.memory_phase()
            if "profile" not in a.skip:
                self.profile_phase(setups)
        finally:  # nothing here may raise before every process is stopped
            self.log("stopping everything")
            known = procs.stop_all()
            swept = procs.sweep()
            self.leftovers = procs.leftovers(known) + swept
            if self.leftovers:
                print("bench: processes that had to be killed at the end:\n  " + "\n  ".join(self.leftovers))
            watch.stop()
        return self.finish()

    # ---------------------------------------------------------------- phases

    def cold_phase(self) -> None:
        from coldstart import plan

        kinds = ["wsgi", "asgi"] + [k for k, t in (("rack", "ruby-rack"), ("node", "node")) if t in self.env.types]
        for rep in range(1, self.a.cold_reps + 1):
            self.log(f"cold starts, repetition {rep}/{self.a.cold_reps}")
            for fn, args in plan(self.env, kinds):
                self.gate.wait()
                r = fn(*args, rep)
                r["foreign"] = None
                self.cold.append(r)
                what = " ".join(f"{k} {v:.3f}" for k, v in r.items() if k.endswith(("_s", "_ms")))
                self.log(f"  {r['name']:16} {r['mode']:9} {what} {r.get('error', '')}")

    def load_phase(self, setups: Setups) -> None:
        a = self.a
        targets = setups.targets
        self.log(f"warm-up: {len(targets)} targets")
        for t in targets:
            for load in t.loads:
                if load != "p1":
                    wrk(t.url, load, 1)
                    break
        n = len(targets)
        for rep in range(1, a.reps + 1):
            self.log(f"repetition {rep}/{a.reps}")
            for k in range(n):
                t = targets[(k + (rep - 1) * 5) % n]
                for load in t.loads:
                    self.measure(t, load, rep)
        deadline = time.monotonic() + a.retry
        extra = a.reps
        while a.reps >= 2 and time.monotonic() < deadline:
            time.sleep(0.3)
            self.mark_foreign()
            dirty = Results(self.records, [], None, None, [], set()).dirty()
            if not dirty:
                break
            extra += 1
            self.log(f"extra repetition {extra} for {len(dirty)} disturbed runs")
            for name, load in dirty:
                if time.monotonic() >= deadline:
                    break
                self.measure(next(t for t in targets if t.name == name), load, extra)
        time.sleep(0.3)
        self.mark_foreign()

    def measure(self, t, load: str, rep: int) -> None:
        self.gate.wait()
        front, workers = t.pids["front"], t.pids["workers"]
        f0, w0 = cpu_ticks(front), cpu_ticks(workers)
        t0, m0 = time.time(), time.monotonic()
        try:
            # the probe gets thousands of samples in 3 s: its median needs no longer run
            r = probe(t.address, min(3.0, self.a.dur)) if load == "p1" else wrk(t.url, load, self.a.dur)
        except (RuntimeError, OSError) as e:
            self.log(f"  {t.name:16} {load:6} rep{rep} FAILED: {e}")
            self.env.notes.append(f"{t.name} {load} rep {rep} failed: {str(e)[:200]}")
            return
        el = time.monotonic() - m0
        r.update(target=t.name, load=load, rep=rep, t0=t0, t1=time.time(),
                 front_pct=100 * (cpu_ticks(front) - f0) / TICK / el if front else None,
                 workers_pct=100 * (cpu_ticks(workers) - w0) / TICK / el if workers else None)
        # CPU the proxy process(es) spent per request: comparable across targets whatever the noise
        for k in ("front", "workers"):
            pct = r[f"{k}_pct"]
            r[f"{k}_us_per_req"] = pct / 100 * 1e6 / r["rps"] if pct is not None and r["rps"] else None
        self.records.append(r)
        fr = f"front {r['front_pct']:4.0f}%" if r["front_pct"] is not None else ""
        mb = f" {r['mbs']:7.0f} MB/s" if load in ("1m", "static") else ""
        self.log(f"  {t.name:16} {load:6} rep{rep} {r['rps']:9.0f} req/s{mb}  p50 {r['p50']:6.0f}us  "
                 f"p99 {r['p99']:7.0f}us  err {r['errors'] + r['non2xx']}  {fr}")

    def mark_foreign(self) -> None:
        for r in self.records:
            if r.get("foreign") is None:
                r["foreign"] = self.watch.foreign(r["t0"], r["t1"])
                r["busy"] = self.watch.busy(r["t0"], r["t1"])
        for c in self.cold:
            if c.get("foreign") is None:
                c["foreign"] = self.watch.foreign(c["epoch0"], c["epoch1"])

    def memory_phase(self) -> None:
        from memory import measure

        self.log(f"memory: 6 apps idle, then {self.a.transfer_mib} MiB up + down at once")
        self.gate.wait()
        try:
            self.memory = measure(self.env, self.a.transfer_mib << 20)
        except (RuntimeError, OSError) as e:
            self.memory = {"error": str(e)[:500]}
        m = self.memory
        if "error" not in m:
            self.log(f"  idle RSS {m['idle_rss'] / 2**20:.1f} MiB, growth {m['growth'] / 2**20:.1f} MiB "
                     f"(upload {m['upload'].get('mbs', 0):.0f} MB/s, download {m['download'].get('mbs', 0):.0f} MB/s)")
        else:
            self.log(f"  memory phase failed: {m['error']}")

    def profile_phase(self, setups: Setups) -> None:
        from profile_front import profile

        if not shutil.which("py-spy"):
            self.env.notes.append("profile: skipped: py-spy is not installed (pip install py-spy)")
            return
        name = self.a.profile_target
        t = next((t for t in setups.targets if t.name == name), None)
        if t is None or not name.startswith("pl-") or name[3:] not in setups.pl:
            self.env.notes.append(f"profile: skipped: the run has no passenger-lite target {name}")
            return
        pid = setups.pl[name[3:]].pid
        out = {"target": name}
        for kind in ("python", "native"):
            self.log(f"profile: py-spy on {name}'s front process (pid {pid}) under c32, {kind} frames")
            self.gate.wait()
            try:
                out[kind] = profile(pid, t.url, max(8.0, self.a.dur * 2), self.run / f"profile-{kind}.txt",
                                    native=kind == "native")
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                out[kind] = {"error": str(e)[:500]}
        self.profile = out

    # ---------------------------------------------------------------- results

    def finish(self) -> int:
        self.mark_foreign()
        res = Results(self.records, self.cold, self.memory, self.profile, self.env.notes, set())
        checks = res.build()
        table = render(checks)
        out = Path(self.a.out)
        out.mkdir(parents=True, exist_ok=True)
        self.meta.update(total_s=round(time.monotonic() - self.t_start), gate_waited_s=self.gate.waited,
                         clean_max_foreign_pct=CLEAN_MAX)
        doc = {"meta": self.meta, "checks": checks, "table": table, "notes": self.env.notes,
               "targets": res.summary(),
               "descriptions": {t.name: t.desc for t in self.setups.targets} if hasattr(self, "setups") else {},
               "cold": self.cold, "memory": self.memory, "profile": self.profile, "leftovers": self.leftovers,
               "records": self.records}
        (out / "latest.json").write_text(json.dumps(doc, indent=1, default=str))
        (out / "latest.txt").write_text(table + "\n")
        for name in ("profile-python.txt", "profile-native.txt"):
            if (self.run / name).exists():
                shutil.copy(self.run / name, out / name)
        print()
        print(f"passenger-lite bench, {self.meta['date']}, commit {self.meta['commit']}, {self.a.reps} reps x "
              f"{self.a.dur:g} s, median of undisturbed reps (others' CPU < {CLEAN_MAX:.0f}%)")
        print(table)
        for line in profile_lines(self.profile):
            print(line)
        for n in self.env.notes:
            print(f"note: {n}")
        print(f"written: {out / 'latest.json'} ({self.meta['total_s']} s in all; waited {self.gate.waited:.0f} s "
              f"for a quiet machine)")
        return 1 if self.leftovers else 0


def main(argv: list[str] | None = None) -> int:
    a = options(argv)
    BASE.mkdir(parents=True, exist_ok=True)
    lock = open(BASE / "lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"bench: another bench run holds {BASE / 'lock'}; wait for it to end") from None
    ports_free()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # finally-blocks stop everything
    try:
        return Bench(a).main()
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started was stopped", file=sys.stderr)
        return 130
    except SystemExit as e:
        if e.code == 143:
            print("bench: terminated (SIGTERM); everything it started was stopped", file=sys.stderr)
        raise
    except Exception:  # noqa: BLE001 - a bench bug: show it, after the cleanup in main()
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
