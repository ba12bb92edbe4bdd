"""Issue 7 item 2: public/ and `static:` folders served by the front process, through the real CLI.

The app behind is wsgi_echo, which answers "hello from wsgi" to any path it does not know: a
request that falls through to the app is recognised by that body.
"""
import gzip
import hashlib
import os
import socket
import time
from email.utils import formatdate

import psutil
import pytest

from harness import app_config, copy_app
from rawhttp import poll_until

APP = b"hello from wsgi\n"


def served_requests(s, name: str = "a") -> int:
    return s.app_status(name)["requests"]


@pytest.fixture
def site(make_server, apps_dir):
    """wsgi_echo with a public/ folder and a secret next to it."""
    root = copy_app("wsgi_echo", apps_dir)
    pub = root / "public"
    (pub / "css").mkdir(parents=True)
    (pub / "hello.txt").write_bytes(b"hello from public\n")
    (pub / "css" / "site.css").write_bytes(b"body { color: red }\n")
    (pub / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (pub / "empty.txt").write_bytes(b"")
    (pub / "app-3f9a8b7c0d.js").write_bytes(b"console.log(1)\n")
    (pub / "my file.txt").write_bytes(b"spaces\n")
    (pub / ".env").write_bytes(b"SECRET=1\n")
    (pub / ".well-known").mkdir()
    (pub / ".well-known" / "acme.txt").write_bytes(b"token\n")
    (root / "secret.txt").write_bytes(b"do not serve\n")
    os.symlink("../secret.txt", pub / "leak.txt")           # a symlink leading out
    os.symlink(str(root), pub / "up")                        # a symlinked folder leading out
    os.symlink("hello.txt", pub / "alias.txt")               # a symlink inside the folder
    os.mkfifo(pub / "fifo")
    js = b"function f() { return 42 }\n" * 200
    (pub / "lib.js").write_bytes(js)
    (pub / "lib.js.gz").write_bytes(gzip.compress(js))
    (pub / "lib.js.br").write_bytes(b"pretend-brotli")
    s = make_server({"apps": [app_config("a", root, min_processes=1)]})
    s.root = root
    s.js = js
    front = psutil.Process(s.proc.pid)
    files = {f.path for f in front.open_files()}
    yield s
    # every file opened for a response was closed (just after its response was written)
    poll_until(lambda: not [f for f in front.open_files() if f.path not in files], timeout=5,
               what="the front process to close every file it opened")


def test_files_in_public_are_served_without_the_app(site):
    s = site
    before = served_requests(s)
    status, h, body = s.get("/hello.txt")
    assert (status, body) == (200, b"hello from public\n")
    assert h["content-type"] == "text/plain; charset=utf-8"
    assert h["content-length"] == "18" and h["accept-ranges"] == "bytes"
    assert h["etag"].startswith('"') and h["last-modified"].endswith("GMT") and "date" in h
    assert h["cache-control"] == "public, max-age=0, must-revalidate"
    assert s.get("/css/site.css")[1]["content-type"] == "text/css; charset=utf-8"
    assert s.get("/alias.txt")[2] == b"hello from public\n"
    assert s.get("/my%20file.txt")[2] == b"spaces\n"
    assert s.get("/.well-known/acme.txt")[2] == b"token\n"
    status, h, body = s.get("/empty.txt")
    assert (status, body, h["content-length"]) == (200, b"", "0")
    # fingerprinted names may be cached for a year
    assert s.get("/app-3f9a8b7c0d.js")[1]["cache-control"] == "public, max-age=31536000, immutable"
    status, h, body = s.request("HEAD", "/hello.txt")
    assert (status, body, h["content-length"]) == (200, b"", "18")
    big = (s.root / "public" / "big.bin").read_bytes()
    status, h, body = s.get("/big.bin")
    assert status == 200 and int(h["content-length"]) == len(big)
    assert h["content-type"] == "application/octet-stream"
    assert hashlib.sha256(body).digest() == hashlib.sha256(big).digest()
    assert served_requests(s) == before  # none of it reached a worker


def test_what_is_not_a_plain_file_inside_the_folder_falls_through_to_the_app(site):
    s = site
    before = served_requests(s)
    for path in ["/", "/css", "/css/", "/missing.txt", "/css/missing.css",
                 "/.env", "/css/../.env",                          # dotfiles
                 "/leak.txt", "/up/secret.txt",                    # symlinks leading out
                 "/../secret.txt", "/%2e%2e/secret.txt", "/css/%2E%2E/%2e%2e/secret.txt",
                 "/css%2F..%2F..%2Fsecret.txt", "/up%2Fsecret.txt",  # encoded slashes
                 "/hello.txt%00.png", "/fifo"]:
        status, _, body = s.get(path)
        assert (status, body) == (200, APP), path
    # only GET and HEAD: a POST to a file's path is the app's
    assert s.request("POST", "/hello.txt", body=b"x")[2] == APP
    assert served_requests(s) == before + 17


def test_conditional_requests_get_304(site):
    s = site
    _, h, _ = s.get("/hello.txt")
    etag, lm = h["etag"], h["last-modified"]
    status, h304, body = s.get("/hello.txt", headers={"If-None-Match": etag})
    assert (status, body) == (304, b"")
    assert h304["etag"] == etag and "content-length" not in h304
    assert s.get("/hello.txt", headers={"If-None-Match": f'"x", W/{etag}'})[0] == 304
    assert s.get("/hello.txt", headers={"If-None-Match": "*"})[0] == 304
    assert s.get("/hello.txt", headers={"If-None-Match": '"other"'})[0] == 200
    assert s.get("/hello.txt", headers={"If-Modified-Since": lm})[0] == 304
    old = formatdate(time.time() - 10 * 86400, usegmt=True)
    (s.root / "public" / "hello.txt").touch()
    os.utime(s.root / "public" / "hello.txt", (time.time() - 5 * 86400,) * 2)
    status, h, _ = s.get("/hello.txt", headers={"If-Modified-Since": old})
    assert status == 200 and h["etag"] != etag  # a changed file has a new ETag
    # If-None-Match wins over If-Modified-Since
    assert s.get("/hello.txt", headers={"If-None-Match": '"other"', "If-Modified-Since": lm})[0] == 200


def test_ranges(site):
    s = site
    big = (s.root / "public" / "big.bin").read_bytes()
    n = len(big)
    status, h, body = s.get("/hello.txt", headers={"Range": "bytes=0-4"})
    assert (status, body, h["content-range"]) == (206, b"hello", "bytes 0-4/18")
    assert s.get("/hello.txt", headers={"Range": "bytes=-6"})[2] == b"ublic\n"
    assert s.get("/hello.txt", headers={"Range": "bytes=11-"})[2] == b"public\n"
    assert s.get("/hello.txt", headers={"Range": "bytes=11-1000"})[2] == b"public\n"
    status, h, body = s.get("/hello.txt", headers={"Range": "bytes=18-"})
    assert (status, h["content-range"], body) == (416, "bytes */18", b"")
    # several ranges, another unit or a syntax error: the whole file
    for r in ["bytes=0-1,4-5", "lines=1-2", "bytes=x-y", "bytes=5-2"]:
        assert s.get("/hello.txt", headers={"Range": r})[:3:2] == (200, b"hello from public\n"), r
    # a range in the middle of a large file (sendfile from an offset)
    status, h, body = s.get("/big.bin", headers={"Range": f"bytes=1000-{n - 7}"})
    assert status == 206 and body == big[1000:n - 6] and h["content-range"] == f"bytes 1000-{n - 7}/{n}"
    # If-Range: the range only while the file is still the one the client has
    etag = s.get("/hello.txt")[1]["etag"]
    assert s.get("/hello.txt", headers={"Range": "bytes=0-4", "If-Range": etag})[0] == 206
    assert s.get("/hello.txt", headers={"Range": "bytes=0-4", "If-Range": '"old"'})[0] == 200


def test_preconditions_get_412(site):
    """If-Match and If-Unmodified-Since (nginx answers 412 too), checked before If-None-Match,
    If-Modified-Since and Range, in RFC 9110 13.2.2's order."""
    s = site
    _, h, _ = s.get("/hello.txt")
    etag, lm = h["etag"], h["last-modified"]
    old = formatdate(time.time() - 30 * 86400, usegmt=True)
    future = formatdate(time.time() + 86400, usegmt=True)
    before = served_requests(s)
    for headers in ({"If-Match": '"other"'}, {"If-Match": f'"x", W/{etag}'},  # a weak tag never matches
                    {"If-Unmodified-Since": old}, {"If-Unmodified-Since": old, "Range": "bytes=0-4"},
                    {"If-Match": '"other"', "If-None-Match": etag}, {"If-Match": '"other"', "If-Range": etag,
                                                                     "Range": "bytes=0-4"}):
        for method in ("GET", "HEAD"):
            status, h412, body = s.request(method, "/hello.txt", headers=headers)
            assert (status, body) == (412, b""), (method, headers)
            assert h412["content-length"] == "0" and "date" in h412 and "etag" not in h412
    for headers in ({"If-Match": etag}, {"If-Match": f'"x", {etag}'}, {"If-Match": "*"},
                    {"If-Unmodified-Since": lm}, {"If-Unmodified-Since": future},
                    {"If-Unmodified-Since": "not a date"},                   # ignored (RFC 9110 13.1.4)
                    {"If-Match": etag, "If-Unmodified-Since": old}):        # If-Match wins
        assert s.get("/hello.txt", headers=headers)[:3:2] == (200, b"hello from public\n"), headers
    # a passed precondition goes on to the next ones
    assert s.get("/hello.txt", headers={"If-Match": etag, "If-None-Match": etag})[0] == 304
    assert s.get("/hello.txt", headers={"If-Unmodified-Since": lm, "Range": "bytes=0-4"})[2] == b"hello"
    assert served_requests(s) == before  # none of it reached the app
    # a 412 keeps the connection: the next request on it is served
    with socket.create_connection(("127.0.0.1", s.port), timeout=20) as c:
        c.sendall(b'GET /hello.txt HTTP/1.1\r\nHost: a.test\r\nIf-Match: "x"\r\n\r\n'
                  b"GET /pid HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 412 ") and data.count(b"HTTP/1.1 200 OK") == 1
    pid = int(data.rpartition(b"\r\n\r\n")[2])
    st = s.app_status("a")
    assert st["queue"] == 0 and [(w["pid"], w["in_flight"]) for w in st["workers"]] == [(pid, 0)]


def test_if_range_with_a_date(site):
    s = site
    f = s.root / "public" / "hello.txt"
    os.utime(f, (time.time() - 3600,) * 2)
    lm = s.get("/hello.txt")[1]["last-modified"]
    assert s.get("/hello.txt", headers={"Range": "bytes=0-4", "If-Range": lm})[:3:2] == (206, b"hello")
    older = formatdate(time.time() - 7200, usegmt=True)
    for v in (older, "not a date", "W/" + s.get("/hello.txt")[1]["etag"]):
        assert s.get("/hello.txt", headers={"Range": "bytes=0-4", "If-Range": v})[0] == 200, v
    # a Last-Modified not at least a second before now is a weak validator: the whole file (RFC
    # 9110 13.1.5); a time ahead of the clock stands for "changed just now" without a race
    os.utime(f, (time.time() + 30,) * 2)
    lm = s.get("/hello.txt")[1]["last-modified"]
    assert s.get("/hello.txt", headers={"Range": "bytes=0-4", "If-Range": lm})[0] == 200


def test_precompressed_variants(site):
    s = site
    status, h, body = s.get("/lib.js", headers={"Accept-Encoding": "gzip, deflate"})
    assert status == 200 and h["content-encoding"] == "gzip" and gzip.decompress(body) == s.js
    assert h["vary"] == "Accept-Encoding" and h["content-type"] == "text/javascript; charset=utf-8"
    status, h, body = s.get("/lib.js", headers={"Accept-Encoding": "gzip, br"})
    assert h["content-encoding"] == "br" and body == b"pretend-brotli"
    for ae in [None, "identity", "gzip;q=0, br;q=0"]:
        status, h, body = s.get("/lib.js", headers={"Accept-Encoding": ae} if ae else {})
        assert body == s.js and "content-encoding" not in h and h["vary"] == "Accept-Encoding", ae
    # each representation has its own validator
    tags = {s.get("/lib.js", headers={"Accept-Encoding": ae})[1]["etag"] for ae in ["gzip", "br", "identity"]}
    assert len(tags) == 3
    # a file without variants says nothing about encodings
    assert "vary" not in s.get("/hello.txt", headers={"Accept-Encoding": "gzip"})[1]


def test_keep_alive_and_pipelining_across_static_and_app_responses(site):
    s = site
    big = (s.root / "public" / "big.bin").read_bytes()
    reqs = b"".join(b"GET %s HTTP/1.1\r\nHost: a.test\r\n\r\n" % p for p in (b"/big.bin", b"/env", b"/hello.txt"))
    with socket.create_connection(("127.0.0.1", s.port), timeout=20) as c:
        c.sendall(reqs + b"GET /big.bin HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = c.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    bodies = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        bodies.append((head.split(b" ")[1], rest[:length]))
        data = rest[length:]
    assert [b[0] for b in bodies] == [b"200"] * 4
    assert bodies[0][1] == big and bodies[3][1] == big and bodies[2][1] == b"hello from public\n"
    assert b'"PATH_INFO": "/env"' in bodies[1][1]


def test_static_map_and_sub_path_mounts(make_server, apps_dir):
    root = copy_app("wsgi_echo", apps_dir)
    (root / "build" / "assets").mkdir(parents=True)
    (root / "build" / "assets" / "index-BxT3k9aZ.js").write_bytes(b"bundle\n")
    (root / "public").mkdir()
    (root / "public" / "robots.txt").write_bytes(b"User-agent: *\n")
    (root / "docs").mkdir()
    (root / "docs" / "guide.html").write_bytes(b"<h1>guide</h1>\n")
    off = copy_app("wsgi_echo", apps_dir / "off")
    (off / "public").mkdir()
    (off / "public" / "robots.txt").write_bytes(b"nope\n")
    s = make_server({"apps": [
        app_config("a", root, path="/blog", static={"/assets/": "build/assets", "/help": str(root / "docs")}),
        app_config("b", off, path="/off", public=False),
    ]})
    status, h, body = s.get("/blog/assets/index-BxT3k9aZ.js")
    assert (status, body) == (200, b"bundle\n")
    assert h["cache-control"] == "public, max-age=31536000, immutable"
    assert s.get("/blog/help/guide.html")[1]["content-type"] == "text/html; charset=utf-8"
    assert s.get("/blog/robots.txt")[2] == b"User-agent: *\n"
    assert s.get("/robots.txt")[0] == 404                       # no app at /
    assert s.get("/blog/assets/nothing.js")[2] == APP           # a miss falls through
    assert s.get("/blog/assets")[2] == APP                      # the folder itself too
    assert s.get("/off/robots.txt")[2] == APP                   # public: false
    # a file added at the top of public/ is seen after the next refresh (0.5 s sweep)
    (root / "public" / "new.txt").write_bytes(b"new\n")
    poll_until(lambda: s.get("/blog/new.txt")[2] == b"new\n", timeout=10, what="public/new.txt served")


def test_a_client_that_leaves_mid_download_frees_the_file(site):
    s = site
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.sendall(b"GET /big.bin HTTP/1.1\r\nHost: a.test\r\n\r\n")
            assert c.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
    # the fixture checks that big.bin is closed again; the server still answers
    assert s.get("/hello.txt")[2] == b"hello from public\n"


def test_a_deploy_that_swaps_the_current_symlink_is_followed(make_server, apps_dir):
    releases = apps_dir / "releases"
    one = copy_app("wsgi_echo", releases / "1")
    two = copy_app("wsgi_echo", releases / "2")
    for root, text in ((one, b"release 1\n"), (two, b"release 2\n")):
        (root / "public").mkdir()
        (root / "public" / "version.txt").write_bytes(text)
    current = apps_dir / "current"
    os.symlink(one, current)
    s = make_server({"apps": [app_config("a", str(current))]})
    assert s.get("/version.txt")[2] == b"release 1\n"
    os.symlink(two, apps_dir / "next")
    os.replace(apps_dir / "next", current)  # atomic, as Capistrano does
    poll_until(lambda: s.get("/version.txt")[2] == b"release 2\n", timeout=10, what="the new release served")


def test_a_download_the_client_stops_reading_is_cut_after_send_timeout(make_server, apps_dir):
    root = copy_app("wsgi_echo", apps_dir)
    (root / "public").mkdir()
    with open(root / "public" / "huge.bin", "wb") as f:
        f.truncate(256 * 1024 * 1024)  # sparse: far more than every socket buffer on the way
    s = make_server({"send_timeout": 1, "apps": [app_config("a", root)]})
    front = psutil.Process(s.proc.pid)
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.sendall(b"GET /huge.bin HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert c.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
        poll_until(lambda: any(f.path.endswith("huge.bin") for f in front.open_files()), what="the download to start")
        # we read nothing more: the server gives up on us and closes the file
        poll_until(lambda: not any(f.path.endswith("huge.bin") for f in front.open_files()), timeout=30,
                   what="the stalled download to be cut")
    assert s.get("/")[2] == APP
