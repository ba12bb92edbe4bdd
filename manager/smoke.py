"""`passenger-lite smoke`'s runner: boot every app, send its smoke requests, collect the results.

It starts the whole manager in-process, as `start` would (on the address manager/cli.py gives:
an ephemeral port unless `--listen` says otherwise), waits for every app's boot to be over
(AppPool.boot_state, bounded by --timeout), sends each app's `smoke:` requests (default: one GET
of its mount path, expecting a status below 500) and stops everything. The results render as a
table (render_table) and as JUnit XML (junit_xml); cli.py prints them, writes the file and
exits 0 only if all passed (1 if not, 2 for a config or usage error). The manager's usual stop
path (proxy, pools, watchdog) runs whatever fails, Ctrl-C included, so no process is left behind.
"""
from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
import xml.etree.ElementTree as ET
from collections import defaultdict, deque
from dataclasses import dataclass, field

from .config import SmokeRequest
from .output import Printer
from .statusview import table

TAIL = 15
KEPT = 40  # lines kept per app: a Python traceback is shown from its first line when it fits
GREEN, RED, RESET = "\x1b[32m", "\x1b[31m", "\x1b[0m"


@dataclass
class Result:
    app: str
    request: str              # "boot", or "GET blog.test/posts"
    status: int | None = None
    seconds: float = 0.0
    ok: bool = False
    message: str = ""         # "ok", or what went wrong
    tail: list[str] = field(default_factory=list)
    skipped: bool = False


class TailPrinter(Printer):
    """Keeps the last lines each app's workers wrote to stderr (for failures); echoes every
    worker line only with --verbose."""

    def __init__(self, echo: bool):
        super().__init__(sys.stderr)
        self.echo = echo
        self.err: dict[str, deque] = defaultdict(lambda: deque(maxlen=KEPT))
        self.out: dict[str, deque] = defaultdict(lambda: deque(maxlen=KEPT))

    def worker_line(self, worker, text: str, kind: str) -> None:
        (self.err if kind == "err" else self.out)[worker.app].append(text)
        if self.echo:
            super().worker_line(worker, text, kind)

    def tail(self, app: str, fallback: str = "") -> list[str]:
        lines = list(self.err.get(app) or ())
        if not lines and fallback:
            lines = fallback.splitlines()
        return _last_part(lines or list(self.out.get(app) or ()))


