"""Dispatch decisions of AppPool, with fake workers and a scripted clock (no processes)."""
from types import SimpleNamespace

import pytest

from passenger_lite.manager.config import AppConfig
from passenger_lite.manager.pool import AppPool
from passenger_lite.manager.states import AppState, WorkerState
from passenger_lite.manager.worker import Worker
from passenger_lite.proxy.forward import Unavailable


class FakeLoop:
    def __init__(self):
        self.now = 100.0
        self.tasks = []

    def time(self):
        return self.now

    def create_task(self, coro):
        self.tasks.append(coro.cr_code.co_name)
        coro.close()

    def call_later(self, delay, fn, *args):
        return SimpleNamespace(cancel=lambda: None)


class FakePoolSet:
    def __init__(self, room=True):
        self.loop = FakeLoop()
        self.site = SimpleNamespace(config=SimpleNamespace(shutdown_timeout=5))
        self.room = room

    def reserve_slot(self, pool, surge=False):
        return self.room

    def slot_freed(self):
        pass


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


def make_pool(n_workers=1, **kw):
    app = AppConfig(name="a", root="/tmp", type="python-wsgi", **kw)
    if app.concurrency is None:
        app.concurrency = 1
    ps = FakePoolSet()
    pool = AppPool(app, spawner=None, poolset=ps)
    for i in range(n_workers):
        w = Worker(pool, i + 1, f"/nonexistent/{i}.sock")
        pool.workers.append(w)
        w.set_state(WorkerState.READY)
    pool.state = AppState.RUNNING
    return pool, ps.loop


def test_least_busy_worker_with_room_is_chosen():
    pool, _ = make_pool(3, concurrency=2)
    a, b, c = pool.workers
    a.in_flight, b.in_flight, c.in_flight = 1, 0, 2
    assert pool.acquire(Ex("x")) is b
    assert b.in_flight == 1
    assert pool.acquire(Ex("y")) in (a, b)
    assert c.in_flight == 2  # full workers are never picked


def test_full_pool_queues_fifo_and_spawns_one_worker():
    pool, loop = make_pool(1, max_processes=2)
    first = Ex("first")
    w = pool.acquire(first)
    assert w is pool.workers[0]
    queued = [Ex("q1"), Ex("q2")]
    assert pool.acquire(queued[0]) is None and pool.acquire(queued[1]) is None
    assert list(pool.queue) == queued
    assert loop.tasks == ["_spawn_one"]      # one start at a time, not one per queued request
    pool.release(w)
    assert queued[0].worker is w and queued[1].worker is None
    pool.release(w)
    assert queued[1].worker is w


def test_queue_limit_gives_503_and_queue_timeout_gives_504():
    pool, loop = make_pool(1, max_queue=1, queue_timeout=2, max_processes=1)
    pool.acquire(Ex("busy"))
    waiting = Ex("waiting")
    assert pool.acquire(waiting) is None
    with pytest.raises(Unavailable) as e:
        pool.acquire(Ex("too many"))
    assert e.value.status == 503
    loop.now += 1.5
    pool.sweep(loop.now, 0)
    assert waiting.unavailable is None
    loop.now += 1.0
    pool.sweep(loop.now, 0)
    assert waiting.unavailable == 504 and not pool.queue


def test_cancelled_waiter_is_skipped():
    pool, _ = make_pool(1, max_processes=1)
    w = pool.acquire(Ex("busy"))
    gone, stays = Ex("gone"), Ex("stays")
    pool.acquire(gone)
    pool.acquire(stays)
    pool.cancel(gone)
    pool.release(w)
    assert stays.worker is w and gone.worker is None


def test_unlimited_concurrency_scales_out_past_the_threshold():
    pool, loop = make_pool(1, concurrency=0, scale_threshold=3, max_processes=3)
    pool.concurrency = 0
    pool.workers[0].concurrency = 0
    for i in range(3):
        assert pool.acquire(Ex(str(i))) is pool.workers[0]
    assert loop.tasks == []
    pool.acquire(Ex("4th"))
    assert loop.tasks == ["_spawn_one"]


def test_failed_app_answers_503_at_once():
    pool, _ = make_pool(0)
    pool.state = AppState.FAILED
    with pytest.raises(Unavailable) as e:
        pool.acquire(Ex("x"))
    assert e.value.status == 503


def test_draining_worker_takes_no_new_requests():
    pool, loop = make_pool(2)
    a, b = pool.workers
    a.set_state(WorkerState.DRAINING, "test")
    for _ in range(3):
        ex = Ex("x")
        w = pool.acquire(ex)
        assert w is not a
        if w:
            pool.release(w)
