import sys
from pathlib import Path

import pytest
from blockbuster import blockbuster_ctx

APPS = Path(__file__).resolve().parent / "apps"
sys.path.insert(0, str(Path(__file__).resolve().parent))

# passenger_lite's own code: a blocking call fails the test only when one of these is on its stack
# (the test's own set-up, pytest and the libraries' internals are not what we audit)
SCANNED = ["passenger_lite.manager", "passenger_lite.proxy", "passenger_lite.spawners"]

# (file, functions) where blocking is allowed: a blocking call with one of these on its stack passes.
MUST_BLOCK = [
    # fork + exec: asyncio's own subprocess transport (create_subprocess_exec) waits on the exec
    # handshake pipe, and Popen takes its lock; the child's exec is what it waits for
    ("manager/worker.py", "start"),
    # once before the first request, or after the last one (nothing is served meanwhile): the
    # instance lock and runtime folders, the watchdog and its cgroup, the control socket's file, the
    # restart.txt baseline; and at stop, waiting for the watchdog to exit and the last log flush
    ("manager/runtimedir.py", {"__init__", "lock", "unlock"}),
    ("manager/watchdog.py", {"start", "close", "stop_descendants"}),
    ("manager/control.py", {"start", "stop"}),
    ("manager/watch.py", "start"),
    ("manager/accesslog.py", "stop"),
    ("proxy/server.py", "__init__"),  # the static folders' first look (Proxy() is made before listen)
    # a static file's lookup: one stat per file (cached per folder until the next refresh), as nginx
    # does on its event loop; handing it to a thread would cost more than the stat
    ("proxy/static.py", "variants_of"),
    # the access log writes its buffer to a local file once per FLUSH_EVERY / FLUSH_SIZE (nginx's
    # `access_log buffer=`); a thread hop per flush costs more than the write
    ("manager/accesslog.py", "flush"),
    # a function-level import reads its module file the first time only (issue 13 item 5 moves
    # these imports to the top)
    ("<frozen importlib._bootstrap_external>", {"get_data", "path_stats", "_path_stat"}),
    ("<frozen importlib._bootstrap_external>", {"_fill_cache", "find_spec"}),
]

# Real blocking calls on the serving loop, found by this guard and left for the lifecycle and
# proxy rework (issue 13): listed so that a NEW one still fails the tests.
KNOWN = [
    # per spawn: the worker's socket folder is made (runtimedir WorkerDirs.make), and the user's
    # access checks stat the app's files and read pyvenv.cfg (users.apply_user)
    ("manager/poolset.py", "worker_spec"),
    # per spawn and per exit: the worker's cgroup made, killed and removed (cgroupfs: in-kernel,
    # no disk; the removal already retries on a timer, not in a loop)
    ("manager/descendants.py", {"worker_cgroup", "worker_ended", "_remove_later"}),
    # per spawn and per exit: a few bytes to the watchdog's pipe (blocks only if it stops reading)
    ("manager/watchdog.py", "_send"),
    # every 2 s: stat of each app's tmp/restart.txt
    ("manager/watch.py", "_check_restart_txt"),
    # every 0.5 s: stat of each static folder (proxy/server.py _sweep -> static refresh); and on
    # reload, the static folders are looked at again (Proxy.configure)
    ("proxy/static.py", "refresh"),
    ("proxy/server.py", "configure"),
]


@pytest.fixture(autouse=True)
def blockbuster():
    """Fail any test whose passenger_lite code blocks a running event loop (file, socket and pipe
    I/O, sleeps, lock waits), as aiohttp's suite does. Outside a running loop nothing is checked, so
    the synchronous tests only pay for the patching. Every allowance above says why."""
    with blockbuster_ctx(SCANNED) as bb:
        for fn in bb.functions.values():
            for filename, functions in MUST_BLOCK + KNOWN:
                fn.can_block_in(filename, functions)
        yield bb
