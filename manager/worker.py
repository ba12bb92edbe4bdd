"""One worker process: spawn, readiness probe, output capture, TERM -> KILL of its process group.

The worker owns its state transitions (`set_state`); its pool hears of them, and of its exit,
through the callables it was given (no back-reference: worker.py imports no pool). Each worker runs
in its own session and process group, so stopping it stops whatever it started too; the
watchdog is told the group so that it can kill it if the front process itself is killed.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
import time
from collections import deque
from typing import TYPE_CHECKING, Callable

from .descendants import MARKER
from .spawnfail import StartFailure, describe_exit, hints_for
from .states import WORKER_TRANSITIONS, WorkerState, check_transition

if TYPE_CHECKING:
    from passenger_lite.manager.config import AppConfig
    from passenger_lite.spawners.base import WorkerSpec

log = logging.getLogger("passenger_lite.manager")
W = WorkerState
OUTPUT_TAIL = 40
# Readiness is probed from 2 ms apart, growing to at most this: a worker that became ready just
# after a probe waits at most this long for the next one (an on-demand spawn's request waits too).
PROBE_MAX_INTERVAL = 0.02
PROBE = b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\nUser-Agent: passenger-lite-probe\r\nConnection: close\r\n\r\n"


def probe_request(ready_check: str) -> bytes | None:
    """The request a readiness probe sends for the app's `ready_check` (None: connect only)."""
    if ready_check == "connect":
        return None
    if ready_check == "OPTIONS *":
        return PROBE
    return PROBE.replace(b"OPTIONS *", ready_check.encode("ascii"), 1)


