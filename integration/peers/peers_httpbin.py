"""pytest plugin for running a peer's test suite (the `requests` library's) against httpbin served by
passenger-lite: integration/test_peers_requests.py runs their tests with
`-p no:httpbin -p peers_httpbin`, once without PEERS_HTTPBIN_URL (pytest-httpbin's own server, as
upstream runs them) and once with it set to passenger-lite's address.

Only the plain-HTTP `httpbin` fixture moves; `httpbin_secure` and the rest stay pytest-httpbin's
(passenger-lite is not what they test), so both runs differ in nothing but where `httpbin` points.
"""
import os
from urllib.parse import urljoin

import pytest
from pytest_httpbin import serve
from pytest_httpbin.plugin import (  # noqa: F401  (re-exported: the plugin they come from is disabled)
    class_based_httpbin,
    class_based_httpbin_secure,
    httpbin_both,
    httpbin_ca_bundle,
    httpbin_secure,
)


class Remote:
    """What pytest-httpbin's Server offers its users (url, join, +), for a server it did not start."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def __add__(self, other):
        return self.url + other

    def join(self, url, allow_fragments=True):
        return urljoin(self.url, url, allow_fragments=allow_fragments)


@pytest.fixture(scope="session")
def httpbin(request):
    url = os.environ.get("PEERS_HTTPBIN_URL")
    if url:
        yield Remote(url)
        return
    from httpbin import app as httpbin_app

    with serve.Server(application=httpbin_app) as server:
        yield server


def pytest_collection_modifyitems(config, items):
    """Run only the tests that reach `httpbin`, in both runs: the others (their own socket servers,
    pure unit tests) never touch it, so they cannot differ between the two."""
    keep, drop = [], []
    for item in items:
        (keep if "httpbin" in getattr(item, "fixturenames", ()) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
