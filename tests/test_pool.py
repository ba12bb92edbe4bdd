"""Dispatch decisions of AppPool, with fake workers and a scripted clock (no processes).

The FakeLoop's `now` is both the loop's time (its timers) and the pool's injected clock
(`AppPool.clock`, which its workers share): a test moves time by adding to `loop.now`.

Every step goes through `Run`, which checks AppPool.check_invariants() (against the exchanges
the test holds) after it, as Passenger's unit tests verify a Group after every event.
"""
from types import SimpleNamespace

import pytest

from passenger_lite.manager.config import AppConfig
from passenger_lite.manager.lifecycle import FAIL_LIMIT
from passenger_lite.manager.pool import AppPool
from passenger_lite.manager.spawnfail import StartFailure
from passenger_lite.manager.states import AppState, WorkerState
from passenger_lite.proxy.checkout import Unavailable

W = WorkerState


class FakeLoop:
    def __init__(self):
        self.now = 100.0
        self.tasks = []
        self.timers = []

    def time(self):
        return self.now

    def create_task(self, coro):
        self.tasks.append(coro.cr_code.co_name)
        coro.close()

    def call_later(self, delay, fn, *args):
        t = SimpleNamespace(when=self.now + delay, fn=fn, args=args, cancelled=False)
        t.cancel = lambda: setattr(t, "cancelled", True)
        self.timers.append(t)
        return t

    def fire(self, name):
        """Run the pending timers calling `name` (as if their time had come)."""
        due = [t for t in self.timers if not t.cancelled and t.fn.__name__ == name]
        assert due, f"no {name} timer pending"
        for t in due:
            self.timers.remove(t)
            t.fn(*t.args)


class FakePoolSet:
    def __init__(self, room=True):
        self.loop = FakeLoop()
        self.site = SimpleNamespace(config=SimpleNamespace(shutdown_timeout=5, max_pool_size=6))
        self.room = room
        self._waiting = []

    def reserve_slot(self, pool, surge=False):
        if not self.room and pool not in self._waiting:
            self._waiting.append(pool)
        return self.room

    def wants_slot(self, pool):
        return pool in self._waiting

    def new_worker(self, pool, wid):
        return pool.make_worker(wid, f"/nonexistent/{wid}.sock")

    def slot_freed(self):
        self._waiting = []

    def backend_gone(self, w):
        self.gone = getattr(self, "gone", []) + [w]


class Ex:
    def __init__(self, name):
        self.name = name
        self.worker = None
        self.unavailable = None
        self.queue_deadline = 0.0
        self.finished = False

    def on_worker(self, w):
        self.worker = w

    def on_unavailable(self, status, message, problem=None):
        self.unavailable = status
        self.finished = True


class Run:
    """The pool plus the exchanges the test holds; every step checks the pool's invariants."""

    def __init__(self, pool):
        self.pool = pool
        self.loop = pool.poolset.loop
        self.exs = []

    def check(self):
        held = {}
        for ex in self.exs:
            if ex.worker is not None:
                held[ex.worker] = held.get(ex.worker, 0) + 1
        assert self.pool.check_invariants(held) == []

    def acquire(self, name="x"):
        ex = Ex(name)
        self.exs.append(ex)
        try:
            w = self.pool.acquire(ex)
        except Unavailable:
            ex.finished = True
            self.check()
            raise
        if w is not None:
            ex.worker = w
        self.check()
        return ex

    def release(self, ex, failed=False, reason=""):
        w, ex.worker = ex.worker, None
        ex.finished = True
        self.pool.release(w, failed=failed, reason=reason)
        self.check()

    def cancel(self, ex):
        ex.finished = True
        self.pool.cancel(ex)
        self.check()

    def exit(self, w, code=-9):
        """The worker's process ended (what Worker._wait_exit reports)."""
        w.exit_code = code
        self.pool.on_worker_exit(w)
        self.check()

    def sweep(self):
        self.pool.sweep(self.loop.now, self.pool.clock())
        self.check()


