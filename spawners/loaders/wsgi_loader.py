"""passenger-lite WSGI loader: serves one WSGI app over HTTP/1.1 on a Unix socket.

Runs inside the app's own interpreter with nothing but the standard library (like Passenger's
wsgi-loader.py), so the app's virtualenv needs no extra package. It never imports passenger_lite.
Its only client is the passenger-lite front process, which sends well-formed HTTP/1.1 with the
client's address in X-Real-IP and the scheme in X-Forwarded-Proto.

Environment (set by the manager):
  PASSENGER_LITE_SOCKET       Unix socket path to bind
  PASSENGER_LITE_ENTRY        module:callable
  PASSENGER_LITE_MOUNT        mount prefix ('' at the root): SCRIPT_NAME
  PASSENGER_LITE_CONCURRENCY  requests run at once (1: one at a time; 0: unlimited)

One thread per connection; a semaphore bounds the requests that run at once. SIGTERM stops
accepting, lets the running requests finish, then exits.
"""
import inspect
import os
import signal
import socket
import sys
import threading
import traceback

from pl_apploading import is_factory, load_app, print_app_error, show_info_logs, takes  # our folder
from urllib.parse import unquote_to_bytes

ENCODING = "latin-1"
MAX_HEAD = 65536
DRAIN_MAX = 1 << 20  # unread request body we read and drop to keep the connection; beyond: close
REASONS = {200: "OK", 400: "Bad Request", 500: "Internal Server Error"}


class BadRequest(Exception):
    pass


class _Input:
    """wsgi.input for a Content-Length body."""

    __slots__ = ("_r", "_left")

    def __init__(self, rfile, length):
        self._r = rfile
        self._left = length

    def read(self, size=-1):
        if self._left <= 0:
            return b""
        if size is None or size < 0 or size > self._left:
            size = self._left
        data = self._r.read(size)
        if len(data) < size:
            self._left = 0
            raise ConnectionError("request body cut short")
        self._left -= len(data)
        return data

    def readline(self, size=-1):
        if self._left <= 0:
            return b""
        if size is None or size < 0 or size > self._left:
            size = self._left
        data = self._r.readline(size)
        self._left -= len(data)
        return data

    def readlines(self, hint=-1):
        return list(iter(self.readline, b""))

    def __iter__(self):
        return iter(self.readline, b"")

    def unread(self):
        return self._left


class _ChunkedInput:
    """wsgi.input for a chunked body (wsgi.input_terminated: read() to the end is allowed)."""

    def __init__(self, rfile):
        self._r = rfile
        self._buf = b""
        self._done = False

    def _fill(self):
        line = self._r.readline(MAX_HEAD)
        if not line.endswith(b"\n"):
            raise ConnectionError("request body cut short")
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while self._r.readline(MAX_HEAD) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            self._done = True
            return
        data = self._r.read(size)
        if len(data) < size:
            raise ConnectionError("request body cut short")
        self._r.readline(4)  # CRLF after the chunk
        self._buf += data

    def read(self, size=-1):
        if size is None or size < 0:
            while not self._done:
                self._fill()
            data, self._buf = self._buf, b""
            return data
        while len(self._buf) < size and not self._done:
            self._fill()
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def readline(self, size=-1):
        while b"\n" not in self._buf and not self._done and (size is None or size < 0 or len(self._buf) < size):
            self._fill()
        i = self._buf.find(b"\n")
        end = len(self._buf) if i < 0 else i + 1
        if size is not None and size >= 0:
            end = min(end, size)
        data, self._buf = self._buf[:end], self._buf[end:]
        return data

    def readlines(self, hint=-1):
        return list(iter(self.readline, b""))

    def __iter__(self):
        return iter(self.readline, b"")

    def unread(self):
        if self._done and not self._buf:
            return 0
        try:
            while not self._done:
                self._buf = b""
                self._fill()
        except (ConnectionError, ValueError):
            return DRAIN_MAX + 1
        self._buf = b""
        return 0


