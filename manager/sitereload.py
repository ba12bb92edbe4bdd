"""What `reload` does with the site-level keys (the ones outside `apps:`), issue 12 item 7.

Every site key is in one of three groups:

  * LIVE: the proxy and the pools read them from the new config as soon as it is in place (new
    connections and requests, the next spawn); `environment` and `default_user` also restart,
    rolling, the apps whose workers they change (RACK_ENV & co., the user an app runs as);
  * REOPENED: files and listeners of the extras, opened again from the new config
    (`log_file`, `log_format`, `access_log`, `metrics_listen`);
  * anything else (`listen`, and any key not named here) needs a full restart: the reload
    keeps the running value and says so, by name, in its answer and in the log.

The files are opened before anything changes, so a log file that cannot be opened rejects the
reload (the running config stays) instead of half-applying it.
"""
from __future__ import annotations

import logging

from .config import Site

log = logging.getLogger("passenger_lite.manager")

LIVE = ("environment", "max_pool_size", "shutdown_timeout", "default_user", "trusted_proxies",
        "client_max_body_size", "client_header_timeout", "client_body_timeout", "send_timeout",
        "keepalive_timeout", "max_header_size", "max_headers", "max_connections", "websocket_idle_timeout")
REOPENED = ("log_file", "log_format", "access_log", "metrics_listen")


def listen_key(site: Site) -> list[tuple[str, bool]]:
    """What a running listener is: its address, and whether it speaks TLS (certificates are
    re-read on reload; a listener cannot switch between plain and TLS)."""
    return [(str(a), a.tls is not None) for a in site.addresses]


def changed_keys(old: Site, new: Site) -> list[str]:
    """The site keys whose value differs, in the config's order."""
    out = []
    for key in type(new.config).model_fields:
        if key == "apps":
            continue
        if key == "listen":
            if listen_key(old) != listen_key(new):
                out.append(key)
        elif getattr(old.config, key) != getattr(new.config, key):
            out.append(key)
    return out


def apps_to_restart(old: Site, new: Site, old_users, new_users, keys: list[str]) -> list[str]:
    """Apps (in both configs) whose running workers a changed site key makes stale."""
    names = [a.name for a in new.apps if old.app(a.name) is not None]
    if "environment" in keys:
        return names
    if "default_user" in keys and new_users is not None and old_users is not None:
        out = []
        for n in names:
            try:
                a, b = old_users.for_app(old.app(n)), new_users.for_app(new.app(n))
            except LookupError:
                continue
            if (a and (a.uid, a.gid)) != (b and (b.uid, b.gid)):
                out.append(n)
        return out
    return []


class SiteReload:
    """The site-level part of one reload: prepare (may fail, changes nothing), then apply."""

    def __init__(self, runtime, old: Site, new: Site):
        self.runtime = runtime
        self.old = old
        self.new = new
        self.keys = changed_keys(old, new)
        self.live = [k for k in self.keys if k in LIVE]
        self.reopened = [k for k in self.keys if k in REOPENED]
        self.restart_needed = [k for k in self.keys if k not in LIVE and k not in REOPENED]
        self._stream = None
        self.errors: list[str] = []

    def prepare(self) -> None:
        """Open what the new config names. Raises OSError (a message naming the key and file)."""
        from .output import log_path, open_log_stream

        c, o = self.new.config, self.old.config
        if c.log_file != o.log_file:
            self._stream = open_log_stream(self.new)
        if c.access_log and c.access_log != "-" and c.access_log != o.access_log:
            path = log_path(self.new, "access_log")
            try:
                open(path, "a").close()
            except OSError as e:
                self.discard()
                raise OSError(e.errno, f"cannot open access_log {path}: {e.strerror or e}") from None

    def discard(self) -> None:
        from .output import LogFile

        if isinstance(self._stream, LogFile):
            self._stream.close()
        self._stream = None

    async def apply(self) -> None:
        """Swap in the new logs, access log and metrics listener (runtime.site is the new one)."""
        rt = self.runtime
        c, o = self.new.config, self.old.config
        if "log_file" in self.keys or "log_format" in self.keys:
            self._apply_log(c.log_format)
        access_changed = c.access_log != o.access_log or (c.access_log and c.log_format != o.log_format)
        if access_changed:
            from .accesslog import AccessLog

            old_access = next((x for x in rt.extras if isinstance(x, AccessLog)), None)
            new_access = AccessLog.from_site(rt)
            if new_access is not None:
                await new_access.start()  # the file could be opened a moment ago (prepare)
            if old_access is not None:
                await old_access.stop()
            self._replace(old_access, new_access)
        if c.metrics_listen != o.metrics_listen:
            await self._apply_metrics()

    def _apply_log(self, fmt: str) -> None:
        from .output import LogFile, setup_logging

        printer = self.runtime.printer
        old = printer.stream
        stream = self._stream if self._stream is not None else old
        self._stream = None
        printer.stream = stream
        printer.json = fmt == "json"
        printer.colour = stream.isatty() and not printer.json
        setup_logging(fmt, stream)
        if stream is not old and isinstance(old, LogFile):  # never stderr
            old.close()

    async def _apply_metrics(self) -> None:
        from .metrics import Metrics

        rt = self.runtime
        metrics = next((x for x in rt.extras if isinstance(x, Metrics)), None)
        if metrics is not None:
            await metrics.stop()
        if self.new.metrics_address is None:
            self._replace(metrics, None)
            return
        if metrics is None:
            metrics = Metrics(rt)
            self._replace(None, metrics)
        try:
            await metrics.start()  # the same counters, on the new address
        except OSError as e:
            self._replace(metrics, None)
            self.errors.append(f"{e.strerror or e}; metrics are off until the next reload or start")
            log.error("reload: %s", self.errors[-1])

    def _replace(self, old, new) -> None:
        """Put `new` in `old`'s place in the runtime's extras (stopped with the others at the end)."""
        extras = self.runtime.extras
        if old is not None and old in extras:
            i = extras.index(old)
            if new is None:
                del extras[i]
            else:
                extras[i] = new
        elif new is not None:
            extras.append(new)