def make_pool(n_workers=1, **kw):
    app = AppConfig(name="a", root="/tmp", type="python-wsgi", **kw)
    if app.concurrency is None:
        app.concurrency = 1
    ps = FakePoolSet()
    pool = AppPool(app, spawner=None, poolset=ps, clock=lambda: ps.loop.now)  # (scripted_pool swaps the loop)
    for i in range(n_workers):
        w = pool.make_worker(i + 1, f"/nonexistent/{i}.sock")
        w.pid = 10_000 + i
        w.ready_mono = pool.clock() - 60.0  # up a minute: past any min_uptime of these tests
        pool.workers.append(w)
        w.set_state(WorkerState.READY, level=None)  # as Worker.start (the pool logs "ready in N ms")
    pool._next_id = n_workers + 1
    pool.state = AppState.RUNNING
    assert pool.check_invariants({}) == []
    return pool, ps.loop


def make_run(n_workers=1, **kw):
    pool, loop = make_pool(n_workers, **kw)
    return Run(pool), pool, loop


def test_least_busy_worker_with_room_is_chosen():
    r, pool, _ = make_run(3, concurrency=2)
    a, b, c = pool.workers
    held = [r.acquire() for _ in range(3)]  # 1 + 1 + 1, then c takes one more below
    r.release(held[1])
    r.exs.append(Ex("on c"))
    c.in_flight += 1
    r.exs[-1].worker = c
    r.check()
    # loads now: a 1/2 or b 1/2 (whichever kept one), c 2/2
    x = r.acquire("x")
    assert x.worker is not c and x.worker.in_flight <= 2
    y = r.acquire("y")
    assert y.worker is not c  # full workers are never picked
    assert c.in_flight == 2


def test_full_pool_queues_fifo_and_spawns_one_worker():
    r, pool, loop = make_run(1, max_processes=2)
    first = r.acquire("first")
    w = first.worker
    assert w is pool.workers[0]
    q1, q2 = r.acquire("q1"), r.acquire("q2")
    assert list(pool.queue) == [q1, q2]
    assert loop.tasks == ["_spawn_one"]      # one start at a time, not one per queued request
    assert pool.starting == 1 and pool.workers[1].state is W.STARTING
    r.release(first)
    assert q1.worker is w and q2.worker is None
    r.release(q1)
    assert q2.worker is w


def test_queue_limit_gives_503_and_queue_timeout_gives_504():
    r, pool, loop = make_run(1, max_queue=1, queue_timeout=2, max_processes=1)
    r.acquire("busy")
    waiting = r.acquire("waiting")
    assert waiting.worker is None
    with pytest.raises(Unavailable) as e:
        r.acquire("too many")
    assert e.value.status == 503
    loop.now += 1.5
    r.sweep()
    assert waiting.unavailable is None
    loop.now += 1.0
    r.sweep()
    assert waiting.unavailable == 504 and not pool.queue


def test_cancelled_waiter_is_skipped():
    r, pool, _ = make_run(1, max_processes=1)
    busy = r.acquire("busy")
    w = busy.worker
    gone, stays = r.acquire("gone"), r.acquire("stays")
    r.cancel(gone)
    r.release(busy)
    assert stays.worker is w and gone.worker is None


def test_unlimited_concurrency_scales_out_past_the_threshold():
    r, pool, loop = make_run(1, concurrency=0, scale_threshold=3, max_processes=3)
    pool.concurrency = 0
    pool.workers[0].concurrency = 0
    for i in range(3):
        assert r.acquire(str(i)).worker is pool.workers[0]
    assert loop.tasks == []
    r.acquire("4th")
    assert loop.tasks == ["_spawn_one"]


def test_failed_app_answers_503_at_once():
    r, pool, _ = make_run(0)
    pool.state = AppState.FAILED
    with pytest.raises(Unavailable) as e:
        r.acquire("x")
    assert e.value.status == 503


def test_draining_worker_takes_no_new_requests():
    r, pool, loop = make_run(2)
    a, b = pool.workers
    pool._drain(a, "test")
    r.check()
    for _ in range(3):
        ex = r.acquire("x")
        assert ex.worker is not a
        if ex.worker:
            r.release(ex)


# ---------------------------------------------------------------------------- invariants


def test_invariants_catch_a_leaked_checkout_and_a_stuck_queue():
    """The check can fail: each broken state is named."""
    pool, loop = make_pool(1, max_processes=1)
    w = pool.workers[0]
    w.in_flight = 1  # counted busy, but no exchange holds it (issue 11, item 1)
    assert any("1 in flight but 0 exchange" in p for p in pool.check_invariants({}))
    assert pool.check_invariants({w: 1}) == []
    w.in_flight = 0
    pool.queue.append(Ex("waits"))  # a request waits while the worker is free
    assert any("could take one" in p for p in pool.check_invariants({}))
    pool.ready.clear()               # ... and the ready list no longer matches the states
    assert any("ready list" in p for p in pool.check_invariants({}))
    pool.ready.append(w)
    pool.queue.clear()
    pool.starting = 1                # a start counted that nobody runs
    assert any("starting = 1" in p for p in pool.check_invariants({}))


