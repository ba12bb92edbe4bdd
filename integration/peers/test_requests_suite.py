"""Issue 11 item 14a: the `requests` library's own test suite (a pinned sdist) against httpbin, once
as upstream runs it (pytest-httpbin's own server) and once with its `httpbin` fixture pointed at
httpbin served as a python-wsgi app by passenger-lite (peers_httpbin.py does the switch).

Fails on any test that passes directly and fails through passenger-lite, or that takes more than a
second longer through it. Tests that fail directly too are printed, not failed on. Only the tests
that use the `httpbin` fixture run (191 of requests 2.32.3's 606; the rest never reach it).
"""
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

from conftest import HERE, PEERS_DIR, need
from harness import app_config

REQUESTS_VERSION = "2.32.3"  # keep in step with .ci/setup-peers
# Tests that connect to 10.255.255.1 (a non-routable address, to provoke a connect timeout): no
# traffic leaves this machine's loopback, so they are not run at all.
DESELECT = "not test_connect_timeout and not test_total_timeout_connect"
# Differences that are passenger-lite's design, not a bug: reported, not failed on.
# Tests that may fail through passenger-lite for a reason we chose, with that reason. None today:
# Proxy-Authorization, once dropped as hop-by-hop, is forwarded as nginx does (issue 12 item 8d).
KNOWN_DIFFERENCES: dict[str, str] = {}
SLOWER_BY = 1.0  # seconds


def run_suite(suite, xml, url=None) -> tuple[dict, str]:
    env = dict(os.environ, PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PEERS_HTTPBIN_URL", None)
    if url:
        env["PEERS_HTTPBIN_URL"] = url
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:httpbin", "-p", "peers_httpbin",
                        "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning", f"--junitxml={xml}",
                        "-k", DESELECT, "tests"],
                       cwd=suite, env=env, capture_output=True, text=True, timeout=900)
    tail = "\n".join(r.stdout.splitlines()[-15:])
    assert r.returncode in (0, 1), f"the requests suite did not run (exit {r.returncode}):\n{tail}\n{r.stderr[-3000:]}"
    results = {}
    for case in ET.parse(xml).iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        results[f"{case.get('classname')}::{case.get('name')}"] = (outcome, float(case.get("time") or 0))
    return results, tail


def test_requests_own_suite_through_passenger_lite_as_directly(make_server, tmp_path):
    suite = need(PEERS_DIR / f"requests-{REQUESTS_VERSION}" / "tests", "the requests sdist").parent
    direct, direct_tail = run_suite(suite, tmp_path / "direct.xml")
    s = make_server({"apps": [app_config("httpbin", HERE / "apps" / "httpbin", python=sys.executable,
                                         min_processes=2, concurrency=2)]})
    proxied, proxied_tail = run_suite(suite, tmp_path / "proxied.xml", url=f"http://127.0.0.1:{s.port}")

    ran = {k: v for k, v in proxied.items() if v[0] != "skipped"}
    assert len(ran) > 150, f"too few tests reached httpbin through passenger-lite:\n{proxied_tail}"
    broken, slower, known, both = [], [], [], []
    for name, (outcome, took) in sorted(ran.items()):
        d_outcome, d_took = direct.get(name, ("missing", 0.0))
        if d_outcome != "passed":
            both.append(f"{name}: {d_outcome} directly, {outcome} through passenger-lite")
        elif outcome != "passed":
            (known if name in KNOWN_DIFFERENCES else broken).append(name)
        elif took > d_took + SLOWER_BY:
            slower.append(f"{name}: {d_took:.2f} s directly, {took:.2f} s through passenger-lite")
    passed = sum(1 for v in ran.values() if v[0] == "passed")
    print(f"\nrequests {REQUESTS_VERSION}: directly {sum(1 for v in direct.values() if v[0] == 'passed')} of "
          f"{sum(1 for v in direct.values() if v[0] != 'skipped')} passed; through passenger-lite {passed} of "
          f"{len(ran)} (the tests that use httpbin)")
    for name in known:
        print(f"  known difference: {name}: {KNOWN_DIFFERENCES[name]}")
    for line in both:
        print(f"  not passenger-lite's: {line}")
    for name in KNOWN_DIFFERENCES:
        if ran.get(name, ("",))[0] == "passed":
            print(f"  {name} now passes through passenger-lite: drop it from KNOWN_DIFFERENCES")
    assert not broken, (f"pass directly, fail through passenger-lite: {broken}\n{proxied_tail}\n"
                        f"server log:\n{s.logs()[-3000:]}")
    assert not slower, f"more than {SLOWER_BY} s slower through passenger-lite: {slower}"
    # and after the whole suite, the app is idle and answers at once. Requests whose client gave
    # up (requests' timeout tests abandon httpbin's /delay/10 after 0.1-2 s) keep their worker
    # busy until httpbin has answered them, as gunicorn's worker would be: so wait for that, well
    # past the longest delay, and no longer.
    deadline = time.monotonic() + 20
    while True:
        st = s.app_status("httpbin")
        if st["queue"] == 0 and all(w["in_flight"] == 0 for w in st["workers"]) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert st["queue"] == 0 and all(w["in_flight"] == 0 for w in st["workers"]), st
    assert s.get("/get", timeout=5)[0] == 200
