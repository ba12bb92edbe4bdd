"""Issue 3: which spawner serves a folder, what each resolves, and the errors when it cannot tell."""
import json
import subprocess
import sys

import pytest

from passenger_lite.manager import config
from passenger_lite.manager.config import ConfigError
from passenger_lite.spawners.registry import Registry, default_registry


def folder(tmp_path, name, files: dict[str, str]):
    d = tmp_path / name
    d.mkdir()
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return d


def detect(tmp_path, files):
    return default_registry().detect(folder(tmp_path, "app", files))


def test_built_in_spawners_are_found_through_the_entry_point_group():
    reg = Registry()
    assert {"python-wsgi", "python-asgi", "ruby-rack", "node", "command"} <= set(reg.types())
    assert reg.problems == []


@pytest.mark.parametrize("files, kind", [
    ({"config.ru": "run ->(e) {}"}, "ruby-rack"),
    ({"passenger_wsgi.py": ""}, "python-wsgi"),
    ({"wsgi.py": ""}, "python-wsgi"),
    ({"asgi.py": ""}, "python-asgi"),
    ({"app.js": ""}, "node"),
    ({"server.mjs": ""}, "node"),
    ({"package.json": '{"main": "lib/start.js"}', "lib/start.js": ""}, "node"),
    ({"package.json": "{}", "index.js": ""}, "node"),
    # package.json is a weak hint: Rails and Django apps carry one for their assets
    ({"config.ru": "", "package.json": '{"main": "x.js"}', "x.js": ""}, "ruby-rack"),
    ({"wsgi.py": "", "package.json": "{}", "index.js": ""}, "python-wsgi"),
])
def test_detection(tmp_path, files, kind):
    found, seen, why = detect(tmp_path, files)
    assert (found, why) == (kind, "")
    assert seen


def test_ambiguous_folder_names_each_claim(tmp_path):
    found, seen, why = detect(tmp_path, {"config.ru": "", "app.js": ""})
    assert found is None
    assert "ambiguous" in why and "config.ru -> ruby-rack" in why and "app.js -> node" in why
    assert "type:" in why


def test_nothing_recognised_lists_the_files_seen(tmp_path):
    # a Django project root: manage.py, its package.json has no script to run
    found, _, why = detect(tmp_path, {"manage.py": "", "package.json": '{"scripts": {"build": "webpack"}}'})
    assert found is None
    assert "cannot tell" in why and "manage.py" in why and "package.json" in why
    assert "ruby-rack" in why and "node" in why  # the types one may set


def load(tmp_path, apps_yaml: str):
    p = tmp_path / "sites.yaml"
    p.write_text("apps:\n" + apps_yaml)
    return config.load(p, default_registry())


def problems(tmp_path, apps_yaml: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, apps_yaml)
    return [(p.key, p.message) for p in e.value.problems]


def test_node_entry_comes_from_entry_main_start_script_or_usual_names(tmp_path):
    folder(tmp_path, "a", {"package.json": '{"main": "lib/main"}', "lib/main.js": ""})
    folder(tmp_path, "b", {"package.json": '{"scripts": {"start": "node ./bin/www"}}', "bin/www": ""})
    folder(tmp_path, "c", {"server.js": "", "index.js": ""})
    folder(tmp_path, "d", {"custom.js": "", "app.js": ""})
    site = load(tmp_path, "  - {name: a, root: ./a}\n  - {name: b, root: ./b, path: /b}\n"
                          "  - {name: c, root: ./c, path: /c}\n  - {name: d, root: ./d, path: /d, entry: custom.js}\n")
    assert [(a.type, a.entry, a.concurrency) for a in site.apps] == [
        ("node", "lib/main.js", 0), ("node", "bin/www", 0), ("node", "server.js", 0), ("node", "custom.js", 0)]
    assert all(a.node and a.node.startswith("/") for a in site.apps)


