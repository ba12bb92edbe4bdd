"""The `passenger-lite` command. The only place that prints errors or calls sys.exit.

Exit codes: 0 success; 1 runtime failure (a port in use, no manager running, a smoke test
failed); 2 usage or configuration error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import NoReturn

from .config import ConfigError
from .unixhttp import UnixHTTPConnection

PROG = "passenger-lite"
DEFAULT_CONFIG = os.environ.get("PASSENGER_LITE_CONFIG", "sites.yaml")


def _fail(msg: str, code: int = 1) -> NoReturn:
    print(f"{PROG}: {msg}", file=sys.stderr)
    sys.exit(code)


def _load(path: str):
    from passenger_lite.spawners.registry import default_registry

    from . import config

    reg = default_registry()
    for p in reg.problems:
        print(f"{PROG}: warning: {p}", file=sys.stderr)
    from .users import UserPolicy

    try:
        site = config.load(path, reg)
        UserPolicy.for_site(site)  # unknown users and groups are config errors too
        return site
    except ConfigError as e:
        _fail(f"error in {e.render()}", 2)


# ---------------------------------------------------------------------------- start / check


def cmd_start(a: argparse.Namespace) -> int:
    site = _load(a.config)
    if a.dev:
        site.config.environment = "development"
    from passenger_lite.proxy.front import CParserMissing, require_c_parser

    from .bootscreen import startup_display
    from .output import Printer, open_log_stream, setup_logging
    from .runtime import run
    from .runtimedir import RuntimeDirError

    try:
        stream = open_log_stream(site)  # log_file, or stderr
    except OSError as e:
        _fail(str(e))
    setup_logging(site.config.log_format, stream)
    try:
        require_c_parser()
        _access(site, fail=False)
        return run(site, dev=a.dev, printer=Printer(stream, site.config.log_format),
                   startup_display=startup_display(site, stream))
    except (RuntimeDirError, CParserMissing) as e:
        _fail(str(e))
    except OSError as e:  # e.g. the listen address is taken: say what, without "[Errno 98]"
        _fail(e.strerror or str(e))
    return 1


def _access(site, fail: bool) -> None:
    """What each app's user could not reach (started as root): for `check` the spawn's own
    refusals are errors (exit 2) and a framework's files warnings; `start` logs them all."""
    import logging

    from passenger_lite.spawners.registry import default_registry

    from .users import access_report

    errors, warnings = access_report(site, default_registry())
    lines = [f"{site.path}{f':{p.line}' if p.line else ''}: {p.key}: {p.message}" for p in errors + warnings]
    if not fail:
        for line in lines:
            logging.getLogger("passenger_lite.manager").warning("%s", line)
        return
    for line in lines[len(errors):]:
        print(f"{PROG}: warning: {line}", file=sys.stderr)
    if errors:
        _fail(f"error in {ConfigError(site.path, errors).render()}", 2)


