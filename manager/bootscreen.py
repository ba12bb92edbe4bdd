"""The start-up display of `passenger-lite start` on a terminal.

While the apps boot, a live block at the bottom of the terminal shows each one with its elapsed
time; log lines (ours and the workers') scroll above it. When every app is ready, idle by
design, or has failed to start, the block gives way to a table of each app's URL(s) and workers.
Off a terminal (or with `log_format: json`) there is no display: the log says the same in plain
lines.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import time
from typing import TextIO

from .statusview import table

log = logging.getLogger("passenger_lite.manager")
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
REFRESH = 0.1
GREEN, RED, YELLOW, DIM, RESET = "\x1b[32m", "\x1b[31m", "\x1b[33m", "\x1b[2m", "\x1b[0m"


def startup_display(site, log_stream: TextIO, terminal: TextIO | None = None):
    """The Runtime's `startup_display` for this run, or None (not a terminal, or JSON logs)."""
    term = terminal or sys.stderr
    try:
        tty = term.isatty()
    except (AttributeError, ValueError):
        tty = False
    if not tty or site.config.log_format == "json":
        return None
    return BootDisplay(term, shared=log_stream is term).run


def app_urls(app, listener_urls: list[str]) -> list[str]:
    """Where an app answers: each listener with each of the app's hosts, plus its mount path."""
    path = app.path if app.path != "/" else "/"
    out = []
    for url in listener_urls:
        if url.startswith("unix:"):
            out.append(f"{url} {path}")
            continue
        scheme, _, hostport = url.partition("://")
        host, _, port = hostport.rpartition(":")
        default = (scheme == "http" and port == "80") or (scheme == "https" and port == "443")
        suffix = "" if default else f":{port}"
        for h in app.hosts or [host]:
            out.append(f"{scheme}://{h}{suffix}{path}")
    return out


class LiveBlock:
    """A text stream for the terminal that keeps a block of lines at the bottom: every whole
    line written goes above the block, which is then drawn again."""

    def __init__(self, term: TextIO):
        self.term = term
        self.lines: list[str] = []
        self._drawn = 0
        self._partial = ""

    def write(self, text: str) -> int:
        text = self._partial + text
        head, nl, self._partial = text.rpartition("\n")
        if nl:
            self._erase()
            self.term.write(head + nl)
            self._draw()
            self.term.flush()
        return len(text)

    def flush(self) -> None:
        self.term.flush()

    def isatty(self) -> bool:
        return True

    def show(self, lines: list[str]) -> None:
        self._erase()
        self.lines = lines
        self._draw()
        self.term.flush()

    def _erase(self) -> None:
        if self._drawn:
            self.term.write(f"\x1b[{self._drawn}A\r\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        width = max(shutil.get_terminal_size((100, 24)).columns - 1, 20)
        for line in self.lines:
            self.term.write(_clip(line, width) + "\n")
        self._drawn = len(self.lines)


def _clip(line: str, width: int) -> str:
    """Cut a line with colour codes to `width` visible characters (so the block never wraps)."""
    out, seen, i = [], 0, 0
    while i < len(line):
        if line[i] == "\x1b":
            j = line.find("m", i)
            if j < 0:
                break
            out.append(line[i:j + 1])
            i = j + 1
            continue
        if seen >= width:
            out.append(RESET)
            break
        out.append(line[i])
        seen += 1
        i += 1
    return "".join(out)


class BootDisplay:
    def __init__(self, term: TextIO, shared: bool):
        self.term = term
        self.shared = shared        # the log goes to this terminal too: route it through the block
        self.block = LiveBlock(term)

    async def run(self, runtime) -> None:
        t0 = time.monotonic()
        restore = self._take_over(runtime) if self.shared else None
        tick = 0
        try:
            await runtime.poolset.start()
            pools = runtime.poolset.pools
            limit = t0 + max((p.app.start_timeout for p in pools.values()), default=10) + 2
            while True:
                rows = [self._booting(p, t0, tick) for p in pools.values()]
                self.block.show([line for _, line in rows])
                if all(done for done, _ in rows) or not runtime.commands.empty() or time.monotonic() > limit:
                    break
                tick += 1
                await asyncio.sleep(REFRESH)
        finally:
            self.block.show([])
            if restore is not None:
                restore()
        if runtime.commands.empty():
            self.term.write(self.summary(runtime, t0) + "\n")
            self.term.flush()
        if not self.shared:
            log.info("serving %d app(s) on %s", len(runtime.site.apps), ", ".join(runtime.proxy.urls()))

    def _take_over(self, runtime):
        handlers = [h for h in logging.getLogger("passenger_lite").handlers
                    if getattr(h, "stream", None) is self.term]
        printer = runtime.printer
        for h in handlers:
            h.setStream(self.block)
        printer.stream = self.block

        def restore() -> None:
            for h in handlers:
                h.setStream(self.term)
            printer.stream = self.term
        return restore

    @staticmethod
    def _booting(pool, t0: float, tick: int) -> tuple[bool, str]:
        """(done, line): done once boot_state() says every min_processes worker is ready, a start
        failed, or the app is idle by design."""
        name = pool.name.ljust(16)
        b = pool.boot_state()
        if b.all_ready:
            last = max(w.ready_mono for w in pool.ready)
            return True, f"  {GREEN}✓{RESET} {name} ready in {last - t0:.1f}s"
        if b.last_error is not None:
            return True, f"  {RED}✗{RESET} {name} failed to start: {b.last_error}"
        if b.idle:
            return True, f"  {DIM}·{RESET} {name} idle: starts on the first request"
        spin = SPINNER[tick % len(SPINNER)]
        some = f" ({b.ready} of {b.min_processes} ready)" if b.ready else ""
        return False, f"  {YELLOW}{spin}{RESET} {name} starting… {time.monotonic() - t0:.1f}s{some}"

    def summary(self, runtime, t0: float) -> str:
        site = runtime.site
        urls = runtime.proxy.urls()
        rows = [("APP", "URL", "WORKERS", "STATE")]
        for app in site.apps:
            pool = runtime.poolset.pools[app.name]
            b = pool.boot_state()
            if b.ready:
                state = f"{GREEN}ready{RESET}"
            elif b.last_error is not None:
                state = f"{RED}failed{RESET}: {b.last_error}"
            elif b.min_processes == 0:
                state = "idle (starts on the first request)"
            else:
                state = f"{YELLOW}{pool.state.value}{RESET}"
            links = app_urls(app, urls) or ["-"]
            rows.append((app.name, links[0], f"{b.ready}/{pool.max}", state))
            rows += [("", link, "", "") for link in links[1:]]
        n = len(site.apps)
        head = (f"passenger-lite is serving {n} app{'s' if n != 1 else ''} · {site.config.environment} · "
                f"pid {os.getpid()} · up in {time.monotonic() - t0:.1f}s")
        lines = [head] + table(rows, "  ")
        lines.append(f"{DIM}Ctrl-C stops; `passenger-lite status` shows the workers.{RESET}")
        return "\n".join(lines)
