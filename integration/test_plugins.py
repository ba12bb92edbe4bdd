"""Issue 3: a third-party spawner, installed as a real package, serves through passenger-lite."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import REPO, run_cli

PLUGIN = REPO / "tests" / "plugins" / "hello_text"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> str:
    """The plugin installed with pip into a folder of its own (the environment is untouched)."""
    tmp = tmp_path_factory.mktemp("plugin")
    src = tmp / "src"
    shutil.copytree(PLUGIN, src)  # the build writes into its source folder
    target = tmp / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return str(target)


def env_with(path: str) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")])))


def hello_app(apps_dir: Path) -> Path:
    root = apps_dir / "hello"
    root.mkdir()
    (root / "hello.txt").write_text("hello from a plugin\n")
    return root


def test_plugin_is_detected_and_serves(make_server, apps_dir, plugin_path):
    root = hello_app(apps_dir)
    s = make_server({"apps": [{"name": "hello", "root": str(root), "path": "/hi"},
                              {"name": "py", "root": str(REPO / "tests" / "apps" / "wsgi_echo")}]},
                    env=env_with(plugin_path))
    status, headers, body = s.get("/hi/there")
    assert status == 200 and body == b"hello from a plugin\n"
    assert s.app_status("hello")["type"] == "hello-text"
    assert s.get("/")[2] == b"hello from wsgi\n"


def test_check_lists_plugin_types_and_reports_a_broken_plugin(tmp_path, plugin_path):
    root = hello_app(tmp_path)
    cfg = tmp_path / "sites.yaml"
    cfg.write_text(f"apps:\n  - name: hello\n    root: {root}\n    user: root\n")  # in pytest's 0700 tmp
    r = run_cli("check", "--config", str(cfg), env=env_with(plugin_path))
    assert r.returncode == 0, r.stderr
    assert "hello-text" in r.stdout
    assert "spawner plugin 'hello-broken'" in r.stderr and "failed to load" in r.stderr
    # without the plugin nothing serves that folder, and the error says what was seen
    r = run_cli("check", "--config", str(cfg))
    assert r.returncode == 2 and "cannot tell" in r.stderr and "hello.txt" in r.stderr