def test_node_errors_name_the_key(tmp_path):
    folder(tmp_path, "broken", {"package.json": "{not json", "app.js": ""})
    folder(tmp_path, "empty", {"package.json": "{}"})
    got = problems(tmp_path, "  - {name: a, root: ./broken, type: node, node: /no/such/node}\n"
                             "  - {name: b, root: ./empty, type: node, path: /b}\n"
                             "  - {name: c, root: ./empty, type: node, path: /c, entry: missing.js}\n")
    keys = [k for k, _ in got]
    assert keys == ["apps[0] (a).entry", "apps[0] (a).node", "apps[1] (b).entry", "apps[2] (c).entry"]
    assert "not valid JSON" in got[0][1] and "/no/such/node" in got[1][1]
    assert "no entry script" in got[2][1] and "missing.js" in got[3][1]


def test_ruby_resolves_config_ru_and_interpreter(tmp_path):
    folder(tmp_path, "r", {"config.ru": "", "other.ru": ""})
    site = load(tmp_path, "  - {name: a, root: ./r}\n  - {name: b, root: ./r, path: /b, entry: other.ru}\n")
    assert [(a.type, a.entry, a.concurrency) for a in site.apps] == [("ruby-rack", "config.ru", 1),
                                                                     ("ruby-rack", "other.ru", 1)]
    got = problems(tmp_path, "  - {name: a, root: ./r, entry: nope.ru, ruby: /no/ruby}\n")
    assert [k for k, _ in got] == ["apps[0] (a).entry", "apps[0] (a).ruby"]


def test_command_needs_a_runnable_command(tmp_path):
    folder(tmp_path, "c", {"run.sh": ""})
    got = problems(tmp_path, "  - {name: a, root: ./c, type: command}\n"
                             "  - {name: b, root: ./c, type: command, path: /b, command: [./run.sh]}\n"
                             "  - {name: c, root: ./c, type: command, path: /c, command: [no-such-program-x]}\n")
    assert [k for k, _ in got] == ["apps[0] (a).command", "apps[1] (b).command", "apps[2] (c).command"]
    assert "needs `command:`" in got[0][1] and "not an executable" in got[1][1] and "not found" in got[2][1]
    site = load(tmp_path, "  - {name: a, root: ./c, type: command, command: 'exec ./run.sh'}\n")
    assert site.apps[0].concurrency == 0  # issue 12 item 6: command servers take many requests at once


def test_command_spawner_picks_port_or_socket_and_substitutes_them(tmp_path):
    from passenger_lite.spawners.base import WorkerContext

    folder(tmp_path, "c", {})
    site = load(tmp_path, "  - {name: p, root: ./c, type: command, command: [sh, -c, 'x $PORT ${PORT}']}\n"
                          "  - {name: s, root: ./c, type: command, path: /s,"
                          " command: [env, --unix=$PASSENGER_LITE_SOCKET]}\n")
    sp = default_registry().get("command")
    p, s = site.apps
    assert sp.wants_port(p) and not sp.wants_port(s)
    spec = sp.worker_spec(WorkerContext(app=p, socket="/x.sock", port=4567, environment="production", worker_id=1))
    assert spec.argv == ["sh", "-c", "x 4567 4567"] and spec.env["PORT"] == "4567"
    assert "PASSENGER_LITE_SOCKET" not in spec.env
    spec = sp.worker_spec(WorkerContext(app=s, socket="/x.sock", port=None, environment="production", worker_id=1))
    assert spec.argv == ["env", "--unix=/x.sock"] and "PORT" not in spec.env


