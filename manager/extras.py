"""Optional parts of a running manager (access log, metrics, file watcher), each with start/stop.

The runtime starts them after the proxy and the control socket, in this order, and stops them in
reverse after the proxy has drained (so the last requests of a graceful stop are logged and counted). An extra may also have `reconfigure(site)`, called after a
config reload.
"""
from __future__ import annotations

import asyncio
import logging
import signal

log = logging.getLogger("passenger_lite.manager")


def build_extras(runtime) -> list:
    from .accesslog import AccessLog
    from .watch import Watcher

    access = AccessLog.from_site(runtime)
    metrics = None
    if runtime.site.config.metrics_listen:  # prometheus_client is imported only when metrics are on
        from .metrics import Metrics

        metrics = Metrics.from_site(runtime)
    extras = [x for x in (access, metrics, Watcher(runtime)) if x is not None]
    extras.append(LogReopener(runtime, [access, runtime.printer.stream]))
    return extras


def hook_observers(proxy, extra) -> None:
    """Have the proxy call extra.observe(ex, status, aborted) per finished exchange and
    extra.observe_early(status) per request answered before routing."""
    proxy.observers.append(extra.observe)
    proxy.early_observers.append(extra.observe_early)


def unhook_observers(proxy, extra) -> None:
    for lst, fn in ((proxy.observers, extra.observe), (proxy.early_observers, extra.observe_early)):
        if fn in lst:
            lst.remove(fn)


class LogReopener:
    """SIGUSR1 reopens the log files (access_log, log_file) after logrotate moved them."""

    def __init__(self, runtime, files: list):
        self.files = [f for f in files if f is not None and hasattr(f, "reopen")]

    async def start(self) -> None:
        if self.files:
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self.reopen)

    async def stop(self) -> None:
        if self.files:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1)

    def reopen(self) -> None:
        for f in self.files:
            try:
                f.reopen()
            except OSError as e:
                log.error("cannot reopen a log file: %s", e)
        log.info("log files reopened (SIGUSR1)")
