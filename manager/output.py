"""What the manager prints: worker output lines with an app/worker prefix, and its own log.

Lines read `12:00:01 blog.2[4242] | text`, whole lines only (each is one write), the prefix
coloured per app on a TTY and plain otherwise, as foreman and honcho users expect. With
`log_format: json` every line is a JSON object instead.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TextIO

COLOURS = ["36", "33", "32", "35", "34", "31", "96", "93", "92", "95", "94", "91"]


class Printer:
    def __init__(self, stream: TextIO | None = None, fmt: str = "text", colour: bool | None = None):
        self.stream = stream or sys.stderr
        self.json = fmt == "json"
        self.colour = (self.stream.isatty() if colour is None else colour) and not self.json
        self._colours: dict[str, str] = {}
        self.width = 12

    def _prefix(self, app: str, tag: str) -> str:
        if not self.colour:
            return tag
        c = self._colours.get(app)
        if c is None:
            c = self._colours[app] = COLOURS[len(self._colours) % len(COLOURS)]
        return f"\x1b[{c}m{tag}\x1b[0m"

    def worker_line(self, worker, text: str, kind: str) -> None:
        if self.json:
            line = json.dumps({"time": round(time.time(), 3), "app": worker.app, "worker": worker.id,
                               "pid": worker.pid, "stream": kind, "line": text})
        else:
            tag = f"{worker.app}.{worker.id}[{worker.pid}]"
            self.width = max(self.width, len(tag))
            line = f"{time.strftime('%H:%M:%S')} {self._prefix(worker.app, tag.ljust(self.width))} | {text}"
        self._write(line)

    def _write(self, line: str) -> None:
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass


class _TextFormatter(logging.Formatter):
    def __init__(self, colour: bool):
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            msg += "\n" + self.formatException(record.exc_info)
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        if self.colour and record.levelno >= logging.WARNING:
            level = f"\x1b[{'31' if record.levelno >= logging.ERROR else '33'}m{level}\x1b[0m"
        return f"{time.strftime('%H:%M:%S', time.localtime(record.created))} passenger-lite | {level}{msg}"


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": round(record.created, 3), "level": record.levelname.lower(),
                           "logger": record.name, "message": record.getMessage()})


class LogFile:
    """The `log_file` stream: appended to, one write per line, reopened on SIGUSR1 (after
    logrotate moved it). Quacks like the text stream the Printer and logging expect.

    A full disk (quota, I/O error) is said once on stderr; lines are then dropped and counted, and the
    count is written (to the file and stderr) when writing works again. A line the disk could only
    take part of is cut back off, so the file never holds a torn line. Writes never raise, so
    logging never prints its "Logging error" tracebacks."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd = self._open()
        self.dropped = 0     # lines dropped since the disk became full
        self.full = False

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise OSError(e.errno, f"cannot open log_file {self.path}: {e.strerror or e}") from None

    def write(self, text: str) -> int:
        data = text.encode("utf-8", "replace")
        if self.full:
            note = (f"{time.strftime('%H:%M:%S')} passenger-lite | log_file {self.path}: {self.dropped} "
                    f"line(s) dropped while it could not be written\n").encode()
            if self._write(note + data) is not None:
                self.dropped += 1
                return len(text)
            self.full = False
            _stderr(note.decode().split(" | ", 1)[1].rstrip("\n"))
            self.dropped = 0
        else:
            why = self._write(data)
            if why is not None:
                self.full = True
                self.dropped = 1
                _stderr(f"error: log_file {self.path}: {why}; dropping log lines until it can be written "
                        f"again (they are counted)")
        return len(text)

    def _write(self, data: bytes) -> str | None:
        """Append all of `data` or none of it; None, or why not (disk full, quota...)."""
        try:
            n = os.write(self._fd, data)
        except OSError as e:
            return e.strerror or str(e)
        if n < len(data):  # only part of it fit: cut that back off, so no torn line stays
            try:
                os.ftruncate(self._fd, os.fstat(self._fd).st_size - n)
            except OSError:
                pass
            return os.strerror(errno.ENOSPC)
        return None

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def reopen(self) -> None:
        new = self._open()
        old, self._fd = self._fd, new
        os.close(old)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _stderr(msg: str) -> None:
    try:
        sys.stderr.write(f"{time.strftime('%H:%M:%S')} passenger-lite | {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def log_path(site, key: str) -> Path | None:
    """An absolute path for the `log_file` / `access_log` key (relative to the config file)."""
    value = getattr(site.config, key)
    if not value or value == "-":
        return None
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else site.path.parent / p


def open_log_stream(site) -> TextIO:
    """Where the manager's log and the workers' output go: `log_file`, or stderr."""
    path = log_path(site, "log_file")
    return LogFile(path) if path is not None else sys.stderr


def setup_logging(fmt: str = "text", stream: TextIO | None = None, level: int = logging.INFO) -> None:
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    colour = fmt != "json" and stream.isatty()
    handler.setFormatter(_JSONFormatter() if fmt == "json" else _TextFormatter(colour))
    root = logging.getLogger("passenger_lite")
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def reopen_logs(files: list) -> None:
    """SIGUSR1 (through the runtime's command queue): reopen the log files (access_log, log_file)
    after logrotate moved them."""
    files = [f for f in files if f is not None and hasattr(f, "reopen")]
    for f in files:
        try:
            f.reopen()
        except OSError as e:
            logging.getLogger("passenger_lite.manager").error("cannot reopen a log file: %s", e)
    if files:
        logging.getLogger("passenger_lite.manager").info("log files reopened (SIGUSR1)")
