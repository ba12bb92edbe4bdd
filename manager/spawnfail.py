"""Why a worker could not start (`StartFailure`), how an exit reads, and the fix hints. A leaf module.

The error page, the log and `smoke` show a StartFailure; users.py, poolset.py, worker.py and the
pool raise or read it.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass, field


@dataclass
class StartFailure(Exception):
    """Why a worker could not start: shown on the development error page and logged."""

    app: str
    step: str
    message: str
    command: str = ""
    cwd: str = ""
    exit: str = ""
    output: str = ""
    hints: list[str] = field(default_factory=list)
    repeated: bool = False  # its output is the last failed start's, and was not printed again

    def __str__(self) -> str:
        return f"{self.app}: {self.step}: {self.message}"


def describe_exit(code: int | None) -> str:
    if code is None:
        return ""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


HINTS = [
    ("ModuleNotFoundError", "A module could not be imported: is the app's `python:` the interpreter of its "
                            "virtualenv, and are its dependencies installed there?"),
    ("ImportError", "An import failed: check the app's dependencies and its `entry:`."),
    ("SyntaxError", "The app's code has a syntax error: see the file and line above."),
    ("cannot load such file", "Ruby could not load a file or gem: is it installed (Debian: ruby-<gem>) and "
                              "in the Gemfile?"),
    ("Cannot find module", "Node could not find a module: run `npm install` in the app's folder."),
    ("EADDRINUSE", "The app tried to listen on a port that is taken. passenger-lite gives every worker its "
                   "own socket: listen on process.env.PORT, or let the preload take over listen()."),
    ("Address already in use", "The app tried to listen on an address that is taken; it should use the "
                               "socket or $PORT passenger-lite gives it."),
    ("Permission denied", "A file or folder could not be read: check the owner and mode of the app's files."),
]


def hints_for(output: str) -> list[str]:
    return [h for needle, h in HINTS if needle in output]
