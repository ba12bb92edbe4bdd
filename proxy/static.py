"""Static files served by the front process: an app's `public/` folder and its `static:` map.

As Passenger does, a GET or HEAD whose path names a file in one of an app's static folders is
answered here (static_reply.py), before any worker is involved. Everything else falls through
to the app: a directory (no listings), a missing file, a dotfile (except /.well-known/), an
encoded slash or NUL, and any path that would lead outside the folder (`..` and `%2e%2e` are
gone from the canonical path already; symlinks are checked by the kernel, see beneath.py).

`static:` prefixes are below the app's mount path, as public/ is: for an app at /blog,
`static: {/assets: build}` serves /blog/assets/x.css from build/x.css.

Cost for other requests: apps without static folders have no `StaticFiles` at all (one dict
lookup in front.py). For the others, a request goes further than a set lookup of its first
path segment only when that segment names something at the top of a static folder. `refresh()`
(the proxy's 0.5 s sweep) re-reads the top of a folder when its mtime changes, follows a
`current` symlink swapped by a deploy, and forgets which files have precompressed variants.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import unquote

from .beneath import open_beneath, open_dir
from .static_reply import VARIANTS, accepted, answer, content_type

if TYPE_CHECKING:
    from .forward import Exchange
    from .reply import ReplyWriter

_MAX_KNOWN = 8192  # files whose variants are remembered between two refreshes


class Source:
    """One static folder and the URL prefix (below the app's mount) it is served at."""

    __slots__ = ("prefix", "folder", "real", "ident", "dirfd", "top", "variants")

    def __init__(self, prefix: str, folder: str):
        self.prefix = prefix      # "" for public/, else "/assets" (no trailing slash)
        self.folder = folder      # as configured (may go through symlinks)
        self.real = ""            # its real path
        self.ident = None         # (real, dev, inode, mtime) when last read
        self.dirfd = -1           # O_PATH descriptor files are opened beneath
        self.top: frozenset = frozenset()  # the names at its top level (prefix "" only)
        self.variants: dict[str, tuple] = {}  # rel -> the VARIANTS that exist for it

    def refresh(self) -> bool:
        """Follow the folder again; True if it is another folder or its top level changed."""
        self.variants.clear()
        try:
            real = os.path.realpath(self.folder)
            st = os.stat(real)
            ident = (real, st.st_dev, st.st_ino, st.st_mtime_ns)
        except OSError:
            real, ident = "", None
        if ident == self.ident:
            return False
        self.close()
        self.ident = ident
        self.top = frozenset()
        if ident is not None:
            try:
                self.dirfd = open_dir(real)
                self.real = real
                if not self.prefix:
                    self.top = frozenset(os.listdir(real))
            except OSError:
                self.close()
        return True

    def close(self) -> None:
        if self.dirfd >= 0:
            os.close(self.dirfd)
        self.dirfd = -1
        self.real = ""

    def open(self, rel: str):
        """(fd, stat) of the regular file at `rel` ('/css/x.css') in this folder, or None."""
        if self.dirfd < 0:
            return None
        fd = open_beneath(self.dirfd, self.real, rel[1:])
        if fd < 0:
            return None
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o170000 == 0o100000:  # S_ISREG: no directories, FIFOs, devices
                return fd, st
        except OSError:
            pass
        os.close(fd)
        return None

    def variants_of(self, rel: str) -> tuple:
        """The precompressed variants (.br, .gz) of `rel` that exist, remembered until refresh."""
        got = self.variants.get(rel)
        if got is None:
            got = []
            for v in VARIANTS:
                try:
                    os.stat(rel[1:] + v[0], dir_fd=self.dirfd)
                    got.append(v)
                except (OSError, ValueError):
                    pass
            got = tuple(got)
            if len(self.variants) < _MAX_KNOWN:
                self.variants[rel] = got
        return got


class StaticFiles:
    """The static folders of one app, and the answer to the requests they hold."""

    def __init__(self, mount: str, sources: list[Source]):
        self.mount_len = 0 if mount == "/" else len(mount)
        self.sources = sources
        self.heads: dict[str, tuple[Source, ...]] = {}
        self.refresh(force=True)

    @classmethod
    def for_app(cls, app) -> "StaticFiles | None":
        """None for an app with no static folder (the common, zero-cost case)."""
        sources = []
        for prefix, folder in app.static.items():
            f = folder if os.path.isabs(folder) else os.path.join(app.root, folder)
            p = prefix.strip("/")
            sources.append(Source("/" + p if p else "", f))
        public = os.path.join(app.root, "public")
        if app.public and os.path.isdir(public):
            sources.append(Source("", public))
        if not sources:
            return None
        # longest prefix first; public/ (prefix "") after every `static:` entry with the same head
        sources.sort(key=lambda s: len(s.prefix), reverse=True)
        return cls(app.path, sources)

    def refresh(self, force: bool = False) -> None:
        changed = [s.refresh() for s in self.sources]
        if not (force or any(changed)):
            return
        heads: dict[str, list[Source]] = {}
        for s in self.sources:
            names = s.top if not s.prefix else (s.prefix[1:].partition("/")[0],)
            for name in names:
                heads.setdefault(name, []).append(s)
        self.heads = {k: tuple(v) for k, v in heads.items()}

    def close(self) -> None:
        for s in self.sources:
            s.close()

    # ------------------------------------------------------------------ per request

    def serve(self, front: "ReplyWriter", ex: "Exchange", path: str, headers) -> bool:
        """Answer `ex` from a static folder and return True, or return False (the app answers).
        `path` is the canonical path front.py routed on."""
        if ex.method != "GET" and ex.method != "HEAD":
            return False
        rel = path[self.mount_len:]
        i = rel.find("/", 1)
        head = rel[1:i] if i > 0 else rel[1:]
        if "%" in rel:
            if "%2F" in rel or "%00" in rel:
                return False  # an encoded slash or NUL never names a file
            rel = unquote(rel, errors="surrogateescape")
            head = unquote(head, errors="surrogateescape")
        sources = self.heads.get(head)
        if sources is None:
            return False
        if "/." in rel and not _dots_allowed(rel):
            return False
        for src in sources:
            p = src.prefix
            if p:
                if not (rel.startswith(p) and rel[len(p):len(p) + 1] == "/"):
                    continue
                rel = rel[len(p):]
            found = src.open(rel)
            if found is not None:
                _reply(front, ex, headers, src, rel, *found)
                return True
        return False


def build(apps, pools: dict) -> dict:
    """pool -> StaticFiles, for the apps that have static folders."""
    out = {}
    for app in apps:
        st = StaticFiles.for_app(app)
        if st is not None:
            out[pools[app.name]] = st
    return out


def _dots_allowed(rel: str) -> bool:
    """Dotfiles (.env, .git/...) are never served; /.well-known/ is (ACME challenges)."""
    return all(not seg.startswith(".") or seg == ".well-known" for seg in rel.split("/"))


def _reply(front: "ReplyWriter", ex: "Exchange", headers, src: Source, rel: str, fd: int, st) -> None:
    """Answer with the file open on `fd` (or its precompressed variant); closes what it opened
    unless a sending task took it over."""
    handed = False
    try:
        coding = b""
        vary = False
        if content_type(rel)[1]:
            have = src.variants_of(rel)
            if have:
                vary = True
                ok = accepted(headers.get("Accept-Encoding", ""))
                for ext, name, token in have:
                    if name in ok:
                        found = src.open(rel + ext)
                        if found is not None:
                            os.close(fd)
                            fd, st = found
                            coding = token
                            break
        handed = answer(front, ex, headers, rel, fd, st, coding, vary)
    except OSError:  # the file changed or vanished under us; the client gets no short body
        if not ex.finished:
            front.abort(ex)
    finally:
        if not handed:
            os.close(fd)