# ---------------------------------------------------------------------------- faults (issue 11)


def test_a_failed_request_takes_the_worker_out_and_its_exit_counts_as_a_crash(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="passenger_lite.manager")
    r, pool, loop = make_run(2, min_processes=2, max_processes=2)
    a, b = pool.workers
    ex = r.acquire()
    assert ex.worker is a
    r.release(ex, failed=True, reason="cannot connect to its socket")
    assert a.state is W.DRAINING and a not in pool.ready   # out of rotation at once
    said = [(rec.levelno, rec.getMessage()) for rec in caplog.records]
    assert said == [(logging.WARNING, "a#1: ready -> draining (cannot connect to its socket; out of rotation)")]
    assert loop.tasks == ["_confirm_fault"] and pool.crashes == 0
    assert r.acquire("next").worker is b
    r.exit(a)                                               # ... it had died: same as any exit
    assert pool.crashes == 1 and a not in pool.workers
    assert loop.tasks[-1] == "_spawn_one" and pool.starting == 1  # replaced, keeping min_processes


def test_an_exit_noticed_first_is_handled_the_same():
    r, pool, loop = make_run(2, min_processes=2, max_processes=2)
    a, _ = pool.workers
    ex = r.acquire()
    r.exit(a)
    assert pool.crashes == 1 and loop.tasks == ["_spawn_one"]
    r.release(ex, failed=True, reason="cannot connect")    # the exchange learns later: nothing more
    assert pool.crashes == 1 and loop.tasks == ["_spawn_one"]


def test_a_crash_within_min_uptime_is_a_failed_start_and_backs_off_to_failed():
    r, pool, loop = make_run(0, min_processes=1, min_uptime=5)
    pool.ensure_min()
    r.check()
    waiting = []
    for n in range(1, FAIL_LIMIT + 1):
        w = pool.workers[-1]
        assert w.state is W.STARTING and pool.starting == 1
        w.pid = 20_000 + n                                   # it boots and answers its probe...
        w.output.append("about to die")
        w.ready_mono = loop.now
        w.set_state(W.READY)
        pool._became_ready(w, loop.now)
        assert all(ex.worker is w for ex in waiting[-1:])      # (the request that waited is served)
        for ex in waiting[-1:]:
            r.release(ex)
        r.check()
        loop.now += 1.0
        r.exit(w, code=1)                                    # ... and exits a second later
        assert pool.failures == n and pool.crashes == n and pool.failed_starts == n
        assert "within min_uptime (5 s)" in pool.last_failure.message
        assert "about to die" in pool.last_failure.output
        if n < FAIL_LIMIT:
            assert pool.state is AppState.BACKOFF
            waiting.append(r.acquire())  # it may have been one crash: requests wait for the next try
            assert waiting[-1] in pool.queue and pool.starting == 0
            loop.fire("_retry")                              # the backoff delay has passed
            r.check()
    assert pool.state is AppState.FAILED and pool.starting == 0
    with pytest.raises(Unavailable) as e:  # now 503 at once, the error page with the reason
        r.acquire()
    assert e.value.problem is pool.last_failure and "min_uptime" in e.value.problem.message


def test_a_worker_that_stays_up_min_uptime_resets_the_failures():
    r, pool, loop = make_run(1, min_uptime=5)
    w = pool.workers[0]
    pool.failures = 3
    w.ready_mono = loop.now
    loop.now += 1
    r.sweep()
    assert pool.failures == 3 and not w.proven
    loop.now += 4
    r.sweep()
    assert pool.failures == 0 and w.proven


def test_a_drain_ends_at_shutdown_timeout():
    r, pool, loop = make_run(2)
    a, _ = pool.workers
    ex = r.acquire()
    assert ex.worker is a
    pool._drain(a, "restart")
    assert a.state is W.DRAINING and loop.tasks == []       # its request may finish...
    loop.fire("_drain_expired")                            # ... until shutdown_timeout
    assert a.state is W.STOPPING and loop.tasks == ["kill"]
    r.release(ex)
    assert loop.tasks == ["kill"]