class Server:
    def __init__(self, app, sock_path, mount, concurrency):
        self.app = app
        self.sock_path = sock_path
        self.mount = mount
        self.limit = threading.BoundedSemaphore(concurrency) if concurrency > 0 else None
        self.multithread = concurrency != 1
        self.active = 0
        self.idle = threading.Condition()
        self.stopping = False
        self.listener = None
        self.base_env = {
            "SCRIPT_NAME": mount,
            "SERVER_SOFTWARE": "passenger-lite",
            "wsgi.version": (1, 0),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": self.multithread,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
        }

    # ------------------------------------------------------------------ lifecycle

    def serve(self):
        try:
            os.unlink(self.sock_path)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(self.sock_path)
        s.listen(1024)
        self.listener = s
        signal.signal(signal.SIGTERM, self._on_term)
        while not self.stopping:
            try:
                conn, _ = s.accept()
            except OSError:
                if self.stopping:
                    break
                raise
            t = threading.Thread(target=self._connection, args=(conn,), daemon=True)
            t.start()
        with self.idle:
            while self.active:
                self.idle.wait()

    def _on_term(self, signum, frame):
        self.stopping = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()

    # ------------------------------------------------------------------ one connection

    def _connection(self, conn):
        rfile = conn.makefile("rb", buffering=65536)
        try:
            while not self.stopping:
                line = rfile.readline(MAX_HEAD)
                if not line:
                    return
                if line in (b"\r\n", b"\n"):
                    continue
                with self.idle:
                    self.active += 1
                try:
                    keep = self._request(conn, rfile, line)
                finally:
                    with self.idle:
                        self.active -= 1
                        if not self.active:
                            self.idle.notify_all()
                if not keep:
                    return
        except (ConnectionError, BrokenPipeError, TimeoutError):
            return
        except BadRequest as e:
            self._simple(conn, 400, str(e), close=True)
        finally:
            try:
                rfile.close()
                conn.close()
            except OSError:
                pass

    def _simple(self, conn, status, text, close=False):
        body = text.encode("utf-8", "replace")
        head = "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n" % (
            status, REASONS.get(status, "Error"), len(body), "Connection: close\r\n" if close else "")
        try:
            conn.sendall(head.encode(ENCODING) + body)
        except OSError:
            pass

    def _request(self, conn, rfile, line):
        try:
            method, target, version = line.decode(ENCODING).rstrip("\r\n").split(" ", 2)
        except ValueError:
            raise BadRequest("malformed request line") from None
        env = self.base_env.copy()
        chunked = False
        close = version == "HTTP/1.0"
        size = 0
        while True:
            h = rfile.readline(MAX_HEAD)
            size += len(h)
            if h in (b"\r\n", b"\n"):
                break
            if not h or size > MAX_HEAD:
                raise BadRequest("headers cut short or too large")
            name, sep, value = h.decode(ENCODING).partition(":")
            if not sep:
                raise BadRequest("malformed header")
            key = name.strip().upper().replace("-", "_")
            value = value.strip()
            if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
                env[key] = value
                continue
            if key == "TRANSFER_ENCODING":
                chunked = value.lower() == "chunked"
                continue
            if key == "CONNECTION":
                v = value.lower()
                close = "close" in v or (close and "keep-alive" not in v)
            key = "HTTP_" + key
            if key in env:
                env[key] += "," + value
            else:
                env[key] = value
        if method == "OPTIONS" and target == "*":  # readiness probe: answered without the app
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            return not close
        path, _, query = target.partition("?")
        path = unquote_to_bytes(path).decode(ENCODING)
        mount = self.mount
        if mount and (path == mount or path.startswith(mount + "/")):
            path = path[len(mount):]
        env["REQUEST_METHOD"] = method
        env["PATH_INFO"] = path
        env["QUERY_STRING"] = query
        env["RAW_URI"] = env["REQUEST_URI"] = target
        env["SERVER_PROTOCOL"] = version
        env["wsgi.url_scheme"] = env.get("HTTP_X_FORWARDED_PROTO", "http")
        env["REMOTE_ADDR"] = env.get("HTTP_X_REAL_IP", "127.0.0.1")
        host = env.get("HTTP_HOST", "localhost")
        hn, _, port = host.rpartition(":") if host.rfind(":") > host.rfind("]") else (host, "", "")
        env["SERVER_NAME"] = hn or host
        env["SERVER_PORT"] = port or env.get("HTTP_X_FORWARDED_PORT") or (
            "443" if env["wsgi.url_scheme"] == "https" else "80")
        if chunked:
            inp = _ChunkedInput(rfile)
        else:
            try:
                length = int(env.get("CONTENT_LENGTH") or 0)
            except ValueError:
                raise BadRequest("bad Content-Length") from None
            inp = _Input(rfile, length)
        env["wsgi.input"] = inp
        if self.limit is not None:
            with self.limit:
                keep = self._call_app(conn, env, method, close)
        else:
            keep = self._call_app(conn, env, method, close)
        left = inp.unread()
        if left:
            if left > DRAIN_MAX:
                return False
            inp.read()
        return keep

    def _call_app(self, conn, env, method, close):
        state = {"status": None, "headers": None, "sent": False, "chunked": False, "no_body": False}

        def start_response(status, headers, exc_info=None):
            if exc_info:
                try:
                    if state["sent"]:
                        raise exc_info[1].with_traceback(exc_info[2])
                finally:
                    exc_info = None
            elif state["status"] is not None:
                raise AssertionError("start_response called twice without exc_info")
            state["status"] = status
            state["headers"] = headers
            return write

        def head():
            status = state["status"]
            code = int(status[:3])
            out = ["HTTP/1.1 ", status, "\r\n"]
            has_length = False
            for k, v in state["headers"]:
                lk = k.lower()
                if lk == "content-length":
                    has_length = True
                elif lk in ("connection", "transfer-encoding", "keep-alive"):
                    continue
                out += [k, ": ", v, "\r\n"]
            no_body = method == "HEAD" or code in (204, 304) or code < 200
            if not has_length and not no_body:
                out.append("Transfer-Encoding: chunked\r\n")
                state["chunked"] = True
            state["no_body"] = no_body
            if close:
                out.append("Connection: close\r\n")
            out.append("\r\n")
            state["sent"] = True
            return "".join(out).encode(ENCODING)

        def frame(data):
            if state["no_body"] or not data:
                return b""
            if state["chunked"]:
                return b"%x\r\n%s\r\n" % (len(data), data)
            return data

        def write(data):
            if state["status"] is None:
                raise AssertionError("write() before start_response")
            if not state["sent"]:
                conn.sendall(head() + frame(data))
            else:
                conn.sendall(frame(data))

        try:
            result = self.app(env, start_response)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            if not state["sent"]:
                self._simple(conn, 500, "Internal Server Error\n", close=True)
            return False
        try:
            if isinstance(result, (list, tuple)) and len(result) <= 1 and not state["sent"]:
                data = result[0] if result else b""
                if state["status"] is None:
                    raise AssertionError("the app returned without calling start_response")
                out = head() + frame(data)
                if state["chunked"]:
                    out += b"0\r\n\r\n"
                conn.sendall(out)
                return not close
            for data in result:
                if not data:
                    continue
                if not state["sent"]:
                    conn.sendall(head() + frame(data))
                else:
                    conn.sendall(frame(data))
            if not state["sent"]:
                if state["status"] is None:
                    raise AssertionError("the app returned without calling start_response")
                conn.sendall(head())
            if state["chunked"]:
                conn.sendall(b"0\r\n\r\n")
            return not close
        except (ConnectionError, BrokenPipeError):
            return False
        except Exception:
            traceback.print_exc(file=sys.stderr)
            if not state["sent"]:
                self._simple(conn, 500, "Internal Server Error\n", close=True)
            return False  # a response already begun is cut, never finished as if whole
        finally:
            close_fn = getattr(result, "close", None)
            if close_fn is not None:
                try:
                    close_fn()
                except Exception:
                    traceback.print_exc(file=sys.stderr)


