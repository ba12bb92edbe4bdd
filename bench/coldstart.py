"""Cold starts, the approach of /work/shared/anchors/coldstart.py:

  start      exec of `passenger-lite start` (min_processes 1) -> the port accepts -> the first 200
  on-demand  passenger-lite with min_processes 0: the first request has to wait for a spawn
  Passenger  `passenger start` -> first 200, then `passenger-config restart-app` and the first
             request after it (no live process: it waits for a spawn), as the anchors measure it
"""
from __future__ import annotations

import socket
import subprocess
import time

from loadgen import http_get
from plinstance import PLInstance
from setups import PASSENGER_APPS, H, P, Env, passenger_argv, passenger_env, pl_app, pl_site


def _wait_port(port: int, svc, deadline: float) -> None:
    while True:
        try:
            socket.create_connection((H, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or svc.popen.poll() is not None:
                raise RuntimeError(f"nothing listens on {port} (exit status {svc.popen.poll()})")
            time.sleep(0.003)


def _first_200(port: int, deadline: float) -> None:
    while True:
        try:
            if http_get(f"{H}:{port}", timeout=60)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no 200 from {port}")
        time.sleep(0.003)


def _wait_control(inst: PLInstance, deadline: float) -> None:
    while True:
        try:
            inst.status()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("the control socket never answered") from None
            time.sleep(0.02)


def _timed_get(port: int) -> float:
    t = time.monotonic()
    st, _ = http_get(f"{H}:{port}", timeout=60)
    if st != 200:
        raise RuntimeError(f"status {st} from {port}")
    return (time.monotonic() - t) * 1000


def pl_cold(env: Env, kind: str, mode: str, rep: int) -> dict:
    """mode "start": exec -> first 200 with min_processes 1; "ondemand": min_processes 0."""
    port = P["cold-pl"]
    app = pl_app(env, kind, n=1, min_processes=0 if mode == "ondemand" else 1)
    inst = PLInstance(f"cold-pl-{kind}-{mode}-{rep}", env.run / "cold" / f"{kind}-{mode}-{rep}",
                      pl_site([f"{H}:{port}"], [app]))
    res = {"name": f"pl-{kind}", "mode": mode, "rep": rep, "epoch0": time.time()}
    t0 = time.monotonic()
    svc = inst.start(env.procs, env.cli)
    try:
        _wait_port(port, svc, t0 + 30)
        res["listen_s"] = time.monotonic() - t0
        if mode == "start":
            _first_200(port, t0 + 20)
            res["first_200_s"] = time.monotonic() - t0
            res["next_req_ms"] = _timed_get(port)
        else:
            _wait_control(inst, t0 + 30)  # start-up is over; with min_processes 0 nothing spawns
            time.sleep(0.3)
            res["ondemand_first_req_ms"] = _timed_get(port)
            res["next_req_ms"] = _timed_get(port)
    except (RuntimeError, OSError) as e:
        res["error"] = f"{e}; log: {inst.log.read_text(errors='replace')[-300:]}"
    finally:
        env.procs.stop(svc)
        res["epoch1"] = time.time()
    return res


def passenger_cold(env: Env, kind: str, rep: int) -> dict:
    port = P["cold-passenger"]
    tag = f"cold-{kind}-{rep}"
    res = {"name": f"passenger-{kind}", "mode": "passenger", "rep": rep, "epoch0": time.time()}
    t0 = time.monotonic()
    svc = env.procs.start(f"passenger-{tag}", passenger_argv(env, port, env.run / "instreg-cold", tag),
                          cwd=env.apps / PASSENGER_APPS[kind],
                          env=passenger_env(env, env.run / "tmp/cold", env.run / "instreg-cold"))
    svc.pid_files.append(env.run / f"passenger-{tag}.pid")
    try:
        _wait_port(port, svc, t0 + 60)
        res["listen_s"] = time.monotonic() - t0
        _first_200(port, t0 + 60)
        res["first_200_s"] = time.monotonic() - t0
        time.sleep(1.0)  # let --min-instances 2 spawn the second process
        subprocess.run(["passenger-config", "restart-app", str(env.apps / PASSENGER_APPS[kind])], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=passenger_env(env, env.run / "tmp/cold", env.run / "instreg-cold"))
        res["ondemand_first_req_ms"] = _timed_get(port)
        res["next_req_ms"] = _timed_get(port)
        time.sleep(0.6)  # let the second process finish spawning before the stop (a shutdown race)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        res["error"] = str(e)
    finally:
        svc.remember()
        env.procs.stop(svc)
        res["epoch1"] = time.time()
    return res


def plan(env: Env, kinds: list[str]) -> list[tuple]:
    """One repetition's measurements, as (function, args)."""
    out = [(pl_cold, (env, k, "start")) for k in ("wsgi", "asgi")]
    out += [(pl_cold, (env, k, "ondemand")) for k in kinds]
    out += [(passenger_cold, (env, k)) for k in PASSENGER_APPS]
    return out

