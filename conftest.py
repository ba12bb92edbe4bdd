"""Fixtures shared by tests/ and integration/."""
import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def open_dir():
    """A temp folder other users can pass through, for apps that run as another user (issue 7):
    pytest's tmp_path is under /tmp/pytest-of-root, which is 0700."""
    d = Path(tempfile.mkdtemp(prefix="pl-open-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)
