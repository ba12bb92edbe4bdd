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