def describe(obj):
    try:
        return "%s taking %s" % (getattr(obj, "__qualname__", type(obj).__name__), inspect.signature(obj))
    except (TypeError, ValueError):
        return type(obj).__name__


def factory_hint(entry):
    return entry + "()" if "(" not in entry else entry


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        sys.path.pop(0)
    sys.path.insert(0, os.getcwd())
    entry = os.environ["PASSENGER_LITE_ENTRY"]
    try:
        app = load_app(entry, "application")
    except BaseException:
        print_app_error()
        print(f"passenger-lite: could not load the WSGI app {entry!r} (cwd {os.getcwd()}, "
              f"python {sys.executable})", file=sys.stderr)
        sys.exit(3)
    if not takes(app, 2) or is_factory(app):
        print(f"passenger-lite: {entry} is {describe(app)}, not a WSGI app taking (environ, start_response); "
              f"if it builds and returns the app (an app factory), call it: entry: \"{factory_hint(entry)}\"",
              file=sys.stderr)
        sys.exit(3)
    show_info_logs()
    server = Server(app, os.environ["PASSENGER_LITE_SOCKET"], os.environ.get("PASSENGER_LITE_MOUNT", ""),
                    int(os.environ.get("PASSENGER_LITE_CONCURRENCY", "1") or 1))
    server.serve()


if __name__ == "__main__":
    main()
