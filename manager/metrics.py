"""Prometheus metrics and a health endpoint on `metrics_listen` (host:port or unix:/path; off by default).

    GET /metrics   Prometheus text format (OpenMetrics when the scraper asks for it)
    GET /health    200 when every app has a ready worker or is idle by design (min_processes 0),
                   503 otherwise (and `"status": "draining"` while stopping); a JSON body says
                   which app is not

Per request the proxy calls `observe`: a few list increments and two `bisect`s on fixed buckets,
into plain counters kept here. prometheus_client is used only at scrape time, by a custom
Collector that turns those counters and the pools' own (spawns, crashes, restarts, queue,
workers by state, RSS) into metric families: the format is the library's, the counting ours.
"""
from __future__ import annotations

import json
import logging
import os
import time
from bisect import bisect_left

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder

from .lifecycle import rss_of
from .states import WorkerState

log = logging.getLogger("passenger_lite.manager")

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 10.0, 30.0)
CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class AppCounters:
    """What the proxy counts for one app; read at scrape time."""

    __slots__ = ("codes", "aborted", "dur", "dur_sum", "wait", "wait_sum")

    def __init__(self):
        self.codes = [0, 0, 0, 0, 0]
        self.aborted = 0
        self.dur = [0] * (len(DURATION_BUCKETS) + 1)   # per bucket, not cumulative; last is +Inf
        self.dur_sum = 0.0
        self.wait = [0] * (len(QUEUE_BUCKETS) + 1)
        self.wait_sum = 0.0


def cumulative(counts: list[int], bounds: tuple) -> list[tuple[str, int]]:
    out = []
    total = 0
    for bound, n in zip(bounds, counts):
        total += n
        out.append((repr(float(bound)), total))
    out.append(("+Inf", total + counts[-1]))
    return out


def code_class(status: int) -> int:
    """0..4 for 1xx..5xx (anything out of range counts as 5xx)."""
    i = status // 100 - 1
    return i if 0 <= i <= 4 else 4


def app_health(pool) -> tuple[bool, str]:
    """(healthy, why): AppPool.boot_state() is "up" (a ready worker, or none on purpose)."""
    b = pool.boot_state()
    if b.state == "up":
        return True, (f"{b.ready} ready worker(s)" if b.ready else "idle (min_processes 0); starts on the next request")
    why = pool.state.value
    if b.last_error is not None:
        why += f": {b.last_error}"
    return False, why


