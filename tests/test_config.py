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
    e = problems(tmp_path, "apps:\n  - name: a\n    root: ./app\n    min_processes: 'two'\n    hosts: blog\n")
    keys = {p.key: p.line for p in e.problems}
    assert keys == {"apps[0] (a).min_processes": 4, "apps[0] (a).hosts": 5}


def test_duplicate_keys_are_rejected(tmp_path):
    e = problems(tmp_path, "environment: production\nenvironment: development\napps: []\n")
    assert e.problems[0].line == 2 and "duplicate key" in e.problems[0].message


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
    p.write_text("apps:\n  - name: a\n    root: ./app\n    hosts: [a.test]\n    path: /x\n")
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


def test_buffering_keys_default_on_and_take_only_booleans(tmp_path):
    app = load(tmp_path, "apps:\n  - name: a\n    root: ./app\n").apps[0]
    assert app.request_buffering is True and app.response_buffering is True
    app = load(tmp_path, "apps:\n  - name: a\n    root: ./app\n    request_buffering: false\n"
                         "    response_buffering: false\n").apps[0]
    assert app.request_buffering is False and app.response_buffering is False
    e = problems(tmp_path, "apps:\n  - name: a\n    root: ./app\n    response_buffering: 'off'\n")
    assert [(p.key, p.line) for p in e.problems] == [("apps[0] (a).response_buffering", 4)]
