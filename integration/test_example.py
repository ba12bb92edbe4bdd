"""The README quick start: configs/sites.yaml serves its Python, Ruby and Node apps."""
import yaml

from harness import REPO


def test_example_config_serves_all_three_languages(make_server):
    configs = REPO / "configs"
    example = yaml.safe_load((configs / "sites.yaml").read_text())
    assert example.pop("listen") == ["127.0.0.1:8080"]  # the harness listens on a free port instead
    for app in example["apps"]:
        app["root"] = str((configs / app["root"]).resolve())
    s = make_server(example)
    status, _, home = s.get("/")
    assert status == 200 and b"Hello from Node.js" in home and b'href="/ruby/"' in home
    status, _, page = s.get("/python/hello")
    assert status == 200 and b"Hello from Python" in page and b"mounted at <code>/python</code>" in page
    status, _, page = s.get("/ruby/hello")
    assert status == 200 and b"Hello from Ruby" in page and b"path <code>/hello</code>" in page
    assert {a["name"]: a["type"] for a in s.status()["apps"]} == {
        "python": "python-wsgi", "ruby": "ruby-rack", "node": "node"}
