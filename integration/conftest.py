import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Server  # noqa: E402


@pytest.fixture
def make_server(tmp_path):
    """Start passenger-lite servers for a test; every one is stopped (and checked for leftover
    processes) at the end, even when the test fails."""
    servers = []

    def make(config, **kw) -> Server:
        s = Server(tmp_path / f"s{len(servers)}", config, **kw)
        servers.append(s)
        s.start()
        return s

    yield make
    errors = []
    for s in servers:
        try:
            if s.proc is not None and s.proc.poll() is None:
                s.stop()
            else:
                s.assert_no_leftovers()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n".join(errors))


@pytest.fixture
def apps_dir(tmp_path):
    d = tmp_path / "apps"
    d.mkdir()
    return d