class Metrics:
    """An extra (start/stop): observers on the proxy, a Collector, and the HTTP server."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.apps: dict[str, AppCounters] = {}
        self.early = [0, 0, 0, 0, 0]     # answered before routing (bad requests, no route)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self.registry.register(ProcessCollector(namespace="passenger_lite", registry=None))
        self.runner: web.AppRunner | None = None
        self.address = None

    @classmethod
    def from_site(cls, runtime) -> "Metrics | None":
        return cls(runtime) if runtime.site.metrics_address is not None else None

    # ------------------------------------------------------------------ the proxy's observers (hot path)

    def observe(self, ex, status: int, aborted: bool = False) -> None:
        c = self.apps.get(ex.app_name)
        if c is None:
            c = self.apps[ex.app_name] = AppCounters()
        i = status // 100 - 1
        c.codes[i if 0 <= i <= 4 else 4] += 1
        if aborted:
            c.aborted += 1
        now = time.monotonic()
        d = now - ex.t0
        c.dur[bisect_left(DURATION_BUCKETS, d)] += 1
        c.dur_sum += d
        w = (ex.t_worker or now) - ex.t0
        c.wait[bisect_left(QUEUE_BUCKETS, w)] += 1
        c.wait_sum += w

    def observe_early(self, status: int) -> None:
        self.early[code_class(status)] += 1

    # ------------------------------------------------------------------ start / stop

    async def start(self) -> None:
        addr = self.runtime.site.metrics_address
        app = web.Application()
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_get("/health", self.handle_health)
        app.router.add_get("/", self.handle_index)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        try:
            if addr.kind == "unix":
                from passenger_lite.proxy.sockets import remove_stale_socket

                remove_stale_socket(addr.path)
                site = web.UnixSite(self.runner, addr.path)
            else:
                site = web.TCPSite(self.runner, addr.host, addr.port, reuse_address=True)
            await site.start()
        except OSError as e:
            await self.runner.cleanup()
            self.runner = None
            why = os.strerror(e.errno) if e.errno else str(e)
            raise OSError(e.errno, f"cannot listen on metrics_listen {addr}: {why}") from None
        if addr.kind == "tcp" and addr.port == 0:
            addr.port = self.runner.addresses[0][1]  # ephemeral: the port we got
        self.address = addr
        self.runtime.proxy.add_observer(self.observe, self.observe_early)
        log.info("metrics on %s/metrics, health on %s/health", self.url(), self.url())

    def url(self) -> str:
        a = self.address
        return f"unix:{a.path}" if a.kind == "unix" else f"http://{a}"

    async def stop(self) -> None:
        self.runtime.proxy.remove_observer(self.observe, self.observe_early)
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
            if self.address is not None and self.address.kind == "unix":
                try:
                    os.unlink(self.address.path)
                except OSError:
                    pass

    # ------------------------------------------------------------------ HTTP

    async def handle_metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(self.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def handle_health(self, request: web.Request) -> web.Response:
        apps = {}
        ok = True
        for name, pool in self.runtime.poolset.pools.items():
            healthy, why = app_health(pool)
            ok = ok and healthy
            apps[name] = {"healthy": healthy, "state": pool.state.value, "ready_workers": len(pool.ready),
                          "detail": why}
        if self.runtime.draining:  # stopping: a load balancer should send new requests elsewhere
            ok = False
        body = {"status": "draining" if self.runtime.draining else "ok" if ok else "unavailable", "apps": apps}
        return web.Response(text=json.dumps(body, indent=1) + "\n", status=200 if ok else 503,
                            content_type="application/json")

    async def handle_index(self, request: web.Request) -> web.Response:
        return web.Response(text="passenger-lite: /metrics (Prometheus), /health\n")


class _Collector:
    """Turns plain counters into metric families when Prometheus scrapes."""

    def __init__(self, metrics: Metrics):
        self.m = metrics

    def collect(self):
        import psutil

        m = self.m
        pools = m.runtime.poolset.pools if m.runtime.poolset else {}
        names = sorted(set(pools) | set(m.apps))
        p = "passenger_lite_"

        req = CounterMetricFamily(p + "requests", "Requests answered, by app and status class (499 = client "
                                  "went away).", labels=["app", "code"])
        aborted = CounterMetricFamily(p + "responses_aborted", "Responses cut short (the worker failed after "
                                      "the response began).", labels=["app"])
        dur = HistogramMetricFamily(p + "request_duration_seconds", "From request parsed to response written.",
                                    labels=["app"])
        wait = HistogramMetricFamily(p + "queue_wait_seconds", "From request parsed to worker assigned "
                                     "(includes buffering a small request body).", labels=["app"])
        for name in names:
            c = m.apps.get(name)
            if c is None:
                c = AppCounters()
            for cls, n in zip(CODE_CLASSES, c.codes):
                req.add_metric([name, cls], n)
            aborted.add_metric([name], c.aborted)
            dur.add_metric([name], cumulative(c.dur, DURATION_BUCKETS), c.dur_sum)
            wait.add_metric([name], cumulative(c.wait, QUEUE_BUCKETS), c.wait_sum)
        yield from (req, aborted, dur, wait)

        early = CounterMetricFamily(p + "rejected_requests", "Requests answered before reaching an app "
                                    "(malformed, no route), by status class.", labels=["code"])
        for cls, n in zip(CODE_CLASSES, m.early):
            early.add_metric([cls], n)
        yield early

        queue = GaugeMetricFamily(p + "queue_length", "Requests waiting for a worker.", labels=["app"])
        inflight = GaugeMetricFamily(p + "requests_in_flight", "Requests on a worker now.", labels=["app"])
        workers = GaugeMetricFamily(p + "workers", "Worker processes by state.", labels=["app", "state"])
        up = GaugeMetricFamily(p + "app_up", "1 when the app has a ready worker or is idle by design.",
                               labels=["app"])
        spawns = CounterMetricFamily(p + "worker_spawns", "Workers spawned.", labels=["app"])
        crashes = CounterMetricFamily(p + "worker_crashes", "Ready workers that exited unasked.", labels=["app"])
        failed = CounterMetricFamily(p + "worker_failed_starts", "Workers that failed to start.", labels=["app"])
        restarts = CounterMetricFamily(p + "app_restarts", "Rolling restarts (command, restart.txt, file "
                                       "change, reload).", labels=["app"])
        rss = GaugeMetricFamily(p + "memory_rss_bytes", "Resident memory of the app's workers and their "
                                "children.", labels=["app"])
        for name, pool in pools.items():
            queue.add_metric([name], len(pool.queue))
            inflight.add_metric([name], sum(w.in_flight for w in pool.workers))
            by_state = dict.fromkeys((s.value for s in WorkerState), 0)
            total_rss = 0
            for w in pool.workers:
                by_state[w.state.value] += 1
                if w.alive:
                    total_rss += rss_of(w.pid, psutil)
            for state, n in by_state.items():
                workers.add_metric([name, state], n)
            up.add_metric([name], 1 if app_health(pool)[0] else 0)
            spawns.add_metric([name], pool.spawns)
            crashes.add_metric([name], pool.crashes)
            failed.add_metric([name], pool.failed_starts)
            restarts.add_metric([name], pool.restarts)
            rss.add_metric([name], total_rss)
        yield from (queue, inflight, workers, up, spawns, crashes, failed, restarts, rss)
