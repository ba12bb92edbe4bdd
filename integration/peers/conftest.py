"""Peers' own test suites run against passenger-lite (issue 11 item 14): every test in this folder
is marked `peers`, so `python -m pytest -q` runs them and `-m "not peers"` leaves them out while
iterating. What they need (a pinned `requests` sdist, httpbin, the Autobahn test suite in a Python
2.7 virtualenv) is installed by .ci/setup-peers."""
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# Where .ci/setup-peers puts what it downloads: inside the virtualenv the tests run from.
PEERS_DIR = Path(sys.prefix) / "peers"


def pytest_configure(config):
    config.addinivalue_line("markers", "peers: a peer project's own test suite run through passenger-lite "
                                       "(issue 11 item 14); deselect with -m 'not peers'")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.peers)


def need(path: Path, what: str) -> Path:
    """A file .ci/setup-peers installs; its absence is a failure (never a skip: CI runs setup-peers)."""
    if not path.exists():
        pytest.fail(f"{path} is missing: run `bash .ci/setup-peers` ({what})")
    return path
