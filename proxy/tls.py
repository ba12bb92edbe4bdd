"""TLS for a listener: its default certificate and more certificates picked by SNI.

`ListenerTLS` owns the listener's SSLContext for the life of the listening socket. `reload()`
(config reload, e.g. SIGHUP after a certificate renewal) reads the certificate files again into
the same contexts, so new handshakes get the new certificates without closing the socket;
on any error the certificates in use stay and the error is reported.

SNI: an exact host name first, then a wildcard (`*.example.org` matches one label below
example.org, as certificates do); an unknown or absent name gets the default certificate.
Only HTTP/1.1 is offered by ALPN.
"""
from __future__ import annotations

import ssl

from passenger_lite.manager.config import TLSConfig, load_certificate


class TLSError(OSError):
    """A certificate or key that cannot be used; the message names the files."""


def _context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    _load(ctx, cert, key)
    return ctx


def _load(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    try:
        load_certificate(ctx, cert, key)
    except ValueError as e:
        raise TLSError(str(e)) from None


class ListenerTLS:
    def __init__(self, tls: TLSConfig):
        self.context = _context(tls.cert, tls.key)
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wild: dict[str, ssl.SSLContext] = {}  # ".example.org" -> context
        self._build_sni(tls)
        self.context.sni_callback = self._pick
        self.config = tls

    def _build_sni(self, tls: TLSConfig) -> None:
        exact: dict[str, ssl.SSLContext] = {}
        wild: dict[str, ssl.SSLContext] = {}
        for extra in tls.certificates:
            c = _context(extra.cert, extra.key)
            for h in extra.hosts:
                h = h.strip().lower().rstrip(".")
                if h.startswith("*."):
                    wild.setdefault(h[1:], c)
                else:
                    exact.setdefault(h, c)
        self._exact, self._wild = exact, wild

    def _pick(self, sslobj, server_name, _ctx) -> None:
        if not server_name:
            return None
        name = server_name.lower().rstrip(".")
        c = self._exact.get(name)
        if c is None:
            dot = name.find(".")
            if dot > 0:
                c = self._wild.get(name[dot:])
        if c is not None:
            sslobj.context = c
        return None

    def reload(self, tls: TLSConfig) -> None:
        """Read the certificates again (same or new files). Raises TLSError and changes nothing
        when one of them cannot be used."""
        _context(tls.cert, tls.key)  # check before touching the live context
        old = (self._exact, self._wild)
        self._build_sni(tls)
        try:
            _load(self.context, tls.cert, tls.key)
        except TLSError:
            self._exact, self._wild = old
            raise
        self.config = tls
