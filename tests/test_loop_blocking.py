"""The manager and the proxy in-process on one asyncio loop, under tests/conftest.py's
blockbuster guard: a call in passenger_lite's code that blocks the loop fails these tests (the
integration tests run the CLI in another process, where the guard cannot see)."""
import asyncio
import shutil
from pathlib import Path

import aiohttp
import pytest
import yaml
from blockbuster import BlockingError

from passenger_lite.manager import config as configmod
from passenger_lite.manager.runtime import Runtime
from passenger_lite.spawners.registry import default_registry

APPS = Path(__file__).resolve().parent / "apps"


async def test_the_guard_is_on_for_passenger_lite_code_on_a_loop(tmp_path):
    """The guard itself: a file read by passenger_lite code inside a coroutine is refused."""
    p = tmp_path / "sites.yaml"
    p.write_text("apps: []\n")  # the test's own set-up may block: it is not scanned
    with pytest.raises(BlockingError):
        configmod.read_yaml(p)


def test_the_same_call_outside_a_loop_is_allowed(tmp_path):
    p = tmp_path / "sites.yaml"
    p.write_text("apps: []\n")
    assert configmod.read_yaml(p) == {"apps": []}


@pytest.fixture
def site(open_dir):
    """A one-app site on port 0 (the config is read here, before the loop runs: reading it is a
    start-up step of the CLI, not something the loop does)."""
    root = open_dir / "wsgi_echo"
    shutil.copytree(APPS / "wsgi_echo", root, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = open_dir / "sites.yaml"
    (root / "assets").mkdir()
    (root / "assets" / "hello.txt").write_text("static hello")
    cfg.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:0", "shutdown_timeout": 5, "access_log": str(open_dir / "access.log"),
        "apps": [{"name": "a", "root": str(root), "user": "root", "min_processes": 1, "max_processes": 2,
                  "static": {"/s": "assets"}}]}))
    registry = default_registry()  # entry points are read from disk: also a start-up step
    return configmod.load(cfg, registry), registry


async def test_serving_requests_and_stopping_do_not_block_the_loop(site, caplog):
    rt = Runtime(*site[:1], registry=site[1])
    task = asyncio.create_task(rt.run())
    try:
        async with asyncio.timeout(30):
            while not (rt.poolset and any(w["state"] == "ready" for a in rt.status()["apps"]
                                          for w in a["workers"])):
                assert not task.done(), task
                await asyncio.sleep(0.05)
        url = rt.status()["listen"][0]
        assert not url.endswith(":0"), url  # the bound port, not the configured 0
        async with aiohttp.ClientSession() as http:
            for _ in range(20):
                async with http.get(url + "/env") as r:
                    assert r.status == 200
                    await r.read()
            async with http.get(url + "/s/hello.txt") as r:
                assert (r.status, await r.read()) == (200, b"static hello")
            # past the periodic work: the proxy's and the pools' sweeps (0.5 s), the restart.txt
            # poll (2 s), the access log's flush
            await asyncio.sleep(2.5)
            reload = rt.request("reload")  # the config read again, applied
            await asyncio.wait([reload, task], timeout=30, return_when=asyncio.FIRST_COMPLETED)
            assert reload.done() and reload.result()["ok"], task
            async with http.get(url + "/env") as r:
                assert r.status == 200
                await r.read()
        app = rt.status()["apps"][0]
        assert app["queue"] == 0 and all(w["in_flight"] == 0 for w in app["workers"])
    finally:
        if not task.done():
            await rt.request("stop")
        assert await asyncio.wait_for(task, 30) == 0
    # the manager catches and logs a failed step (a worker start, a sweep): a refused blocking call
    # must not pass unseen that way
    assert "BlockingError" not in caplog.text
