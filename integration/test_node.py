"""Issue 3: Node.js apps under real node, through the real CLI: the listen() preload, CommonJS
and ES modules, and scaling out of unlimited-concurrency workers."""
import json
import socket

from checks import Background, assert_bodies_arrive_whole, get_json_from
from harness import APPS, app_config, copy_app
from rawhttp import poll_until


def hold_path(app_dir):
    return f"/hold?until={app_dir / 'release'}"


def ready_workers(s, app):
    return [w for w in s.app_status(app)["workers"] if w["state"] == "ready"]


def test_node_app_routes_bodies_and_environment(make_server, apps_dir):
    node = copy_app("node_echo", apps_dir)
    s = make_server({"apps": [
        app_config("node", node, hosts=["node.test"], path="/n", env={"TEST_VAR": "1"}),
        app_config("rack", copy_app("rack_echo", apps_dir), path="/rack"),
        app_config("py", copy_app("wsgi_echo", apps_dir)),
    ]})
    assert s.get("/n/", host="node.test")[2] == b"hello from node\n"
    assert s.get("/rack/")[2] == b"hello from rack\n"
    assert s.get("/")[2] == b"hello from wsgi\n"
    env = get_json_from(s, "127.0.0.2", "/n/env?a=1", Host="node.test")
    assert env["url"] == "/n/env?a=1"  # Node apps see the full path (and PASSENGER_LITE_MOUNT)
    assert env["env"]["PASSENGER_LITE_MOUNT"] == "/n"
    assert env["env"]["NODE_ENV"] == "production" and env["env"]["TEST_VAR"] == "1"
    assert env["env"]["PASSENGER_LITE_APP"] == "node" and "PORT" not in env["env"]
    assert env["headers"]["x-forwarded-for"] == "127.0.0.2"
    assert env["remote"] == "127.0.0.2"  # the client's address, though the worker is on a Unix socket
    assert_bodies_arrive_whole(s, "/n/echo", host="node.test")
    status, headers, body = s.get("/n/stream", host="node.test")
    assert body == b"part 0\npart 1\npart 2\n" and headers.get("transfer-encoding") == "chunked"
    st = s.app_status("node")
    assert st["type"] == "node" and st["concurrency"] == 0  # node's default: unlimited


def test_hard_coded_port_app_runs_three_workers_that_all_serve(make_server, apps_dir):
    app = copy_app("node_echo", apps_dir)
    with socket.socket() as taken:  # the port the app names is in use: only the preload saves it
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        source = app / "app.js"
        source.write_text(source.read_text().replace("const PORT = 3000;", f"const PORT = {port};"))
        s = make_server({"apps": [app_config("node", app, min_processes=3, max_processes=3)]})
        poll_until(lambda: len(ready_workers(s, "node")) == 3, what="three ready workers")
        held = Background()
        for _ in range(3):
            held.start(s.get, hold_path(app))
        # least busy first: each of the three takes one of the held requests
        poll_until(lambda: [w["in_flight"] for w in s.app_status("node")["workers"]] == [1, 1, 1],
               what="one request in flight on each worker")
        (app / "release").write_text("")
        results = held.results()
        assert all(r[0] == 200 for r in results), results
        assert {int(r[2]) for r in results} == {w["pid"] for w in s.app_status("node")["workers"]}
    assert "EADDRINUSE" not in s.logs()


def test_es_module_app(make_server, apps_dir):
    s = make_server({"apps": [app_config("esm", copy_app("node_esm", apps_dir))]})
    assert s.get("/")[2] == b"hello from esm\n"
    assert s.get("/module")[2] == b"undefined"  # no `require`: it really runs as an ES module
    assert_bodies_arrive_whole(s, "/echo")


def test_unlimited_concurrency_scales_out_past_the_threshold(make_server, apps_dir):
    app = copy_app("node_echo", apps_dir)
    s = make_server({"apps": [app_config("node", app, min_processes=1, max_processes=3, scale_threshold=2)]})
    held = Background()
    for _ in range(3):  # 3 in flight on one worker > scale_threshold 2
        held.start(s.get, hold_path(app))
    poll_until(lambda: len(ready_workers(s, "node")) == 2, what="a second worker")
    (app / "release").write_text("")
    assert all(r[0] == 200 for r in held.results())
    assert s.app_status("node")["spawns"] == 2  # one more, not one per request


def test_express_app_started_by_its_start_script(make_server):
    root = APPS / "node_express"  # used in place: its node_modules come from `npm ci` (.ci/setup)
    assert (root / "node_modules" / "express").is_dir(), "run .ci/setup (npm ci in tests/apps/node_express)"
    s = make_server({"environment": "development",
                     "apps": [app_config("express", root, hosts=["express.test"])]})
    assert s.app_status("express")["type"] == "node"  # detected from package.json, entry bin/www
    assert s.get("/", host="express.test")[2] == b"hello from express\n"
    assert get_json_from(s, "127.0.0.3", "/env?x=1", Host="express.test") == {
        "url": "/env?x=1", "env": "development", "ip": "127.0.0.3"}
    status, _, body = s.request("POST", "/json", body=b'{"a": [1, 2]}', host="express.test",
                                headers={"Content-Type": "application/json"})
    assert status == 200 and json.loads(body) == {"got": {"a": [1, 2]}}
