"""Issue 7 item 3: TLS listeners with SNI certificates, HTTPS redirects, X-Forwarded-Proto,
through the real CLI, with throwaway certificates from trustme."""
import hashlib
import http.client
import json
import os
import socket
import ssl

import pytest
import trustme
from websockets.sync.client import connect

from harness import app_config, copy_app, free_port, run_cli
from rawhttp import poll_until


class _HTTPS(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 whatever the host name (which goes into SNI, the check and Host)."""

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def https(port: int, host: str, path: str, ctx: ssl.SSLContext, method: str = "GET", headers=None):
    c = _HTTPS(host, port, context=ctx, timeout=30)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def served_names(port: int, sni: str | None, ca: trustme.CA) -> set:
    """The DNS names of the certificate the server shows for `sni` (None: no SNI)."""
    ctx = trusting(ca)
    ctx.check_hostname = False  # we look at the certificate ourselves
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname=sni) as tls:
            return {v for k, v in tls.getpeercert()["subjectAltName"] if k == "DNS"}


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def trusting(ca) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture
def client(ca):
    return trusting(ca)


def write_cert(ca, folder, name: str, *hosts: str):
    cert = ca.issue_cert(*hosts)
    cert.cert_chain_pems[0].write_to_path(str(folder / f"{name}.crt"))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(folder / f"{name}.crt"), append=True)
    cert.private_key_pem.write_to_path(str(folder / f"{name}.key"))
    return cert


def tls_site(tmp_path, ca, apps: list, **extra) -> tuple[dict, int]:
    certs = tmp_path / "certs"
    certs.mkdir(exist_ok=True)
    write_cert(ca, certs, "default", "app.test")
    write_cert(ca, certs, "other", "other.test", "*.wild.test")
    tls_port = free_port()
    config = {"listen": ["127.0.0.1:@PLAIN@", {"address": f"127.0.0.1:{tls_port}", "tls": {
        "cert": str(certs / "default.crt"), "key": str(certs / "default.key"),
        "certificates": [{"hosts": ["other.test", "*.wild.test"],
                          "cert": str(certs / "other.crt"), "key": str(certs / "other.key")}]}}],
        "apps": apps, **extra}
    return config, tls_port


def start(make_server, config: dict):
    import yaml

    return make_server(yaml.safe_dump(config, sort_keys=False).replace("@PLAIN@", "@PORT@"))


def test_https_with_certificates_chosen_by_sni(make_server, apps_dir, tmp_path, ca, client):
    config, port = tls_site(tmp_path, ca, [
        app_config("main", copy_app("wsgi_echo", apps_dir), hosts=["app.test"]),
        app_config("other", copy_app("starlette_app", apps_dir), hosts=["other.test", "*.wild.test"]),
    ])
    s = start(make_server, config)
    status, _, body = https(port, "app.test", "/env", client)
    env = json.loads(body)
    assert status == 200 and env["wsgi.url_scheme"] == "https"
    assert env["headers"]["X_FORWARDED_PROTO"] == "https" and env["headers"]["X_FORWARDED_PORT"] == str(port)
    # the SNI certificates, verified against the host name by the client
    assert https(port, "other.test", "/", client)[2] == b"hello from starlette\n"
    env = json.loads(https(port, "x.wild.test", "/env", client)[2])
    assert env["scheme"] == "https" and env["headers"]["x-forwarded-proto"] == "https"
    assert served_names(port, "other.test", ca) == {"other.test", "*.wild.test"}
    # a wildcard covers one label; unknown names and no SNI get the default certificate
    for sni in ("a.b.wild.test", "wild.test", "unknown.test", None):
        assert served_names(port, sni, ca) == {"app.test"}, sni
    with pytest.raises(ssl.SSLCertVerificationError):
        https(port, "a.b.wild.test", "/", client)
    # the plain listener says http
    env = s.get_json("/env", host="app.test")
    assert env["wsgi.url_scheme"] == "http" and env["headers"]["X_FORWARDED_PROTO"] == "http"
    # only HTTP/1.1 is offered
    ctx = trusting(ca)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname="app.test") as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"


def test_redirect_https_per_app(make_server, apps_dir, tmp_path, ca, client):
    config, port = tls_site(tmp_path, ca, [
        app_config("secure", copy_app("wsgi_echo", apps_dir), hosts=["app.test"], redirect_https=True),
        app_config("open", copy_app("starlette_app", apps_dir), hosts=["other.test"]),
    ])
    s = start(make_server, config)
    status, h, body = s.get("/env?x=1&y=%2F", host="app.test:8080")
    assert status == 301 and h["location"] == f"https://app.test:{port}/env?x=1&y=%2F" and body == b""
    # a POST keeps its method and body on the way: 308; its body is never read, so the connection closes
    status, h, _ = s.request("POST", "/form", body=b"a=1", host="app.test")
    assert status == 308 and h["location"] == f"https://app.test:{port}/form" and h["connection"] == "close"
    assert s.request("HEAD", "/", host="app.test")[0] == 301
    # over HTTPS it is served; the other app is served on both
    assert https(port, "app.test", "/", client)[2] == b"hello from wsgi\n"
    assert s.get("/", host="other.test")[2] == b"hello from starlette\n"


def test_static_files_and_websockets_over_tls(make_server, apps_dir, tmp_path, ca, client):
    root = copy_app("starlette_app", apps_dir)
    (root / "public").mkdir()
    big = os.urandom(5 * 1024 * 1024 + 3)
    (root / "public" / "big.bin").write_bytes(big)
    config, port = tls_site(tmp_path, ca, [app_config("a", root, hosts=["app.test"])])
    start(make_server, config)
    status, h, body = https(port, "app.test", "/big.bin", client)
    assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(big).digest()
    status, h, body = https(port, "app.test", "/big.bin", client, headers={"Range": "bytes=100-"})
    assert status == 206 and body == big[100:]
    with connect(f"wss://app.test:{port}/ws", ssl=client, server_hostname="app.test", proxy=None,
                 open_timeout=20, sock=socket.create_connection(("127.0.0.1", port))) as ws:
        ws.send("over tls")
        assert ws.recv(timeout=10) == "echo: over tls"


def test_a_client_that_never_finishes_its_handshake_is_dropped(make_server, apps_dir, tmp_path, ca):
    config, port = tls_site(tmp_path, ca, [app_config("a", copy_app("wsgi_echo", apps_dir))],
                            client_header_timeout=1)
    start(make_server, config)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"\x16\x03\x01")  # the start of a ClientHello, and then nothing
        assert sock.recv(1024) == b""  # closed by the server, long before our 30 s


def test_unusable_certificates_are_config_errors(tmp_path, apps_dir, ca):
    certs = tmp_path / "certs"
    certs.mkdir()
    write_cert(ca, certs, "a", "app.test")
    write_cert(ca, certs, "b", "b.test")
    (certs / "junk.pem").write_text("not a certificate\n")
    cfg = tmp_path / "sites.yaml"
    app = copy_app("wsgi_echo", apps_dir)
    cfg.write_text(f"""listen:
  - address: 127.0.0.1:{free_port()}
    tls:
      cert: {certs / 'a.crt'}
      key: {certs / 'b.key'}
      certificates:
        - hosts: [x.test]
          cert: {certs / 'junk.pem'}
          key: {certs / 'a.key'}
apps:
  - name: a
    root: {app}
""")
    for cmd in ("check", "start"):
        r = run_cli(cmd, "--config", str(cfg))
        assert r.returncode == 2, r
        assert "sites.yaml:4: listen[0].tls.cert: the key" in r.stderr and "does not belong to the certificate" in r.stderr
        assert "sites.yaml:8: listen[0].tls.certificates[0].cert:" in r.stderr
        assert "junk.pem is not a PEM certificate" in r.stderr
        assert "Traceback" not in r.stderr


def test_reload_reads_renewed_certificates(make_server, apps_dir, tmp_path, ca, client):
    config, port = tls_site(tmp_path, ca, [app_config("a", copy_app("wsgi_echo", apps_dir))])
    s = start(make_server, config)
    certs = tmp_path / "certs"

    def serial() -> int:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            with client.wrap_socket(sock, server_hostname="app.test") as tls:
                from cryptography import x509

                return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number

    before = serial()
    renewed = write_cert(ca, certs, "default", "app.test")  # the same files, a new certificate
    from cryptography import x509

    new_serial = x509.load_pem_x509_certificate(renewed.cert_chain_pems[0].bytes()).serial_number
    assert new_serial != before
    r = s.cli("reload")
    assert r.returncode == 0, r.stderr
    poll_until(lambda: serial() == new_serial, timeout=10, what="the renewed certificate served")
    assert https(port, "app.test", "/", client)[2] == b"hello from wsgi\n"
    # a broken renewal is refused, and the certificate in use stays
    (certs / "default.key").write_text("oops\n")
    r = s.cli("reload")
    assert r.returncode != 0 and "default.key is not a PEM private key" in (r.stderr + r.stdout)
    assert serial() == new_serial
