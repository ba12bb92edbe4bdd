"""Config loading: every error names the file, the line and the key; the CLI exits 2."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from passenger_lite.manager import config
from passenger_lite.manager.config import ConfigError
from passenger_lite.spawners.registry import default_registry

APPS = Path(__file__).resolve().parent / "apps"


def write(tmp_path, text):
    p = tmp_path / "sites.yaml"
    p.write_text(text)
    (tmp_path / "app").mkdir(exist_ok=True)
    (tmp_path / "app" / "wsgi.py").write_text("def application(e, s):\n    pass\n")
    return p


def load(tmp_path, text):
    return config.load(write(tmp_path, text), default_registry())


def problems(tmp_path, text):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    return e.value


def test_minimal_config_resolves_paths_type_and_defaults(tmp_path):
    site = load(tmp_path, "apps:\n  - name: a\n    root: ./app\n")
    app = site.apps[0]
    assert app.root == str(tmp_path / "app")
    assert app.type == "python-wsgi" and app.entry == "wsgi:application"
    assert app.concurrency == 1 and app.path == "/" and app.min_processes == 1
    assert [str(a) for a in site.addresses] == ["127.0.0.1:8080"]


def test_unknown_key_names_line_and_suggests(tmp_path):
    e = problems(tmp_path, "apps:\n  - name: a\n    root: ./app\n    max_proceses: 3\n")
    assert len(e.problems) == 1
    p = e.problems[0]
    assert p.line == 4 and p.key == "apps[0] (a).max_proceses"
    assert "unknown key" in p.message and "max_processes" in p.message
    assert f"{tmp_path / 'sites.yaml'}:4" in str(e)


def test_wrong_types_are_errors_not_coerced(tmp_path):
    e = problems(tmp_path, "apps:\n  - name: a\n    root: ./app\n    min_processes: 'two'\n    hosts: 7\n")
    keys = {p.key: p.line for p in e.problems}
    assert keys == {"apps[0] (a).min_processes": 4, "apps[0] (a).hosts": 5}


def test_a_list_of_names_may_be_one_plain_string(tmp_path):
    site = load(tmp_path, 'listen: "127.0.0.1:8181"\ntrusted_proxies: 10.0.0.0/8\n'
                          "apps:\n  - name: a\n    root: ./app\n    hosts: Blog.test\n")
    assert [str(a) for a in site.addresses] == ["127.0.0.1:8181"]
    assert site.apps[0].hosts == ["blog.test"] and site.config.trusted_proxies == ["10.0.0.0/8"]
    # and a bad one is still named as written, on its line
    e = problems(tmp_path, "listen: nonsense\napps:\n  - name: a\n    root: ./app\n    hosts: -bad-\n")
    assert [(p.key, p.line) for p in e.problems] == [("listen", 1), ("apps[0] (a).hosts", 5)]


def test_duplicate_keys_are_rejected_with_the_full_key(tmp_path):
    e = problems(tmp_path, "environment: production\nenvironment: development\napps: []\n")
    assert e.problems[0].line == 2 and "duplicate key (first given on line 1)" in e.problems[0].message
    assert e.problems[0].key == "environment"
    e = problems(tmp_path, "apps:\n  - name: a\n    root: ./app\n  - name: blog\n    root: ./app\n"
                           "    path: /b\n    path: /c\n")
    assert [(p.key, p.line) for p in e.problems] == [("apps[1] (blog).path", 7)]
    assert f"{tmp_path / 'sites.yaml'}:7: apps[1] (blog).path: duplicate key (first given on line 6)" in str(e)


def test_a_key_given_here_overrides_one_merged_from_an_anchor(tmp_path):
    site = load(tmp_path, "apps:\n  - &a\n    name: a\n    root: ./app\n    max_processes: 2\n"
                          "  - <<: *a\n    name: b\n    path: /b\n    max_processes: 3\n")
    assert [(a.name, a.path, a.max_processes) for a in site.apps] == [("a", "/", 2), ("b", "/b", 3)]
    e = problems(tmp_path, "apps:\n  - &a\n    name: a\n    root: ./app\n"
                           "  - <<: *a\n    name: b\n    path: /b\n    path: /c\n")
    assert [(p.key, p.line) for p in e.problems] == [("apps[1] (b).path", 8)]


def test_schema_and_cross_check_errors_come_in_one_pass(tmp_path):
    e = problems(tmp_path, "max_pool_size: lots\n"
                           "apps:\n  - name: a\n    root: ./app\n    bogus: 1\n"
                           "  - name: a\n    root: ./nope\n"
                           "  - name: b\n    root: ./app\n    min_processes: 3\n    max_processes: 2\n"
                           "    env: {X: 1}\n    env: {}\n    entry: 5\n")
    # app a's unknown key and app b's wrong env do not hide their other problems (b's path, the
    # same as a's, its processes), and b's wrong entry is reported once, not again by the checks
    assert [(p.key, p.line) for p in e.problems] == [
        ("max_pool_size", 1), ("apps[0] (a).bogus", 5), ("apps[1] (a).name", 6), ("apps[1] (a).root", 7),
        ("apps[2] (b).path", 8), ("apps[2] (b).min_processes", 10), ("apps[2] (b).env.X", 12),
        ("apps[2] (b).env", 13), ("apps[2] (b).entry", 14)]


@pytest.mark.parametrize("text, line, column, hint", [
    ("apps:\n  - name: a\n    root: ./app\n   path: /x\n", 4, 4, "check the indentation"),
    ("apps:\n  - name: a\n     root: ./app\n", 3, 10, "check the indentation"),
    ("apps:\n\t- name: a\n", 2, 1, "spaces only"),
    ("apps:\n  - name: a\n    root: [./app\n", 4, 1, "[ ] opened on line 3 is not closed"),
    ("apps:\n  - name: 'a\n    root: ./app\n", 4, 1, "quote opened on line 2 is not closed"),
])
def test_yaml_syntax_errors_have_line_column_and_a_hint(tmp_path, text, line, column, hint):
    e = problems(tmp_path, text)
    [p] = e.problems
    assert (p.line, p.column) == (line, column) and "invalid YAML" in p.message and hint in p.message
    assert f"{tmp_path / 'sites.yaml'}:{line}:{column}: invalid YAML: " in str(e)


def test_missing_root_and_entry(tmp_path):
    e = problems(tmp_path, "apps:\n  - name: a\n    root: ./nope\n  - name: b\n    root: ./app\n"
                           "    entry: missing.module:app\n")
    msgs = {p.key: (p.line, p.message) for p in e.problems}
    assert msgs["apps[0] (a).root"][0] == 3 and "does not exist" in msgs["apps[0] (a).root"][1]
    assert msgs["apps[1] (b).entry"][0] == 6 and "missing.module" in msgs["apps[1] (b).entry"][1]
    e = problems(tmp_path, "apps:\n  - name: a\n    root: ./app\n  - name: c\n")
    assert [(p.key, p.line) for p in e.problems] == [("apps[1] (c).root", 4)]
    assert "required" in e.problems[0].message


def test_two_apps_claiming_the_same_host_and_path(tmp_path):
    e = problems(tmp_path, "apps:\n  - name: a\n    root: ./app\n    hosts: [x.test]\n"
                           "  - name: b\n    root: ./app\n    hosts: [y.test, X.test]\n")
    p = e.problems[0]
    assert p.key == "apps[1] (b).hosts[1]" and p.line == 7 and "already claimed by app 'a'" in p.message
    e = problems(tmp_path, "apps:\n  - name: a\n    root: ./app\n  - name: b\n    root: ./app\n    path: /\n")
    assert "any host" in e.problems[0].message


def test_yaml_syntax_error_has_a_line(tmp_path):
    e = problems(tmp_path, "apps:\n  - name: a\n    root: [./app\n")
    assert e.problems[0].line is not None and "invalid YAML" in e.problems[0].message


def test_detection_errors_name_the_files_seen(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README").write_text("x")
    e = problems(tmp_path, "apps:\n  - name: a\n    root: ./empty\n")
    assert "cannot tell" in e.problems[0].message and "README" in e.problems[0].message
    both = tmp_path / "both"
    both.mkdir()
    (both / "wsgi.py").write_text("application = None\n")
    (both / "asgi.py").write_text("app = None\n")
    e = problems(tmp_path, "apps:\n  - name: a\n    root: ./both\n")
    assert "ambiguous" in e.problems[0].message and "wsgi.py" in e.problems[0].message
    assert "asgi.py" in e.problems[0].message


def test_cli_check_exit_codes_and_one_screen_errors(tmp_path):
    p = write(tmp_path, "apps:\n  - name: a\n    root: ./app\n    bogus: 1\n")
    r = subprocess.run([sys.executable, "-m", "passenger_lite.manager.cli", "check", "--config", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert f"{p}:4: apps[0] (a).bogus: unknown key" in r.stderr
    assert len(r.stderr.splitlines()) < 25
    p.write_text("apps:\n  - name: a\n    root: ./app\n    hosts: [a.test]\n    path: /x\n    user: root\n")
    r = subprocess.run([sys.executable, "-m", "passenger_lite.manager.cli", "check", "--config", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "a.test" in r.stdout and "/x" in r.stdout and "python-wsgi" in r.stdout
    r = subprocess.run([sys.executable, "-m", "passenger_lite.manager.cli", "check", "--config",
                        str(tmp_path / "none.yaml")], capture_output=True, text=True)
    assert r.returncode == 2 and "file not found" in r.stderr


def test_shipped_schema_matches_the_models():
    shipped = Path(__file__).resolve().parents[1] / "configs" / "schema.json"
    assert json.loads(shipped.read_text()) == config.json_schema()


def test_example_config_is_valid():
    example = Path(__file__).resolve().parents[1] / "configs" / "sites.yaml"
    site = config.load(example, default_registry())
    assert site.apps


def test_readme_documents_every_config_key():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for model in (config.SiteConfig, config.AppConfig):
        for key in model.model_fields:
            assert f"`{key}`" in readme, f"README's config reference lacks `{key}`"


def test_every_path_resolves_from_the_config_file_whatever_the_cwd(tmp_path, monkeypatch):
    """README "Paths": the config file's folder, except files an app ships (its root's)."""
    import os
    import sys

    import trustme

    d = tmp_path / "conf"
    (d / "blog" / "static").mkdir(parents=True)
    (d / "blog" / "oops.html").write_text("down")
    (d / "blog" / "wsgi.py").write_text("def application(e, s):\n    pass\n")
    (d / "venv" / "bin").mkdir(parents=True)
    os.symlink(sys.executable, d / "venv" / "bin" / "python")
    (d / "tools").mkdir()
    (d / "tools" / "server").write_text("#!/bin/sh\n")
    (d / "tools" / "server").chmod(0o755)
    (d / "blog" / "bin").mkdir()
    (d / "blog" / "bin" / "server").write_text("#!/bin/sh\n")
    (d / "blog" / "bin" / "server").chmod(0o755)
    ca = trustme.CA()
    cert = ca.issue_cert("blog.test")
    cert.private_key_and_cert_chain_pem.write_to_path(str(d / "both.pem"))
    cfg = d / "sites.yaml"
    cfg.write_text(
        "listen: ['unix:run/front.sock', {address: '127.0.0.1:8443', tls: {cert: both.pem, key: both.pem}}]\n"
        "metrics_listen: unix:run/metrics.sock\nlog_file: logs/pl.log\naccess_log: logs/access.log\n"
        "apps:\n"
        "  - {name: blog, root: ./blog, python: ./venv/bin/python, static: {/s: static}, error_page: oops.html}\n"
        "  - {name: cmd, root: blog, path: /c, type: command, command: [bin/server, $PORT]}\n"
        "  - {name: py, root: blog, path: /p, python: python3}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    site = config.load("../conf/sites.yaml", default_registry())
    blog, cmd, py = site.apps
    assert site.path == d / "sites.yaml" or site.path.resolve() == cfg
    assert blog.root == str(d / "blog") and blog.python == str(d / "venv" / "bin" / "python")
    assert blog.static == {"/s": str(d / "blog" / "static")} and blog.error_page == str(d / "blog" / "oops.html")
    assert cmd.command == [str(d / "blog" / "bin" / "server"), "$PORT"]
    assert py.python.startswith("/")  # a bare name: looked up on PATH, then absolute
    assert site.config.log_file == str(d / "logs" / "pl.log")
    assert site.config.access_log == str(d / "logs" / "access.log")
    assert [str(a) for a in site.addresses] == [f"unix:{d}/run/front.sock", "127.0.0.1:8443"]
    assert site.addresses[1].tls.cert == str(d / "both.pem")
    assert site.metrics_address.path == str(d / "run" / "metrics.sock")
    # the same config from its own folder means the same files
    monkeypatch.chdir(d)
    again = config.load("sites.yaml", default_registry())
    assert [a.model_dump() for a in again.apps] == [a.model_dump() for a in site.apps]
    # and a wrong relative interpreter is named with the path it was looked for at
    cfg.write_text("apps:\n  - {name: blog, root: ./blog, python: ./blog/.venv/bin/python}\n")
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ConfigError) as e:
        config.load(cfg, default_registry())
    assert str(d / "blog" / ".venv" / "bin" / "python") in str(e.value)


def test_buffering_keys_default_on_and_take_only_booleans(tmp_path):
    app = load(tmp_path, "apps:\n  - name: a\n    root: ./app\n").apps[0]
    assert app.request_buffering is True and app.response_buffering is True
    app = load(tmp_path, "apps:\n  - name: a\n    root: ./app\n    request_buffering: false\n"
                         "    response_buffering: false\n").apps[0]
    assert app.request_buffering is False and app.response_buffering is False
    e = problems(tmp_path, "apps:\n  - name: a\n    root: ./app\n    response_buffering: 'off'\n")
    assert [(p.key, p.line) for p in e.problems] == [("apps[0] (a).response_buffering", 4)]
