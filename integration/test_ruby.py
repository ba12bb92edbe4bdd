"""Issue 3: Ruby (Rack) apps under real ruby, rack and puma, through the real CLI."""
from checks import assert_bodies_arrive_whole, get_json_from
from harness import app_config, copy_app


def test_rack_app_routes_bodies_and_environment(make_server, apps_dir):
    rack = copy_app("rack_echo", apps_dir)
    s = make_server({"environment": "development", "apps": [
        app_config("rack", rack, hosts=["rack.test"], env={"TEST_VAR": "1"}),
        app_config("py", copy_app("wsgi_echo", apps_dir)),
    ]})
    assert s.get("/", host="rack.test")[2] == b"hello from rack\n"
    assert s.get("/")[2] == b"hello from wsgi\n"  # the other app, other language
    env = get_json_from(s, "127.0.0.2", "/env?a=1", Host="rack.test", **{"X-Forwarded-Proto": "https"})
    assert env["SCRIPT_NAME"] == "" and env["PATH_INFO"] == "/env" and env["QUERY_STRING"] == "a=1"
    assert env["REMOTE_ADDR"] == "127.0.0.2"  # the client's, though the worker is on a Unix socket
    assert env["rack.url_scheme"] == "http"  # the client's X-Forwarded-Proto is not trusted
    assert env["env"]["RACK_ENV"] == "development" and env["env"]["RAILS_ENV"] == "development"
    assert env["env"]["TEST_VAR"] == "1" and env["env"]["PASSENGER_LITE_APP"] == "rack"
    assert "RAILS_RELATIVE_URL_ROOT" not in env["env"] and "BUNDLE_GEMFILE" not in env["env"]
    assert env["bundler"] is False
    assert_bodies_arrive_whole(s, "/echo", host="rack.test")
    status, headers, body = s.get("/stream?n=3", host="rack.test")  # a body of unknown length
    assert status == 200 and body == b"part 0\npart 1\npart 2\n"
    assert headers.get("transfer-encoding") == "chunked"


def test_sub_path_rack_app_gets_script_name_and_relative_url_root(make_server, apps_dir):
    s = make_server({"apps": [app_config("rack", copy_app("rack_echo", apps_dir), path="/r/ack")]})
    env = s.get_json("/r/ack/env?x=1")
    assert env["SCRIPT_NAME"] == "/r/ack" and env["PATH_INFO"] == "/env" and env["QUERY_STRING"] == "x=1"
    assert env["env"]["RAILS_RELATIVE_URL_ROOT"] == "/r/ack"
    assert env["env"]["RACK_ENV"] == "production"
    assert s.get("/r/ack")[2] == b"hello from rack\n"  # the bare mount point: PATH_INFO ""
    assert s.get("/r/ackx")[0] == 404  # not under the mount


def test_sinatra_runs_unchanged_at_a_sub_path(make_server, apps_dir):
    s = make_server({"apps": [app_config("sin", copy_app("sinatra_app", apps_dir), path="/sin", concurrency=4)]})
    assert s.get("/sin/")[2] == b"hello from sinatra\n"
    data = s.get_json("/sin/env", host="example.test")
    assert data == {"script_name": "/sin", "path_info": "/env", "url": "http://example.test/sin/x",
                    "environment": "production", "ip": "127.0.0.1"}
    status, _, body = s.request("POST", "/sin/form", body=b"name=ruby",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and body == b"name=ruby\n"


def test_gemfile_is_honoured_like_bundle_exec(make_server, apps_dir):
    app = copy_app("sinatra_bundle", apps_dir)
    s = make_server({"apps": [app_config("bundled", app)]})
    assert s.get("/")[2] == b"hello from a bundle\n"
    assert s.get("/outside")[2] == b"webrick is not in the bundle\n"
    assert (app / "Gemfile.lock").is_file()  # bundler resolved it against the installed gems


def test_broken_rack_app_reports_the_ruby_error(make_server, apps_dir):
    app = apps_dir / "broken"
    app.mkdir()
    (app / "config.ru").write_text("require 'no_such_gem_here'\nrun ->(env) { [200, {}, []] }\n")
    s = make_server({"environment": "development", "apps": [app_config("broken", app, start_timeout=20)]})
    status, _, body = s.get("/")
    assert status == 503
    assert b"no_such_gem_here" in body  # development error page: the loader's message
    st = s.app_status("broken")
    assert "exited during start" in st["last_error"]


def test_rails_app_runs_unchanged_at_a_sub_path(make_server, apps_dir):
    app = copy_app("rails_app", apps_dir)  # Debian's ruby-rails 6.1; its config/puma.rb names port 3000
    s = make_server({"apps": [app_config("blog", app, path="/blog", env={"SECRET_KEY_BASE": "test-only"},
                                         start_timeout=120)]}, ready_timeout=150)
    status, _, body = s.get("/blog/")
    assert status == 200 and body.startswith(b"hello from rails 6.")
    assert s.get_json("/blog/env", host="blog.test") == {
        "script_name": "/blog", "path_info": "/env", "root_path": "/blog/", "env_url": "http://blog.test/blog/env",
        "relative_url_root": "/blog", "environment": "production"}
    assert_bodies_arrive_whole(s, "/blog/echo", headers={"Content-Type": "application/octet-stream"})