def test_check_shows_the_detected_types(tmp_path):
    folder(tmp_path, "rb", {"config.ru": ""})
    folder(tmp_path, "js", {"package.json": json.dumps({"main": "main.js"}), "main.js": ""})
    p = tmp_path / "sites.yaml"
    p.write_text("apps:\n  - {name: rb, root: ./rb, path: /rb, user: root}\n  - {name: js, root: ./js, user: root}\n")
    r = subprocess.run([sys.executable, "-m", "passenger_lite.manager.cli", "check", "--config", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = {w[2]: w[3:5] for w in map(str.split, r.stdout.splitlines()) if len(w) > 4 and w[2] in ("rb", "js")}
    assert rows == {"rb": ["ruby-rack", "config.ru"], "js": ["node", "main.js"]}
    p.write_text("apps:\n  - {name: both, root: ./both}\n")
    folder(tmp_path, "both", {"config.ru": "", "app.js": ""})
    r = subprocess.run([sys.executable, "-m", "passenger_lite.manager.cli", "check", "--config", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "apps[0] (both).root: ambiguous" in r.stderr


# issue 12 item 4 ------------------------------------------------------------------------------

MANAGE_PY = '''import os, sys
def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
'''


def test_a_standard_django_project_is_python_wsgi_with_its_projects_wsgi_module(tmp_path):
    folder(tmp_path, "dj", {"manage.py": MANAGE_PY, "mysite/__init__.py": "", "mysite/settings.py": "",
                            "mysite/wsgi.py": "application = None\n", "mysite/asgi.py": "application = None\n",
                            "package.json": '{"scripts": {"build": "webpack"}}'})
    found, seen, why = default_registry().detect(tmp_path / "dj")
    assert (found, seen, why) == ("python-wsgi", ["manage.py", "mysite/wsgi.py"], "")
    app = load(tmp_path, "  - {name: d, root: ./dj}\n").apps[0]
    assert (app.type, app.entry) == ("python-wsgi", "mysite.wsgi:application")
    # manage.py naming no settings: the package beside it with settings.py and wsgi.py
    folder(tmp_path, "dj2", {"manage.py": "", "proj/settings.py": "", "proj/wsgi.py": "", "other/wsgi.py": ""})
    assert load(tmp_path, "  - {name: d, root: ./dj2}\n").apps[0].entry == "proj.wsgi:application"


@pytest.mark.parametrize("source, entry, expect", [
    ("def create_app(test_config=None):\n    pass\n", "m:create_app", "taking (test_config), not an app"),
    ("def create_app():\n    pass\n", "m:create_app", "taking (), not an app taking (environ, start_response)"),
    ("def application(environ, start_response):\n    pass\n", "m:application", None),
    ("def application(environ, start_response, extra=1):\n    pass\n", "m:application", None),
    ("def create_app():\n    pass\napp = create_app()\n", "m:app", None),
    ("def create_app():\n    pass\n", "m:create_app()", None),
    ("def create_app():\n    pass\n", "m:create_app('a', debug=True, n=[1, 2])", None),
    ("def create_app():\n    pass\n", "m", None),  # neither application nor app: create_app() is used
    ("import deco\n@deco.wsgi\ndef app():\n    pass\n", "m:app", None),  # decorated: the loader checks it
    ("def create_app():\n    pass\n", "m:create_app(", "is not a name or a call"),
    ("def create_app():\n    pass\n", "m:create_app(x)", "must be literals"),
    ("def create_app():\n    pass\n", "m:create_app(**opts)", "must be literals"),
])
def test_wsgi_entries_factories_and_callables_that_are_not_apps(tmp_path, source, entry, expect):
    folder(tmp_path, "w", {"m.py": source})
    text = f"  - {{name: w, root: ./w, type: python-wsgi, entry: \"{entry}\"}}\n"
    if expect is None:
        app = load(tmp_path, text).apps[0]
        assert app.entry == (entry if ":" in entry else "m:create_app()")
    else:
        ((key, message),) = problems(tmp_path, text)
        assert key == "apps[0] (w).entry" and expect in message, message


def test_asgi_factories(tmp_path):
    folder(tmp_path, "a", {"main.py": "async def app(scope, receive, send):\n    pass\n"
                                      "def create_app(debug=False):\n    return app\n"})
    assert load(tmp_path, "  - {name: a, root: ./a, type: python-asgi, entry: 'main:create_app()'}\n").apps[0]
    ((_, message),) = problems(tmp_path, "  - {name: a, root: ./a, type: python-asgi, entry: 'main:create_app'}\n")
    assert "not an app taking (scope, receive, send)" in message and 'entry: "main:create_app()"' in message