def cmd_check(a: argparse.Namespace) -> int:
    site = _load(a.config)
    _access(site, fail=True)
    from passenger_lite.proxy.router import Mount, Router

    print(f"{site.path}: OK, {len(site.apps)} app{'s' if len(site.apps) != 1 else ''}, "
          f"environment {site.config.environment}, max_pool_size {site.config.max_pool_size}")
    print("listen: " + ", ".join(str(x) + (" (tls)" if x.tls else "") for x in site.addresses))
    router = Router(Mount(tuple(app.hosts), app.path, app) for app in site.apps)
    rows = [("HOST", "PATH", "APP", "TYPE", "ENTRY", "PROCESSES", "CONCURRENCY")]
    for host, prefix, app in router.table():
        procs = f"{app.min_processes}-{app.max_processes}"
        conc = str(app.concurrency) if app.concurrency else "unlimited"
        rows.append((host, prefix, app.name, app.type or "?", app.entry or "-", procs, conc))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("routes, in match order:")
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_schema(a: argparse.Namespace) -> int:
    from .config import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if a.output:
        Path(a.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


# ---------------------------------------------------------------------------- control clients


def _instance(config: str) -> Path:
    """The folder of our manager running for `config`; else a one-line error (exit 1) that says
    whose manager it is when another user's serves this config. Creates nothing."""
    from .runtimedir import find_instance_dir

    cfg = Path(config)
    if not cfg.exists():
        _fail(f"config file {config} not found", 2)
    d = find_instance_dir(cfg)
    if d is None:
        _not_running(cfg)
    return d


def _not_running(cfg: Path) -> NoReturn:
    others = _others_serving(cfg)
    if not others:
        _fail(f"no passenger-lite is running for {cfg.resolve()}")
    pid, user = others[0]
    how = "as root (sudo)" if user == "root" else f"as {user}"
    _fail(f"the passenger-lite running for {cfg.resolve()} (pid {pid}) belongs to user {user}, not to you; "
          f"only its user can use its control socket: run this command {how}")


def _others_serving(cfg: Path) -> list[tuple[int, str]]:
    """`passenger-lite start` processes of other users for this config file: [(pid, user)].
    Their command line is public; a relative --config is compared through their cwd where we may
    read it, else by the file's name."""
    import psutil

    target = cfg.resolve()
    me = os.geteuid()
    out = []
    for p in psutil.process_iter(["pid", "uids", "username", "cmdline"]):
        try:
            argv = p.info["cmdline"] or []
            if p.info["uids"] is None or p.info["uids"].effective == me or "start" not in argv:
                continue
            if not any(a.endswith(PROG) or a == "passenger_lite.manager.cli" for a in argv[:3]):
                continue
            given = DEFAULT_CONFIG
            for i, a in enumerate(argv):
                if a in ("--config", "-c") and i + 1 < len(argv):
                    given = argv[i + 1]
                elif a.startswith("--config="):
                    given = a.split("=", 1)[1]
            path = Path(given)
            if not path.is_absolute():
                try:
                    path = Path(p.cwd()) / path
                except psutil.Error:
                    if path.name != target.name:
                        continue
                    path = target
            if path.resolve() == target:
                out.append((p.info["pid"], p.info["username"] or str(p.info["uids"].effective)))
        except (psutil.Error, OSError):
            continue
    return out


def control(config: str, method: str, path: str, timeout: float = 600) -> tuple[int, dict]:
    cfg = Path(config)
    sock = _instance(config) / "control.sock"
    conn = UnixHTTPConnection(str(sock), timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read()
    except (ConnectionRefusedError, FileNotFoundError):
        _fail(f"no passenger-lite is running for {cfg.resolve()}")
    except OSError as e:
        _fail(f"cannot reach the running passenger-lite: {e}")
    finally:
        conn.close()
    try:
        return resp.status, json.loads(body)
    except ValueError:
        _fail(f"unexpected answer from the running passenger-lite: {body[:200]!r}")


def cmd_status(a: argparse.Namespace) -> int:
    _, data = control(a.config, "GET", "/status")
    if a.json:
        print(json.dumps(data, indent=2))
        return 0
    from .statusview import render_status

    print(render_status(data))
    return 0


def cmd_restart(a: argparse.Namespace) -> int:
    status, data = control(a.config, "POST", f"/restart/{a.app}")
    if status == 404:
        _fail(data.get("error", "no such app"), 2)
    if not data.get("ok"):
        _fail(f"restart of {a.app} failed: {data.get('error')}; the old workers keep serving")
    print(f"{a.app}: restarted")
    return 0


def cmd_reload(a: argparse.Namespace) -> int:
    _, data = control(a.config, "POST", "/reload")
    if not data.get("ok"):
        print(f"{PROG}: reload rejected; the running config stays\n{data.get('error')}", file=sys.stderr)
        return 2
    line = (f"reloaded: added {', '.join(data['added']) or '-'}; removed {', '.join(data['removed']) or '-'}; "
            f"changed {', '.join(data['changed']) or '-'}")
    if data.get("site"):
        line += f"; site keys applied: {', '.join(data['site'])}"
    print(line, flush=True)
    if data.get("restart_needed"):  # applied, but not until the next start: a warning, exit 0
        print(f"{PROG}: warning: {', '.join(data['restart_needed'])} changed, which takes a restart "
              f"(stop, then start) to apply; until then the running value stays", file=sys.stderr)
    for err in data.get("errors") or []:
        print(f"{PROG}: error: {err}", file=sys.stderr)
    return 1 if data.get("errors") else 0


STOP_WAIT = 300.0  # seconds `stop` waits for the manager to finish (requests, then workers)


def _wait_stopped(instance: Path, timeout: float) -> bool:
    """Block until the manager releases its instance lock, the last thing it does once its
    workers are gone (the kernel releases it too if the manager is killed)."""
    import fcntl
    import signal

    try:
        fd = os.open(instance / "lock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True

    def expired(*_):
        raise TimeoutError

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        return True
    except TimeoutError:
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        os.close(fd)


def cmd_stop(a: argparse.Namespace) -> int:
    instance = _instance(a.config)
    control(a.config, "POST", "/stop")
    print("stopping…", flush=True)
    if not _wait_stopped(instance, STOP_WAIT):
        _fail(f"the manager is still stopping after {STOP_WAIT:g} s")
    print("stopped")
    return 0


# ---------------------------------------------------------------------------- smoke


def cmd_smoke(a: argparse.Namespace) -> int:
    """Boot every app and send its smoke requests (manager/smoke.py runs them); print the table."""
    import logging

    from passenger_lite.spawners.registry import default_registry

    from . import config
    from .output import setup_logging
    from .runtimedir import RuntimeDirError
    from .smoke import junit_xml, render_table, run_smoke

    def fail(msg: str, code: int) -> int:
        print(f"{PROG} smoke: {msg}", file=sys.stderr)
        return code

    try:
        site = config.load(a.config, default_registry())
    except ConfigError as e:
        return fail(f"error in {e.render()}", 2)
    if a.listen != "config":
        try:
            site.addresses = [config.parse_address(a.listen, site.path.parent)]
        except ValueError as e:
            return fail(f"--listen: {e}", 2)
    setup_logging("text", sys.stderr, logging.INFO if a.verbose else logging.WARNING)
    try:
        smoke = run_smoke(site, a.timeout, a.verbose)
    except RuntimeDirError as e:
        hint = "; smoke runs a manager of its own: stop that one first" if "already running" in str(e) else ""
        return fail(f"{e}{hint}", 1)
    except OSError as e:
        return fail(str(e), 1)
    colour = sys.stdout.isatty()
    print(render_table(smoke.results, colour) + f" in {smoke.seconds:.1f} s")
    if a.junit:
        try:
            with open(a.junit, "wb") as f:
                f.write(junit_xml(smoke.results, smoke.seconds))
        except OSError as e:
            return fail(f"cannot write {a.junit}: {e.strerror or e}", 1)
    if smoke.interrupted:
        return fail("interrupted", 130)
    return 0 if smoke.results and all(r.ok for r in smoke.results) else 1


# ---------------------------------------------------------------------------- parser


def version() -> str:
    """The installed distribution's version (pyproject.toml), as pip and `pip show` see it."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("passenger-lite")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="A small polyglot app server (Python, Ruby, Node.js).")
    p.add_argument("--version", action="version", version=f"{PROG} {version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, fn, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--config", "-c", default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"site config (default: {DEFAULT_CONFIG}, or $PASSENGER_LITE_CONFIG)")
        sp.set_defaults(func=fn)
        return sp

    sp = add("start", cmd_start, "serve every app of the config in the foreground")
    sp.add_argument("--dev", action="store_true", help="development mode: detailed error pages, restart on file changes")
    add("check", cmd_check, "validate the config and print the routing table")
    sp = add("status", cmd_status, "show apps and workers of the running manager")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp = add("restart", cmd_restart, "rolling restart of one app")
    sp.add_argument("app")
    add("reload", cmd_reload, "re-read the config file (like SIGHUP)")
    add("stop", cmd_stop, "graceful stop")
    sp = sub.add_parser("schema", help="print the config's JSON Schema")
    sp.add_argument("--output", "-o")
    sp.set_defaults(func=cmd_schema)
    sp = sub.add_parser("smoke", help="boot every app, send its smoke requests, report (for CI)",
                        description="Start every app of the config (on an ephemeral port), wait for each to boot, "
                                    "send each app's `smoke:` requests (default: GET of its mount path, expecting "
                                    "a status below 500), print a table and stop. Exit status 0 only if all passed.")
    sp.add_argument("--config", "-c", default=DEFAULT_CONFIG, metavar="FILE",
                    help="site config (default: sites.yaml, or $PASSENGER_LITE_CONFIG)")
    sp.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML")
    sp.add_argument("--timeout", type=float, default=60, metavar="S",
                    help="seconds each app may take to boot, and each request to answer (default: 60)")
    sp.add_argument("--listen", default="127.0.0.1:0", metavar="ADDR",
                    help="where to serve during the run (default: 127.0.0.1:0, an ephemeral port); "
                         "'config' uses the config's own listen addresses")
    sp.add_argument("--verbose", "-v", action="store_true", help="show the manager's log and the workers' output")
    sp.set_defaults(func=cmd_smoke)
    return p


def main(argv: list[str] | None = None) -> None:
    try:
        args = build_parser().parse_args(argv)
        code = args.func(args)
        sys.stdout.flush()  # here, not at exit: a closed pipe is handled below
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # `passenger-lite check | head -1`: the reader is gone; stop quietly, as cat or grep do,
        # with the status a shell gives a process ended by SIGPIPE. Python would otherwise
        # report the pipe again when it flushes stdout on the way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 128 + 13
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