def test_load_never_takes_the_surge_slot_of_a_restart():
    r, pool, loop = make_run(2, max_processes=2)
    pool._surge = 1                                        # a replacement is on its way
    r.acquire()
    r.acquire()
    r.acquire("waits")
    assert loop.tasks == []                                # at max_processes: it waits, no extra worker


def test_min_uptime_key_has_a_default_and_is_validated(tmp_path):
    from passenger_lite.manager import config
    from passenger_lite.spawners.registry import default_registry

    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "wsgi.py").write_text("def application(e, s):\n    pass\n")
    p = tmp_path / "sites.yaml"
    p.write_text("apps:\n  - name: a\n    root: ./app\n")
    assert config.load(p, default_registry()).apps[0].min_uptime == 5
    p.write_text("apps:\n  - name: a\n    root: ./app\n    min_uptime: -1\n")
    with pytest.raises(config.ConfigError) as e:
        config.load(p, default_registry())
    assert [(x.key, x.line) for x in e.value.problems] == [("apps[0] (a).min_uptime", 4)]


def test_app_transitions_are_checked_and_each_is_logged_once_at_info(caplog):
    import logging

    from passenger_lite.manager.states import InvalidTransition

    caplog.set_level(logging.INFO, logger="passenger_lite.manager")
    r, pool, loop = make_run(1, min_processes=1, min_uptime=5)
    w = pool.workers[0]
    w.ready_mono = loop.now
    loop.now += 1.0
    r.exit(w, code=1)                                      # within min_uptime: a failed start
    lines = [rec.getMessage() for rec in caplog.records if " -> " in rec.getMessage()]
    assert lines[0] == "a: running -> idle (worker #1 exited; none left)"
    assert lines[1].startswith("a: idle -> backoff (exit status 1; next try in ") and lines[1].endswith(" s)")
    assert all(rec.levelno == logging.INFO for rec in caplog.records if " -> " in rec.getMessage())
    loop.fire("_retry")
    r.check()
    assert [rec.getMessage() for rec in caplog.records].count("a: backoff -> starting (next try)") == 1
    assert pool.state is AppState.STARTING and pool.starting == 1
    pool.state = AppState.STOPPED
    with pytest.raises(InvalidTransition):                 # a stopped app never comes back
        pool._set_state(AppState.RUNNING)
    assert pool.stopping


# ---------------------------------------------------------------------------- a scripted start (no processes)


class StepLoop(FakeLoop):
    """FakeLoop that runs each task at once, to its end: the scripted start never really waits."""

    def create_task(self, coro):
        self.tasks.append(coro.cr_code.co_name)
        return run_now(coro)


def run_now(coro):
    try:
        while True:
            assert coro.send(None) is None, "a scripted step waited on something"
    except StopIteration as e:
        return e.value


class Script:
    """The pool's start seam, scripted: each start fails (StartFailure) or the worker is ready."""

    def __init__(self, pool, outcomes):
        self.pool = pool
        self.outcomes = list(outcomes)  # True: ready; False: exits during start
        self.started = []

    async def __call__(self, w):
        self.started.append(w.id)
        if not self.outcomes.pop(0):
            raise StartFailure(self.pool.name, "start", "the worker exited during start (exit status 1)",
                               exit="exit status 1", output="boom")
        w.pid = 4_000_000 + w.id  # above pid_max: never a real process (nothing signals it: no exit task)
        w.ready_mono = self.pool.clock()
        w.set_state(W.READY, level=None)  # as Worker.start: the pool logs "ready in N ms"


def scripted_pool(outcomes, n_workers=0, **kw):
    pool, _ = make_pool(n_workers, **kw)
    loop = pool.poolset.loop = StepLoop()
    script = pool.start_worker = Script(pool, outcomes)
    return Run(pool), pool, loop, script


def test_scripted_starts_back_off_then_the_app_is_failed_after_five_then_a_restart_brings_it_back():
    r, pool, loop, script = scripted_pool([False] * FAIL_LIMIT + [True], min_processes=1)
    pool.state = AppState.IDLE
    pool.ensure_min()
    r.check()
    delays = []
    for n in range(1, FAIL_LIMIT):
        assert pool.state is AppState.BACKOFF and pool.failures == n and not pool.workers
        t = next(t for t in loop.timers if not t.cancelled and t.fn.__name__ == "_retry")
        delays.append(t.when - loop.now)
        loop.fire("_retry")
        r.check()
    assert pool.state is AppState.FAILED and pool.failed_starts == FAIL_LIMIT and script.started == [1, 2, 3, 4, 5]
    assert all(0.75 * 0.5 * 2 ** i <= d <= 1.25 * 0.5 * 2 ** i for i, d in enumerate(delays))  # 0.5 s doubling, +-25 %
    with pytest.raises(Unavailable):
        r.acquire()
    assert run_now(pool.restart("fixed")) is True
    r.check()
    assert pool.state is AppState.RUNNING and [w.state for w in pool.workers] == [W.READY]
    assert pool.failures == 0 and r.acquire().worker is pool.workers[0]


