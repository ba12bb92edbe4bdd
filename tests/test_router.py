from passenger_lite.proxy.headers import BadTarget, canonical_path, normalise_host
from passenger_lite.proxy.router import Mount, Router

import pytest


def make(*mounts):
    return Router(Mount(tuple(h), p, name) for h, p, name in mounts)


def route(r, host, path):
    m = r.route(host, path)
    return m.target if m else None


def test_exact_then_wildcard_then_any_host():
    r = make((["blog.test"], "/", "blog"), (["*.test"], "/", "wild"), (["*.a.test"], "/", "deeper"),
             ([], "/", "any"))
    assert route(r, "blog.test", "/") == "blog"
    assert route(r, "x.test", "/") == "wild"
    assert route(r, "x.a.test", "/") == "deeper"
    assert route(r, "test", "/") == "any"       # *.test does not match test itself
    assert route(r, "other.org", "/x") == "any"


def test_longest_prefix_on_segment_boundary():
    r = make(([], "/", "root"), ([], "/app", "app"), ([], "/app/admin", "admin"))
    assert route(r, "h", "/app") == "app"
    assert route(r, "h", "/app/x") == "app"
    assert route(r, "h", "/apple") == "root"
    assert route(r, "h", "/app/admin/x") == "admin"
    assert route(r, "h", "/app/administrator") == "app"


def test_host_tier_without_matching_prefix_falls_through():
    r = make((["api.test"], "/v1", "api"), ([], "/", "default"))
    assert route(r, "api.test", "/v1/x") == "api"
    assert route(r, "api.test", "/") == "default"
    assert route(make((["api.test"], "/v1", "api")), "api.test", "/") is None


def test_normalise_host():
    assert normalise_host("Example.COM.:8080") == "example.com"
    assert normalise_host("[::1]:80") == "[::1]"
    assert normalise_host("") == ""
    for bad in ("evil@app.test", "app.test/x", "a b", "app.test:80:80", "app\\test"):
        with pytest.raises(BadTarget):
            normalise_host(bad)


def test_canonical_path():
    assert canonical_path("/a/b") == "/a/b"
    assert canonical_path("/app/../other") == "/other"
    assert canonical_path("/app/%2e%2e/other") == "/other"
    assert canonical_path("/app/%2E%2e/%2e/x") == "/x"
    assert canonical_path("/a%2fb") == "/a%2Fb"          # encoded slashes stay encoded
    assert canonical_path("/%61pp/x") == "/app/x"         # unreserved escapes are decoded
    assert canonical_path("/../../etc") == "/etc"
    assert canonical_path("/a/b/..") == "/a/"
    for bad in ("/foo%", "/foo%zz", "/%4", "relative"):
        with pytest.raises(BadTarget):
            canonical_path(bad)
