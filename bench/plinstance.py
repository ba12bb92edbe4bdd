"""One `passenger-lite start` under the bench: its config, its control socket, its workers.

The worker sockets are read from each worker's environment (PASSENGER_LITE_SOCKET, set by
spawners/base.common_env) so nginx and the latency probe can talk to the very same workers.
"""
from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

import psutil
import yaml

from passenger_lite.manager.unixhttp import UnixHTTPConnection
from procs import Procs, Service, children_map, descendants


class PLInstance:
    def __init__(self, name: str, folder: Path, config: dict):
        self.name = name
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.config_path = folder / "sites.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.config = config
        self.service: Service | None = None

    def start(self, procs: Procs, cli: list[str]) -> Service:
        self.service = procs.start(self.name, cli + ["start", "--config", str(self.config_path)], cwd=self.folder)
        self.log = procs.log_dir / f"{self.name}.log"
        return self.service

    @property
    def pid(self) -> int:
        return self.service.pid

    def control_path(self) -> str:
        from passenger_lite.manager.runtimedir import control_socket

        return str(control_socket(self.config_path))

    def status(self, timeout: float = 5) -> dict:
        c = UnixHTTPConnection(self.control_path(), timeout)
        try:
            c.request("GET", "/status")
            r = c.getresponse()
            return json.loads(r.read())
        finally:
            c.close()

    def wait_ready(self, timeout: float = 60) -> dict:
        """Until every app has min_processes ready workers; raises with the log tail if not."""
        deadline = time.monotonic() + timeout
        why = "control socket never answered"
        while time.monotonic() < deadline:
            if self.service.popen.poll() is not None:
                break
            try:
                st = self.status()
            except (OSError, ValueError, http.client.HTTPException):
                time.sleep(0.1)
                continue
            short = [(a["name"], sum(w["state"] == "ready" for w in a["workers"]), a["min_processes"])
                     for a in st["apps"]]
            short = [s for s in short if s[1] < s[2]]
            if not short:
                return st
            why = ", ".join(f"{n}: {r}/{m} workers ready" for n, r, m in short)
            time.sleep(0.1)
        tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
        raise RuntimeError(f"passenger-lite {self.name} not ready ({why}); log tail:\n{tail}")

    def worker_pids(self, app: str | None = None) -> list[int]:
        st = self.status()
        return [w["pid"] for a in st["apps"] if app in (None, a["name"]) for w in a["workers"]
                if w["state"] in ("ready", "busy") and w["pid"]]

    def worker_tree(self) -> list[int]:
        """Every worker process and its children (puma, node children): for CPU accounting."""
        kids = children_map()
        out = []
        for p in self.worker_pids():
            out.append(p)
            out += descendants(p, kids)
        return out

    def worker_sockets(self, app: str) -> list[str]:
        out = []
        for pid in self.worker_pids(app):
            env = _environ(pid)
            if env.get("PASSENGER_LITE_SOCKET"):
                out.append("unix:" + env["PASSENGER_LITE_SOCKET"])
            elif env.get("PORT"):
                out.append("127.0.0.1:" + env["PORT"])
            else:  # the process title overwrote the environment (puma): ask the kernel what it listens on
                out += [f"unix:{p}" for p in _unix_listening(pid)]
        if not out:
            raise RuntimeError(f"{self.name}: no socket found for the workers of {app}")
        return out


def _unix_listening(pid: int) -> list[str]:
    paths = set()
    try:
        proc = psutil.Process(pid)
        for p in [proc] + proc.children(recursive=True):
            paths.update(c.laddr for c in p.net_connections(kind="unix") if isinstance(c.laddr, str) and c.laddr)
    except psutil.Error:
        pass
    return sorted(paths)


def _environ(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            out[k.decode(errors="replace")] = v.decode(errors="replace")
    return out