def _last_part(lines: list[str]) -> list[str]:
    """The last TAIL lines, or the last traceback whole (from its `Traceback` line)."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if starts and len(lines) - starts[-1] <= KEPT:
        return lines[starts[-1]:]
    return lines[-TAIL:]


def request_host(app, smoke: SmokeRequest) -> str:
    if smoke.host:
        return smoke.host
    if app.hosts:
        h = app.hosts[0]
        return "smoke." + h[2:] if h.startswith("*.") else h
    return "localhost"


def describe(app, smoke: SmokeRequest) -> str:
    host = smoke.host or (app.hosts[0] if app.hosts else "")
    return f"{smoke.method.upper()} {host}{smoke.path or app.path}"


def check(smoke: SmokeRequest, status: int, body: bytes) -> str:
    """'' when the response is what the smoke request expects, else why not."""
    if smoke.status is not None and status != smoke.status:
        return f"expected status {smoke.status}, got {status}"
    if smoke.status is None and status >= 500:
        return f"status {status} (expected below 500)"
    if smoke.contains is not None and smoke.contains not in body.decode("utf-8", "replace"):
        return f"the body does not contain {smoke.contains!r}"
    return ""


class Smoke:
    """Runs inside the Runtime as its start-up step (Runtime.startup_display)."""

    def __init__(self, timeout: float, printer: TailPrinter):
        self.timeout = timeout
        self.printer = printer
        self.results: list[Result] = []
        self.interrupted = False
        self.started = time.monotonic()
        self.seconds = 0.0                 # the whole run, once it is over
        self._abort: asyncio.Event | None = None

    async def run(self, runtime) -> None:
        loop = asyncio.get_running_loop()
        self._abort = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):  # replaces the runtime's handlers (it removes them at stop)
            loop.add_signal_handler(sig, self._interrupt)
        try:
            await runtime.poolset.start()
            booted = await self._boot(runtime)
            for app in runtime.site.apps:
                if self.interrupted:
                    break
                if booted.get(app.name):
                    await self._requests(runtime, app)
                else:
                    for s in app.smoke or [SmokeRequest()]:
                        self.results.append(Result(app.name, describe(app, s), message="skipped: the app did not boot",
                                                   skipped=True))
        finally:
            order = {a.name: i for i, a in enumerate(runtime.site.apps)}
            self.results.sort(key=lambda r: order.get(r.app, len(order)))  # per app: boot, then its requests
            runtime.commands.put_nowait(("stop", None))

    def _interrupt(self) -> None:
        self.interrupted = True
        self._abort.set()

    async def _boot(self, runtime) -> dict[str, bool]:
        """Wait until each app's boot is over (AppPool.boot_state: up, or a start failed), or
        --timeout."""
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        pools = runtime.poolset.pools
        done: dict[str, bool] = {}
        while True:
            now = time.monotonic()
            for name, pool in pools.items():
                if name in done:
                    continue
                b = pool.boot_state()
                if b.state == "up":
                    done[name] = True
                    if b.ready:
                        first = min(w.ready_mono for w in pool.ready)
                        self.results.append(Result(name, "boot", seconds=first - t0, ok=True, message="ok"))
                    else:
                        self.results.append(Result(name, "boot", ok=True, message="ok (min_processes 0: boots on "
                                                                                  "the first request)"))
                elif b.state == "failed":
                    done[name] = False
                    self.results.append(Result(name, "boot", seconds=now - t0, message=f"failed: {b.last_error}",
                                               tail=self.printer.tail(name, pool.last_failure.output)))
                elif now > deadline:
                    done[name] = False
                    self.results.append(Result(name, "boot", seconds=now - t0,
                                               message=f"not ready within {self.timeout:g} s (--timeout)",
                                               tail=self.printer.tail(name)))
            if len(done) == len(pools) or self.interrupted:
                return done
            await self._until_booted([p for n, p in pools.items() if n not in done], deadline - now)

    async def _until_booted(self, pools: list, timeout: float) -> None:
        """Until one of `pools` is booted (AppPool.booted), an interrupt, or `timeout`."""
        if any(p.booted.is_set() for p in pools):  # its boot was over but it is booting again: look soon
            timeout = min(timeout, 0.05)
        waits = [asyncio.ensure_future(e.wait()) for e in (self._abort, *(p.booted for p in pools))]
        try:
            await asyncio.wait(waits, timeout=max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _requests(self, runtime, app) -> None:
        import aiohttp

        lst = runtime.proxy.listeners[0]
        addr = lst.address
        if addr.kind == "unix":
            connector = aiohttp.UnixConnector(path=addr.path)
            base = "http://localhost"
        else:
            connector = aiohttp.TCPConnector(ssl=False)
            host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(addr.host, addr.host)
            base = f"{lst.scheme}://{'[' + host + ']' if ':' in host else host}:{lst.port}"
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True) as http:
            for s in app.smoke or [SmokeRequest()]:
                if self.interrupted:
                    return
                r = Result(app.name, describe(app, s))
                t0 = time.monotonic()
                try:
                    async with http.request(s.method.upper(), base + (s.path or app.path), allow_redirects=False,
                                            headers={"Host": request_host(app, s),
                                                     "User-Agent": "passenger-lite-smoke"}) as resp:
                        body = await resp.read()
                    r.status = resp.status
                    problem = check(s, resp.status, body)
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    problem = f"no response: {type(e).__name__}: {e}" if str(e) else f"no response: {type(e).__name__}"
                r.seconds = time.monotonic() - t0
                r.ok = not problem
                r.message = problem or "ok"
                if not r.ok:
                    pool = runtime.poolset.pools.get(app.name)
                    f = pool.last_failure if pool is not None else None
                    r.tail = self.printer.tail(app.name, f.output if f else "")
                self.results.append(r)


# ---------------------------------------------------------------------------- output


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def render_table(results: list[Result], colour: bool = False) -> str:
    rows = [("APP", "REQUEST", "STATUS", "TIME", "RESULT")]
    tails: dict[int, list[str]] = {}
    for r in results:
        word = "PASS" if r.ok else ("SKIP" if r.skipped else "FAIL")
        if colour:
            word = f"{GREEN if r.ok else RED}{word}{RESET}"
        detail = "" if r.message == "ok" else f"  {r.message}"
        rows.append((r.app, r.request, r.status if r.status is not None else "-",
                     ms(r.seconds) if r.seconds else "-", word + detail))
        if r.tail and not r.ok:
            tails[len(rows) - 1] = r.tail
    lines = []
    for i, line in enumerate(table(rows)):
        lines.append(line)
        if i in tails:
            lines.append(f"    last lines of {rows[i][0]}'s stderr:")
            lines += [f"    | {t}" for t in tails[i]]
    passed = sum(r.ok for r in results)
    failed = sum(not r.ok and not r.skipped for r in results)
    skipped = sum(r.skipped for r in results)
    lines.append("")
    lines.append(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return "\n".join(lines)


def junit_xml(results: list[Result], total_seconds: float) -> bytes:
    """JUnit XML: one <testsuite> per app, one <testcase> per step (boot, then each request)."""
    root = ET.Element("testsuites", name="passenger-lite smoke", tests=str(len(results)),
                      failures=str(sum(not r.ok and not r.skipped for r in results)), errors="0",
                      skipped=str(sum(r.skipped for r in results)), time=f"{total_seconds:.3f}")
    by_app: dict[str, list[Result]] = {}
    for r in results:
        by_app.setdefault(r.app, []).append(r)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    for app, rs in by_app.items():
        suite = ET.SubElement(root, "testsuite", name=app, tests=str(len(rs)),
                              failures=str(sum(not r.ok and not r.skipped for r in rs)), errors="0",
                              skipped=str(sum(r.skipped for r in rs)), time=f"{sum(r.seconds for r in rs):.3f}",
                              timestamp=stamp, hostname=socket.gethostname())
        for r in rs:
            case = ET.SubElement(suite, "testcase", classname=f"smoke.{app}", name=r.request, time=f"{r.seconds:.3f}")
            if r.skipped:
                ET.SubElement(case, "skipped", message=r.message)
            elif not r.ok:
                fail = ET.SubElement(case, "failure", message=r.message, type="SmokeFailure")
                fail.text = "\n".join(r.tail) if r.tail else r.message
            if r.tail:
                ET.SubElement(case, "system-err").text = "\n".join(r.tail)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


# ---------------------------------------------------------------------------- the run


def run_smoke(site, timeout: float, verbose: bool) -> Smoke:
    """Run the whole manager for `site` with a Smoke as its start-up step, to its stop; the
    results are on the Smoke returned (`results`, `interrupted`, `seconds`). Raises
    RuntimeDirError or OSError when the manager cannot start (manager/cli.py says so)."""
    from .runtime import run

    site.metrics_address = None    # a smoke run must not take the real server's metrics port
    site.config.access_log = None  # ... nor write to its access log
    printer = TailPrinter(echo=verbose)
    smoke = Smoke(timeout, printer)
    run(site, printer=printer, startup_display=smoke.run)
    smoke.seconds = time.monotonic() - smoke.started
    return smoke
