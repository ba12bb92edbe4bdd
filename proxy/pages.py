"""Error pages (jinja2). In production: a plain page with the request id; in development: also
the app, the command, the exit status, the last lines of the worker's output and fix hints.

Pages without details are rendered once per status and the request id is spliced in, so a flood
of 503s under overload costs no template rendering.
"""
from __future__ import annotations

from pathlib import Path

import markupsafe

TITLES = {
    400: ("Bad Request", "The request could not be understood."),
    403: ("Forbidden", "You may not see this."),
    404: ("Not Found", "No app is mounted here."),
    405: ("Method Not Allowed", "This method is not allowed here."),
    408: ("Request Timeout", "The request took too long to arrive."),
    413: ("Content Too Large", "The request body is larger than this server accepts."),
    414: ("URI Too Long", "The request target is longer than this server accepts."),
    416: ("Range Not Satisfiable", "The requested range is not available."),
    431: ("Request Header Fields Too Large", "The request headers are larger than this server accepts."),
    500: ("Internal Server Error", "Something went wrong."),
    501: ("Not Implemented", "This server does not support what the request asks for."),
    502: ("Bad Gateway", "The application failed while handling this request."),
    503: ("Service Unavailable", "The application cannot take this request right now. Please try again shortly."),
    504: ("Gateway Timeout", "The application took too long to answer."),
    505: ("HTTP Version Not Supported", "Only HTTP/1.0 and HTTP/1.1 are spoken here."),
}
_MARK = "\x00REQUEST-ID\x00"


class Pages:
    def __init__(self, development: bool = False):
        self.development = development
        self._compiled = None  # jinja2 is imported with the first error page: start-up and RSS
        self._plain: dict[tuple[int, str], tuple[str, str]] = {}
        self._custom: dict[str, str] = {}  # path -> file text

    @property
    def _template(self):
        if self._compiled is None:
            import jinja2

            env = jinja2.Environment(
                loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
                autoescape=True, trim_blocks=True, lstrip_blocks=True)
            self._compiled = env.get_template("error.html")
        return self._compiled

    def reason(self, status: int) -> str:
        return TITLES.get(status, ("Error", ""))[0]

    def render(self, status: int, request_id: str = "", *, message: str | None = None,
               problem=None, custom: str | None = None) -> bytes:
        """HTML for an error response. `problem` (an object with app, step, command, cwd, exit,
        hints, output) is shown in development only; `custom` is an app's own page file."""
        if custom and status >= 500:
            text = self._custom.get(custom)
            if text is None:
                try:
                    text = Path(custom).read_text(encoding="utf-8", errors="replace")
                except OSError:
                    text = ""
                self._custom[custom] = text
            if text:
                return text.replace("{{request_id}}", request_id).encode("utf-8")
        title, default = TITLES.get(status, ("Error", "Something went wrong."))
        if problem is not None and self.development:
            return self._template.render(status=status, title=title, message=message or default,
                                         problem=problem, request_id=request_id).encode("utf-8")
        key = (status, message or default)
        parts = self._plain.get(key)
        if parts is None:
            html = self._template.render(status=status, title=title, message=message or default,
                                         problem=None, request_id=_MARK)
            a, _, b = html.partition(_MARK)
            parts = self._plain[key] = (a, b)
        return (parts[0] + str(markupsafe.escape(request_id)) + parts[1]).encode("utf-8")
