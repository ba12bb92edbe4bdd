"""Issue 3: the command spawner, with a stand-alone server on $PORT or $PASSENGER_LITE_SOCKET."""
import sys

from checks import assert_bodies_arrive_whole
from harness import app_config, copy_app


def test_list_command_on_port(make_server, apps_dir):
    app = copy_app("command_app", apps_dir)
    s = make_server({"apps": [app_config("cmd", app, type="command", min_processes=2, max_processes=2,
                                         command=[sys.executable, "server.py", "--port", "${PORT}"])]})
    data = s.get_json("/env")
    assert data["mode"] == "port"
    assert data["env"]["PORT"].isdigit() and "PASSENGER_LITE_SOCKET" not in data["env"]
    assert_bodies_arrive_whole(s, "/echo")
    # two workers, each listening on its own port
    assert [w["state"] for w in s.app_status("cmd")["workers"]] == ["ready", "ready"]


def test_shell_string_command_on_the_unix_socket(make_server, apps_dir):
    app = copy_app("command_app", apps_dir)
    s = make_server({"apps": [app_config(
        "cmd", app, type="command", path="/c",
        command=f'exec "{sys.executable}" server.py --socket "$PASSENGER_LITE_SOCKET"')]})
    assert s.get("/c/")[2] == b"hello from a command on socket\n"
    data = s.get_json("/c/env")
    assert data["path"] == "/c/env" and data["env"]["PASSENGER_LITE_MOUNT"] == "/c"
    assert "PORT" not in data["env"]
    assert_bodies_arrive_whole(s, "/c/echo")


def test_command_that_exits_shows_its_output(make_server, apps_dir):
    s = make_server({"environment": "development", "apps": [app_config(
        "cmd", apps_dir, type="command", command="echo 'cannot open database' >&2; exit 3")]})
    status, _, body = s.get("/")
    assert status == 503
    assert b"cannot open database" in body and b"exit status 3" in body


# Issue 12 item 6: a server in the manner of Next.js: it parses every request target as a URL
# (so `OPTIONS *` logs "TypeError: Invalid URL"), answers /health 503 until it has warmed up, and
# takes any number of requests at once in one process.
NEXTISH = r"""
const http = require("http");
let healthHits = 0, inFlight = 0, most = 0;
http.createServer((req, res) => {
  console.log(`request ${req.method} ${req.url}`);
  try { new URL(req.url); } catch (e) {
    if (req.url === "*") { console.error(`TypeError: Invalid URL: ${req.url}`); res.writeHead(400); res.end(); return; }
  }
  if (req.url === "/health") {
    healthHits++;
    res.writeHead(healthHits < 3 ? 503 : 200); res.end(`health ${healthHits}`); return;
  }
  inFlight++; most = Math.max(most, inFlight);
  setTimeout(() => {
    inFlight--;
    res.writeHead(200, {"Content-Type": "application/json"});
    res.end(JSON.stringify({pid: process.pid, most, healthHits}));
  }, req.url === "/slow" ? 300 : 0);
}).listen(Number(process.env.PORT), "127.0.0.1");
"""


def nextish(apps_dir):
    import shutil

    import pytest

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    (apps_dir / "server.js").write_text(NEXTISH)
    return node


def test_ready_check_get_path_waits_for_an_answer_below_500_and_never_sends_options(make_server, apps_dir):
    node = nextish(apps_dir)
    s = make_server({"apps": [app_config("next", apps_dir, type="command", command=[node, "server.js"],
                                         ready_check="GET /health")]})
    data = s.get_json("/")
    assert data["healthHits"] >= 3  # two 503 answers did not count as ready
    logs = s.logs()
    assert "request GET /health" in logs
    assert "OPTIONS" not in logs and "Invalid URL" not in logs
    st = s.app_status("next")
    assert st["concurrency"] == 0 and [w["state"] for w in st["workers"]] == ["ready"]


def test_ready_check_connect_sends_no_request_and_command_apps_default_to_unlimited(make_server, apps_dir):
    import concurrent.futures

    node = nextish(apps_dir)
    s = make_server({"apps": [app_config("next", apps_dir, type="command", command=[node, "server.js"],
                                         ready_check="connect", max_processes=3)]})
    assert "request " not in s.logs()  # ready without one request
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: s.get_json("/slow"), range(8)))
    assert len({a["pid"] for a in answers}) == 1  # 8 at once on one process, none spawned
    assert max(a["most"] for a in answers) > 1
    st = s.app_status("next")
    assert len(st["workers"]) == 1 and st["workers"][0]["in_flight"] == 0 and st["queue"] == 0
    assert s.get_json("/")["pid"] == answers[0]["pid"]
    assert "Invalid URL" not in s.logs()


def test_default_ready_check_is_options_star(make_server, apps_dir):
    """What the two keys above avoid: the default probe is `OPTIONS *`, which such a server minds."""
    node = nextish(apps_dir)
    s = make_server({"apps": [app_config("next", apps_dir, type="command", command=[node, "server.js"])]})
    assert s.get("/")[0] == 200
    assert "Invalid URL: *" in s.logs()


def test_a_bad_ready_check_is_a_config_error_naming_the_key(apps_dir, tmp_path):
    import yaml

    from harness import run_cli

    cfg = tmp_path / "sites.yaml"
    cfg.write_text(yaml.safe_dump({"apps": [app_config("c", apps_dir, type="command", command=["true"],
                                                       ready_check="/health")]}))
    r = run_cli("check", "--config", str(cfg))
    assert r.returncode == 2, r
    assert "apps[0] (c).ready_check: must be 'OPTIONS *', a method and a path" in r.stderr
    assert "Traceback" not in r.stderr