class Worker:
    def __init__(self, app: "AppConfig", wid: int, sock: str, port: int | None = None, *,
                 on_state: Callable, on_exit: Callable, on_gone: Callable,
                 last_failure: Callable[[], StartFailure | None], clock: Callable[[], float] = time.monotonic):
        self.app = app.name
        self._on_state = on_state          # (worker, old, new, why): after each transition
        self._on_exit = on_exit            # (worker): once its process is gone
        self._on_gone = on_gone            # (worker): it stops or has exited (the proxy drops its connections)
        self._last_failure = last_failure  # () -> its app's last StartFailure (a retry holds its output)
        self.clock = clock                 # its pool's monotonic clock: every time below is on it
        self.id = wid
        self.sock = sock
        self.port = port
        self.state = W.STARTING
        self.proc: asyncio.subprocess.Process | None = None
        self.pid: int | None = None
        self.concurrency = app.concurrency or 0
        self.in_flight = 0
        self.served = 0
        self.started_mono = clock()
        self.ready_mono = 0.0
        self.last_used = self.started_mono
        self.exit_code: int | None = None
        self.stop_reason = ""
        self.output: deque[str] = deque(maxlen=OUTPUT_TAIL)
        self.rss = 0
        self.mem_checked = 0.0
        self.mem_quick = 0.0   # when memory_limit was last checked after a request
        self.recycling = False
        # pool bookkeeping (manager/pool.py)
        self.spawning = False     # its spawn is in progress: counted in pool.starting until it ends
        self.fault = ""           # why the pool took it out of rotation for a fault (crash, hang)
        self.confirming = False   # reported failed; waiting a moment to see whether it exited
        self.drain_timer = None   # kills it shutdown_timeout after it began draining
        self.drain_deadline = 0.0
        self.handover = False     # replaced in place: its slot under max_pool_size goes to the replacement
        self.proven = False       # stayed up min_uptime after it became ready
        self.probing = False      # a liveness probe is on its way
        self.probed = 0.0         # when the last liveness probe ended (monotonic)
        self._exit_task: asyncio.Task | None = None
        self._readers: list[asyncio.Task] = []
        self.command = ""
        self.cwd = ""
        self.user = None       # manager.users.WorkerUser it runs as; None: as the manager (issue 7)
        self.on_answer = None  # called once its socket answers, before it takes requests; may raise
        self._held: list | None = None  # output kept back while it retries a failed start (_release)
        self._printer = None
        self.probe = probe_request(getattr(app, "ready_check", "OPTIONS *"))
        self.seq = 0           # its number in manager.descendants (marker, cgroup folder)
        self.cgroup: str | None = None

    def __repr__(self) -> str:
        return f"<Worker {self.app}#{self.id} pid={self.pid} {self.state.value}>"

    @property
    def label(self) -> str:
        return f"{self.app}#{self.id}"

    @property
    def address(self) -> str | tuple[str, int]:
        """Where the proxy connects (proxy.checkout.Backend): its Unix socket or loopback port."""
        return self.sock if self.port is None else ("127.0.0.1", self.port)

    @property
    def accepting(self) -> bool:
        """It takes new requests (proxy.checkout.Backend)."""
        return self.state is W.READY

    def set_state(self, new: WorkerState, why: str = "", level: int | None = logging.INFO) -> None:
        """The one writer of the worker's state: checks WORKER_TRANSITIONS, logs the transition
        once in the app's format (`blog#2: ready -> draining (why)`) at `level`, then tells its
        pool. `level` None: the caller's own line is this transition's log, kept because users and
        the integration tests read it ("ready in N ms", "stopped", "exited unexpectedly", "killing it")."""
        old = self.state
        if old is new:
            return
        check_transition(f"worker {self.label}", WORKER_TRANSITIONS, old, new)
        self.state = new
        if level is not None:
            log.log(level, "%s: %s -> %s%s", self.label, old.value, new.value, f" ({why})" if why else "")
        self._on_state(self, old, new, why)

    # ------------------------------------------------------------------ start

    async def start(self, spec: "WorkerSpec", timeout: float, printer, watchdog, user=None) -> None:
        """Spawn and wait until the socket answers. Raises StartFailure (the process is gone then)."""
        self.command = shlex.join(spec.argv)
        self.cwd = spec.cwd
        self._printer = printer
        last = self._last_failure()
        if last is not None and last.output:
            self._held = []  # a retry: print its output only if it differs from the last failure's
        kw = {}
        if user is not None:
            kw.update(user.spawn_kwargs(asyncio.get_running_loop()))  # uvloop needs a preexec_fn
        env = spec.env
        desc = getattr(watchdog, "descendants", None)  # what setsid cannot leave (issue 11, item 9)
        if desc is not None:
            self.seq = desc.next_seq()
            self.cgroup = desc.worker_cgroup(self.seq)
            kw = desc.spawn_kwargs(kw, self.cgroup)
            env = dict(env, **{MARKER: desc.marker(self.seq)})
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *spec.argv, cwd=spec.cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True, **kw)
        except OSError as e:
            if desc is not None:
                desc.worker_ended(self.seq, self.cgroup)
            raise StartFailure(self.app, "spawn", f"cannot run {spec.argv[0]}: {e.strerror or e}",
                               command=self.command, cwd=spec.cwd,
                               hints=["Check the interpreter path (`python:`, `ruby:`, `node:`) and the app's root."])
        self.pid = self.proc.pid
        watchdog.add(self.pid)
        if desc is not None:
            desc.known.add(self.pid)
        loop = asyncio.get_running_loop()
        self._readers = [loop.create_task(self._read(self.proc.stdout, printer, "out")),
                         loop.create_task(self._read(self.proc.stderr, printer, "err"))]
        self._exit_task = loop.create_task(self._wait_exit(watchdog))
        deadline = self.clock() + timeout
        delay = 0.002
        while True:
            if self._exit_task.done():
                await self._drain_output()
                raise self._failure("start", f"the worker exited during start ({describe_exit(self.exit_code)})")
            remaining = deadline - self.clock()
            if remaining <= 0:
                await self.kill()
                await self._drain_output()
                raise self._failure("start", f"the worker did not answer on its socket within {timeout:g} s")
            if await self._probe(min(remaining, 5.0)):
                break
            await asyncio.wait([self._exit_task], timeout=min(delay, max(remaining, 0.001)))
            delay = min(delay * 1.6, PROBE_MAX_INTERVAL)
        if self.on_answer is not None:
            try:
                self.on_answer()  # the poolset locks the socket's folder and checks the socket
            except Exception as e:  # noqa: BLE001 - reported as a failed start
                await self.kill()
                await self._drain_output()
                raise self._failure("socket", str(e)) from None
        if self.state is not W.STARTING:  # stopped while starting (shutdown, restart)
            raise self._failure("start", "the worker was stopped before it became ready")
        self._release()
        self.ready_mono = self.clock()
        self.last_used = self.ready_mono
        self.set_state(W.READY, level=None)  # its pool logs "worker #N (pid P) ready in N ms"

    async def _probe(self, timeout: float) -> bool:
        """True when the worker answers the app's `ready_check` on its address: any status to
        `OPTIONS *`, a status below 500 to another request, or just accepts for `connect`."""
        try:
            if self.port is not None:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            else:
                reader, writer = await asyncio.open_unix_connection(self.sock)
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, OSError):
            return False
        try:
            if self.probe is None:
                return True
            writer.write(self.probe)
            async with asyncio.timeout(timeout):
                line = await reader.readline()
            if self.probe is not PROBE and line[9:10] == b"5":  # 'HTTP/1.1 503': not ready yet
                return False
            return line.startswith(b"HTTP/")
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            return False
        finally:
            writer.close()

    def _failure(self, step: str, message: str) -> StartFailure:
        out = "\n".join(self.output)
        last = self._last_failure()
        repeated = self._held is not None and last is not None and out == last.output
        self._release(print_held=not repeated)
        return StartFailure(self.app, step, message, command=self.command, cwd=self.cwd,
                            exit=describe_exit(self.exit_code), output=out, hints=hints_for(out),
                            repeated=repeated)

    def _release(self, print_held: bool = True) -> None:
        """Stop holding output back; print what was held (unless it repeats the last failure)."""
        held, self._held = self._held, None
        if held and print_held:
            for text, kind in held:
                self._printer.worker_line(self, text, kind)

    # ------------------------------------------------------------------ output and exit

    async def _read(self, stream: asyncio.StreamReader, printer, kind: str) -> None:
        while True:
            try:
                line = await stream.readuntil(b"\n")
            except asyncio.IncompleteReadError as e:
                line = e.partial
                if not line:
                    return
            except asyncio.LimitOverrunError as e:
                line = await stream.read(e.consumed)  # an over-long line: emit it in pieces
            except (OSError, ValueError):
                return
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            self.output.append(text)
            if self._held is not None:
                self._held.append((text, kind))
            else:
                printer.worker_line(self, text, kind)

    async def _drain_output(self) -> None:
        if self._readers:
            await asyncio.wait(self._readers, timeout=1.0)

    async def _wait_exit(self, watchdog) -> None:
        code = await self.proc.wait()
        self.exit_code = code
        try:
            os.killpg(self.pid, signal.SIGKILL)  # whatever the worker started goes with it
        except (ProcessLookupError, PermissionError):
            pass
        desc = getattr(watchdog, "descendants", None)
        if desc is not None:  # and whatever left the group (setsid) too
            desc.worker_ended(self.seq, self.cgroup)
            desc.known.discard(self.pid)
        watchdog.remove(self.pid)
        self._on_gone(self)
        await self._drain_output()
        self._on_exit(self)

    # ------------------------------------------------------------------ stop

    async def stop(self, timeout: float, reason: str = "") -> None:
        """TERM to the process group; KILL after `timeout`. Returns when the process is gone."""
        if self.state in (W.STOPPED, W.FAILED):
            return
        if reason:
            self.stop_reason = reason
        if self.state is not W.STOPPING:
            self.set_state(W.STOPPING, reason)
        self._on_gone(self)
        if self._exit_task is None:
            return
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self._exit_task), timeout)
        except TimeoutError:
            log.warning("%s (pid %s) did not stop within %g s: killing it", self.label, self.pid, timeout)
            self._signal(signal.SIGKILL)
            await asyncio.shield(self._exit_task)

    async def wait_exit(self, timeout: float | None = None) -> bool:
        """True once the process has exited and its exit was handled (False after `timeout`)."""
        if self._exit_task is None:
            return True
        done, _ = await asyncio.wait([self._exit_task], timeout=timeout)
        return bool(done)

    async def kill(self) -> None:
        self._signal(signal.SIGKILL)
        if self._exit_task is not None:
            await asyncio.shield(self._exit_task)

    def _signal(self, sig: int) -> None:
        if self.pid is None or self.exit_code is not None:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    @property
    def alive(self) -> bool:
        return self.exit_code is None and self.pid is not None