def test_a_scripted_rolling_restart_has_each_new_worker_ready_before_its_old_one_drains(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="passenger_lite.manager")
    r, pool, loop, script = scripted_pool([True, True], n_workers=2, min_processes=2, max_processes=2)
    old = list(pool.workers)
    events = []
    orig = pool.on_worker_state
    for w in old:
        w._on_state = lambda w, o, n, why: (events.append((w.id, n)), orig(w, o, n, why))
    assert run_now(pool.restart("config reload")) is True
    r.check()
    assert script.started == [3, 4]
    assert [w.state for w in old] == [W.STOPPING, W.STOPPING]   # asked to stop once replaced
    assert events == [(1, W.DRAINING), (1, W.STOPPING), (2, W.DRAINING), (2, W.STOPPING)]
    new = [w for w in pool.workers if w not in old]
    assert [w.state for w in new] == [W.READY, W.READY] and pool.ready == new
    assert pool.last_restart_result == "2 worker(s) replaced, each after its replacement was ready"
    msgs = [rec.getMessage() for rec in caplog.records]
    ready3 = next(i for i, m in enumerate(msgs) if m.startswith("a: worker #3 (pid 4000003) ready in "))
    drain1 = msgs.index("a#1: ready -> draining (restart (config reload))")
    assert ready3 < drain1
    for w in old:  # each transition logged once, at INFO, in the app's format; no second line for it
        for line in (f"a#{w.id}: ready -> draining (restart (config reload))",
                     f"a#{w.id}: draining -> stopping (restart (config reload))"):
            assert msgs.count(line) == 1, msgs
    assert not [m for m in msgs if "stopping worker" in m]
    assert all(rec.levelno == logging.INFO for rec in caplog.records if " -> " in rec.getMessage())
    for w in old:
        r.exit(w, code=0)
    assert pool.workers == new and pool.crashes == 0 and pool.state is AppState.RUNNING


def test_boot_state_says_booting_then_up_or_failed_and_the_booted_event_is_set_once_over():
    import asyncio

    async def main():
        r, pool, loop, script = scripted_pool([False, True], min_processes=1)
        pool.state = AppState.IDLE
        assert pool.boot_state().state == "booting" and not pool.booted.is_set()
        pool.ensure_min()                      # the first start fails: backoff, nothing ready
        r.check()
        b = pool.boot_state()
        assert (b.state, b.ready, b.min_processes, b.all_ready) == ("failed", 0, 1, False)
        assert b.last_error == "the worker exited during start (exit status 1)" and pool.booted.is_set()
        loop.fire("_retry")
        r.check()
        assert pool.boot_state().state == "up" and pool.boot_state().all_ready

        r, pool, loop, script = scripted_pool([True, False], min_processes=2)
        pool.state = AppState.IDLE
        pool.ensure_min()                      # one worker ready (up, as /health wants), the other fails
        r.check()
        b = pool.boot_state()
        assert (b.state, b.ready, b.all_ready, b.idle) == ("up", 1, False, False) and b.last_error is not None
        assert pool.booted.is_set()

        idle, _ = make_pool(0, min_processes=0)
        idle.state = AppState.IDLE
        b = idle.boot_state()
        assert (b.state, b.idle, b.all_ready) == ("up", True, False) and idle.booted.is_set()

        waiting, _ = make_pool(0, min_processes=1)
        waiting.state = AppState.IDLE
        waiter = asyncio.ensure_future(waiting.booted.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        w = waiting._new_worker()              # IDLE -> STARTING: still booting
        assert not waiting.booted.is_set()
        w.pid = 4_000_001
        w.set_state(W.READY)
        waiting._became_ready(w, 0.0)          # STARTING -> RUNNING: the boot is over
        await asyncio.wait_for(waiter, 5)
        assert waiting.boot_state().state == "up"

    asyncio.run(main())
