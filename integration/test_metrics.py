"""Issue 6: Prometheus metrics and /health on metrics_listen, scraped under load."""
import http.client
import json
import threading

from prometheus_client.parser import text_string_to_metric_families

from harness import app_config, copy_app, free_port
from passenger_lite.manager.unixhttp import UnixHTTPConnection
from rawhttp import poll_until


def scrape(port_or_path, path: str = "/metrics") -> tuple[int, str, str]:
    if isinstance(port_or_path, int):
        c = http.client.HTTPConnection("127.0.0.1", port_or_path, timeout=10)
    else:
        c = UnixHTTPConnection(str(port_or_path), 10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.getheader("Content-Type"), r.read().decode()
    finally:
        c.close()


def samples(text: str) -> dict:
    """{(name, frozenset(labels.items())): value} of every sample."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(smp: dict, name: str, **labels) -> float:
    return smp[(name, frozenset(labels.items()))]


def test_counters_add_up_to_the_requests_sent_under_load(make_server, apps_dir):
    mport = free_port()
    ops = copy_app("ops_app", apps_dir)
    s = make_server({"metrics_listen": f"127.0.0.1:{mport}",
                     "apps": [app_config("ops", ops, min_processes=2, max_processes=2, concurrency=1),
                              app_config("other", ops, path="/other", min_processes=0)]})
    plan = {"/": 200, "/status?code=404": 404, "/status?code=500": 500, "/status?code=302": 302}
    per_thread = 30
    threads = 6
    sent = {p: 0 for p in plan}
    errors = []
    lock = threading.Lock()

    def client(k: int) -> None:
        c = s.connection()
        try:
            for i in range(per_thread):
                path = list(plan)[(i + k) % len(plan)]
                c.request("GET", path)
                r = c.getresponse()
                r.read()
                if r.status != plan[path]:
                    errors.append((path, r.status))
                with lock:
                    sent[path] += 1
        finally:
            c.close()

    scrapes = []
    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    while any(t.is_alive() for t in workers):  # scrape while the load runs
        status, ctype, text = scrape(mport)
        assert status == 200 and ctype.startswith("text/plain")
        scrapes.append(samples(text))
    for t in workers:
        t.join()
    assert not errors, errors[:5]
    final = samples(scrape(mport)[2])
    total = threads * per_thread

    def count(smp, cls):
        return value(smp, "passenger_lite_requests_total", app="ops", code=cls)

    assert count(final, "2xx") == sent["/"]
    assert count(final, "3xx") == sent["/status?code=302"]
    assert count(final, "4xx") == sent["/status?code=404"]
    assert count(final, "5xx") == sent["/status?code=500"]
    assert sum(count(final, c) for c in ("1xx", "2xx", "3xx", "4xx", "5xx")) == total
    assert value(final, "passenger_lite_request_duration_seconds_count", app="ops") == total
    assert value(final, "passenger_lite_queue_wait_seconds_count", app="ops") == total
    assert value(final, "passenger_lite_request_duration_seconds_bucket", app="ops", le="+Inf") == total
    buckets = sorted(((float(dict(k[1])["le"]), v) for k, v in final.items()
                      if k[0] == "passenger_lite_request_duration_seconds_bucket" and dict(k[1])["app"] == "ops"))
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert value(final, "passenger_lite_request_duration_seconds_sum", app="ops") > 0
    # what was scraped during the load never went backwards and never exceeded what was sent
    seen = [sum(count(smp, c) for c in ("2xx", "3xx", "4xx", "5xx")) for smp in scrapes]
    assert seen == sorted(seen) and all(n <= total for n in seen)
    # the pool's side
    assert value(final, "passenger_lite_workers", app="ops", state="ready") == 2
    assert value(final, "passenger_lite_workers", app="other", state="ready") == 0
    assert value(final, "passenger_lite_worker_spawns_total", app="ops") == 2
    assert value(final, "passenger_lite_worker_crashes_total", app="ops") == 0
    assert value(final, "passenger_lite_queue_length", app="ops") == 0
    assert value(final, "passenger_lite_memory_rss_bytes", app="ops") > 2_000_000
    assert value(final, "passenger_lite_app_up", app="ops") == 1
    assert value(final, "passenger_lite_app_up", app="other") == 1  # idle by design
    assert s.app_status("ops")["requests"] == total  # status and metrics agree
    # a restart shows up too
    assert s.cli("restart", "ops").returncode == 0
    st = samples(scrape(mport)[2])
    assert value(st, "passenger_lite_app_restarts_total", app="ops") == 1
    assert value(st, "passenger_lite_worker_spawns_total", app="ops") == 4


def test_health_is_503_while_an_app_cannot_start_and_names_it(make_server, apps_dir, tmp_path):
    sock = tmp_path / "m.sock"
    s = make_server({"metrics_listen": f"unix:{sock}",
                     "apps": [app_config("ops", copy_app("ops_app", apps_dir)),
                              app_config("crash", copy_app("boot_crash", apps_dir), path="/crash")]})
    poll_until(lambda: s.app_status("crash")["last_error"], what="crash has failed a start")
    status, ctype, body = scrape(sock, "/health")
    assert status == 503 and ctype.startswith("application/json")
    data = json.loads(body)
    assert data["status"] == "unavailable"
    assert data["apps"]["ops"]["healthy"] and data["apps"]["ops"]["ready_workers"] == 1
    assert not data["apps"]["crash"]["healthy"] and "exited during start" in data["apps"]["crash"]["detail"]
    smp = samples(scrape(sock)[2])
    assert value(smp, "passenger_lite_app_up", app="crash") == 0
    assert value(smp, "passenger_lite_worker_failed_starts_total", app="crash") >= 1
    # requests that never reach an app are counted apart
    s.raw(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n")
    smp = samples(scrape(sock)[2])
    assert value(smp, "passenger_lite_rejected_requests_total", code="4xx") == 1


def test_health_is_200_when_every_app_is_ready_or_idle_by_design(make_server, apps_dir):
    mport = free_port()
    ops = copy_app("ops_app", apps_dir)
    make_server({"metrics_listen": f"127.0.0.1:{mport}",
                 "apps": [app_config("ops", ops), app_config("lazy", ops, path="/lazy", min_processes=0)]})
    status, _, body = scrape(mport, "/health")
    data = json.loads(body)
    assert status == 200 and data["status"] == "ok", data
    assert data["apps"]["lazy"] == {"healthy": True, "state": "idle", "ready_workers": 0,
                                    "detail": "idle (min_processes 0); starts on the next request"}


def test_a_metrics_port_in_use_stops_the_start_with_one_line(make_server, apps_dir):
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        ops = copy_app("ops_app", apps_dir)
        s = make_server({"metrics_listen": f"127.0.0.1:{port}", "apps": [app_config("ops", ops)]}, wait=False)
        assert s.proc.wait(60) == 1
        assert s.logs().strip().splitlines()[-1] == \
            f"passenger-lite: cannot listen on metrics_listen 127.0.0.1:{port}: Address already in use"
        assert "Traceback" not in s.logs()
    finally:
        busy.close()
