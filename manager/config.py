"""Site configuration: pydantic models, YAML with line numbers, and errors a user can act on.

The models are the single source of truth for keys, defaults and validation, and for the JSON
Schema shipped in configs/. YAML is read with a loader that rejects duplicate keys and remembers
the line of every key and list item, so an error reads `sites.yaml:14: apps[1] (blog).hosts: ...`.

A leaf module: it imports nothing from passenger_lite. Checks that need the spawner registry
(detecting an app's type, checking its entry) are done through the small `Registry` protocol the
caller passes in.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator

# ----------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    key: str  # e.g. "apps[1] (blog).hosts[0]"; "" for the whole file
    message: str
    line: int | None = None
    column: int | None = None  # YAML syntax errors only


class ConfigError(Exception):
    """One or more problems with one config file; str() is the one-screen report."""

    MAX_SHOWN = 12

    def __init__(self, path: str | os.PathLike, problems: list[Problem]):
        self.path = str(path)
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.problems)
        head = f"{self.path}: {n} configuration error{'s' if n != 1 else ''}"
        lines = [head]
        for p in self.problems[: self.MAX_SHOWN]:
            where = f"{self.path}:{p.line}" if p.line else self.path
            if p.line and p.column:
                where += f":{p.column}"
            key = f" {p.key}:" if p.key else ""
            lines.append(f"  {where}:{key} {p.message}")
        if n > self.MAX_SHOWN:
            lines.append(f"  ... and {n - self.MAX_SHOWN} more")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- YAML with lines


class _LineDict(dict):
    """A mapping from YAML that knows the line of each of its keys, and the keys it was given
    twice: (key, line, line of the first) - the first value is kept, the error is reported with
    the others (see duplicate_keys)."""

    line: int
    key_lines: dict
    duplicates: list


class _LineList(list):
    line: int
    item_lines: list


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _LineDict:
    own = {id(k) for k, _ in node.value}  # keys written here; flatten_mapping adds those of `<<:` first
    loader.flatten_mapping(node)
    out = _LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    out.duplicates = []
    merged: set = set()  # keys that came from `<<: *defaults`: a key written here overrides them
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark)
        if key in out and key not in merged:
            out.duplicates.append((key, line, out.key_lines[key]))
            continue
        merged.discard(key)
        if id(key_node) not in own:
            merged.add(key)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = line
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> _LineList:
    out = _LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, [Problem("", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, [Problem("", f"cannot read: {e}")]) from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        raise ConfigError(path, [Problem("", f"invalid YAML: {_yaml_hint(e)}", line, column)]) from None
    except yaml.YAMLError as e:
        raise ConfigError(path, [Problem("", f"invalid YAML: {e}")]) from None


def _yaml_hint(e: yaml.MarkedYAMLError) -> str:
    """PyYAML's message, led by what to do about it where the cause is a common one."""
    problem = e.problem or ""
    context = e.context or ""
    raw = ": ".join(x for x in (context, problem) if x) or "syntax error"
    opened = f" on line {e.context_mark.line + 1}" if e.context_mark else ""
    if "'\\t'" in problem:
        hint = "a tab character; YAML indents with spaces only"
    elif "expected <block end>" in problem or "did not find expected key" in problem:
        hint = f"this line does not line up with the block that starts{opened}; check the indentation"
    elif "mapping values are not allowed here" in problem:
        hint = "a ':' where no key can start; check the indentation, or quote a value that contains ': '"
    elif "could not find expected ':'" in problem:
        hint = "a line that is not `key: value`; check the indentation"
    elif "flow sequence" in context or "flow mapping" in context:
        bracket = "[ ]" if "sequence" in context else "{ }"
        hint = f"the {bracket} opened{opened} is not closed, or lacks a comma between items"
    elif "quoted scalar" in context:
        hint = f"the quote opened{opened} is not closed"
    else:
        return raw
    return f"{hint} (YAML: {raw})"


def duplicate_keys(data: Any) -> list[Problem]:
    """Every key given twice in one mapping, named like the other problems."""
    out: list[Problem] = []

    def walk(node: Any, loc: tuple) -> None:
        if isinstance(node, _LineDict):
            for key, line, first in node.duplicates:
                out.append(Problem(key_name(data, loc + (key,)), f"duplicate key (first given on line {first})", line))
            for k, v in node.items():
                walk(v, loc + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, loc + (i,))

    walk(data, ())
    return out


def line_of(data: Any, loc: tuple) -> int | None:
    """The line of the deepest element of `loc` that the YAML told us about."""
    line = getattr(data, "line", None)
    node = data
    for part in loc:
        if isinstance(node, _LineDict) and part in node:
            line = node.key_lines.get(part, line)
            node = node[part]
        elif isinstance(node, _LineList) and isinstance(part, int) and 0 <= part < len(node):
            line = node.item_lines[part]
            node = node[part]
        elif part == 0 and isinstance(node, (str, dict)):
            continue  # a list written as its one item (`hosts: blog.test`)
        else:
            break
    return line


def key_name(data: Any, loc: tuple) -> str:
    """`apps[1] (blog).hosts[0]` for ('apps', 1, 'hosts', 0)."""
    out = ""
    node = data
    for part in loc:
        if part == 0 and isinstance(node, (str, dict)):
            continue  # a list written as its one item (`hosts: blog.test`)
        if isinstance(part, int):
            out += f"[{part}]"
            if isinstance(node, list) and 0 <= part < len(node):
                node = node[part]
                if isinstance(node, dict) and isinstance(node.get("name"), str):
                    out += f" ({node['name']})"
            else:
                node = None
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out


# ----------------------------------------------------------------------------- models

_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]?)i?b?\s*$", re.I)


def parse_size(value: int | str) -> int:
    """Bytes from 1048576, '512k', '10m' or '1g' (binary units, as nginx reads them)."""
    if isinstance(value, int):
        return value
    m = _SIZE_RE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a size (use bytes or a number with k, m or g)")
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _one_or_many(value: Any) -> Any:
    """`hosts: blog.test` means `hosts: [blog.test]` (and so for the other lists of names)."""
    return [value] if isinstance(value, str) else value


def _or_one(schema: dict) -> None:
    """JSON Schema of a list that may also be written as its one item (see _one_or_many)."""
    array = {k: schema.pop(k) for k in ("type", "items", "minItems") if k in schema}
    schema["anyOf"] = [array["items"], array] if "anyOf" not in array["items"] else [*array["items"]["anyOf"], array]


# A list of strings that may be written as one plain string.
Names = Annotated[list[str], BeforeValidator(_one_or_many),
                  WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})]


class TLSCertificate(_Model):
    """An extra certificate picked by SNI for the host names it lists."""

    hosts: Names = Field(min_length=1, description="Host names (exact or *.wildcard) this certificate serves.")
    cert: str = Field(description="PEM certificate chain file.")
    key: str = Field(description="PEM private key file.")


class TLSConfig(_Model):
    cert: str = Field(description="PEM certificate chain file (the default certificate).")
    key: str = Field(description="PEM private key file.")
    certificates: list[TLSCertificate] = Field(
        default_factory=list, description="More certificates, chosen by the SNI host name.")


class ListenConfig(_Model):
    address: str = Field(description="host:port, [v6]:port or unix:/path.sock")
    tls: TLSConfig | None = Field(default=None, description="Serve HTTPS on this address.")


class SmokeRequest(_Model):
    path: str = Field(default="", description="Request path; default: the app's mount path.")
    method: str = "GET"
    status: int | None = Field(default=None, description="Expected status; default: any status below 500.")
    contains: str | None = Field(default=None, description="Text the response body must contain.")
    host: str | None = Field(default=None, description="Host header; default: the app's first host.")


class AppConfig(_Model):
    name: str = Field(pattern=_NAME_RE, description="Unique name; used in logs, status and `restart`.")
    root: str = Field(description="The app's folder; relative paths resolve against the config file's folder.")
    type: str | None = Field(
        default=None,
        description="python-wsgi | python-asgi | ruby-rack | node | command, or a plugin's type; "
                    "omitted: detected from the files in root.")
    entry: str | None = Field(
        default=None,
        description="Python: module:callable; Node: the script; Ruby: the rackup file (config.ru).")
    hosts: Names = Field(default_factory=list,
                             description="Exact (blog.example.com) or leading-wildcard (*.example.org) host names; "
                                         "omitted: any host.")
    path: str = Field(default="/", description="Mount prefix; the app sees it as SCRIPT_NAME / root_path.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables for the workers.")
    python: str | None = Field(default=None, description="The app's Python interpreter (e.g. its venv's bin/python).")
    ruby: str | None = Field(default=None, description="The app's Ruby interpreter.")
    node: str | None = Field(default=None, description="The Node.js binary.")
    command: list[str] | str | None = Field(
        default=None, description="type command: the program to run; it gets $PORT or $PASSENGER_LITE_SOCKET.")
    min_processes: int = Field(default=1, ge=0, description="Workers kept running, even when idle.")
    max_processes: int = Field(default=4, ge=1, description="Most workers this app may have.")
    concurrency: int | None = Field(
        default=None, ge=0,
        description="Requests one worker takes at once; 0 = unlimited. Default: 1, and 0 for node and python-asgi.")
    scale_threshold: int = Field(
        default=10, ge=1,
        description="For concurrency 0: spawn another worker when in-flight requests per worker pass this.")
    max_queue: int = Field(default=100, ge=0, description="Requests that may wait for a worker before 503.")
    queue_timeout: float = Field(default=30, gt=0, description="Seconds a request may wait for a worker before 504.")
    start_timeout: float = Field(default=60, gt=0, description="Seconds a worker may take to become ready.")
    min_uptime: float = Field(
        default=5, ge=0,
        description="Seconds a worker must stay up after it became ready; an exit sooner counts as a failed "
                    "start (backoff, then failed), as supervisor's startsecs. 0 = off.")
    response_timeout: float = Field(default=300, gt=0,
                                    description="Seconds a worker may take to start its response before 504.")
    idle_timeout: float = Field(default=300, ge=0,
                                description="Seconds a worker may sit idle before it is stopped (down to min_processes).")
    max_requests: int = Field(default=0, ge=0, description="Replace a worker after this many requests; 0 = never.")
    memory_limit: int | None = Field(default=None, ge=1,
                                     description="MiB (worker plus its children); replace the worker when exceeded.")
    shutdown_timeout: float | None = Field(
        default=None, ge=0, description="Seconds a draining worker may finish its requests; default: the site's.")
    user: str | None = Field(default=None, description="Run the workers as this user (when started as root).")
    group: str | None = Field(default=None, description="... and this group.")
    public: bool = Field(default=True, description="Serve files in root/public directly, as Passenger does.")
    static: dict[str, str] = Field(default_factory=dict,
                                   description="URL prefix -> folder served directly by the front process.")
    error_page: str | None = Field(default=None, description="An HTML file shown instead of our 5xx pages.")
    watch: bool | None = Field(default=None, description="Restart workers when source files change (development).")
    redirect_https: bool = Field(default=False, description="Redirect plain HTTP requests to HTTPS.")
    request_buffering: bool = Field(
        default=True, description="Read request bodies whole (memory, then a temporary file) before a worker "
                                  "is taken; false streams them to the worker as they arrive.")
    response_buffering: bool = Field(
        default=True, description="Hold responses for slow clients (memory, then a temporary file) so the worker "
                                  "is free once it has answered; false slows the worker down to the client.")
    smoke: list[SmokeRequest] = Field(default_factory=list,
                                      description="Requests `passenger-lite smoke` sends; default: GET of the mount path.")
    ready_check: str = Field(
        default="OPTIONS *",
        description="How a starting worker is found ready: 'OPTIONS *' (any answer), 'GET /path' (an answer "
                    "below 500; any method) or 'connect' (its address accepts a connection).")

    @field_validator("ready_check")
    @classmethod
    def _ready_check(cls, v: str) -> str:
        v = " ".join(v.split())
        if v.lower() == "connect":
            return "connect"
        if v == "OPTIONS *" or re.fullmatch(r"[A-Z]+ /[!-~]*", v):
            return v
        raise ValueError("must be 'OPTIONS *', a method and a path ('GET /health') or 'connect'")


class SiteConfig(_Model):
    listen: Annotated[list[Union[str, ListenConfig]], BeforeValidator(
        lambda v: [v] if isinstance(v, (str, dict)) else v)] = Field(
        default_factory=lambda: ["127.0.0.1:8080"], min_length=1, json_schema_extra=_or_one,
        description="Addresses to serve: host:port or unix:/path.sock, or {address, tls}; one, or a list.")
    environment: Literal["production", "development"] = Field(
        default="production", description="development shows details (stderr, commands) on error pages.")
    max_pool_size: int = Field(default=6, ge=1, description="Most workers across all apps.")
    shutdown_timeout: float = Field(default=30, ge=0,
                                    description="Seconds in-flight requests may take to finish on stop or restart.")
    default_user: str = Field(default="nobody",
                              description="Started as root: the user for apps whose root is owned by root.")
    trusted_proxies: Names = Field(
        default_factory=list,
        description="Peers (IPs or CIDRs) whose X-Forwarded-* / Forwarded headers are trusted.")
    client_max_body_size: Union[int, str] = Field(default="1g", description="Largest request body (413 beyond).")
    client_header_timeout: float = Field(default=10, gt=0,
                                         description="Seconds a client may take to send a request's headers.")
    client_body_timeout: float = Field(default=60, gt=0,
                                       description="Seconds between two reads of a request body before 408.")
    send_timeout: float = Field(default=60, gt=0,
                                description="Seconds a client may take to accept more of a response before it is "
                                            "cut off (a slow reader would hold its worker).")
    keepalive_timeout: float = Field(default=15, ge=0, description="Seconds an idle client connection is kept.")
    max_header_size: int = Field(default=8190, ge=256, description="Longest request line or header field (431 beyond).")
    max_headers: int = Field(default=100, ge=1, description="Most request header fields (431 beyond).")
    max_connections: int = Field(default=10000, ge=1, description="Most client connections per listener.")
    websocket_idle_timeout: float = Field(default=600, gt=0,
                                          description="Seconds a WebSocket may carry no data before it is closed.")
    log_format: Literal["text", "json"] = "text"
    log_file: str | None = Field(default=None, description="Manager and worker log; default: stderr.")
    access_log: str | None = Field(default=None, description="Access log file, '-' for stdout; default: off.")
    metrics_listen: str | None = Field(default=None,
                                       description="host:port or unix:/path for Prometheus /metrics and /health.")
    apps: list[AppConfig] = Field(min_length=1)


# ----------------------------------------------------------------------------- resolved view


class Registry(Protocol):
    """What config needs from the spawner registry (manager passes spawners.registry)."""

    def types(self) -> list[str]: ...

    def detect(self, root: Path) -> tuple[str | None, list[str], str]:
        """(type or None, files seen, explanation when ambiguous or nothing found)."""
        ...

    def resolve(self, app: AppConfig, root: Path) -> list[tuple[str, str]]:
        """Fill in defaults (entry, concurrency) on `app`; return problems as (key, message)."""
        ...


@dataclass
class Address:
    kind: Literal["tcp", "unix"]
    host: str = ""
    port: int = 0
    path: str = ""
    tls: TLSConfig | None = None

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else (
            f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}")


def parse_address(text: str, base: Path | None = None) -> Address:
    """host:port, [v6]:port, :port (all interfaces) or unix:/path."""
    if text.startswith("unix:"):
        p = text[5:]
        if not p:
            raise ValueError("unix: needs a socket path")
        if base is not None:
            p = resolve_path(base, p)
        return Address("unix", path=p)
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]*):(\d+)", text)
    if not m:
        raise ValueError(f"{text!r} is not host:port or unix:/path")
    host = m.group(1) if m.group(1) is not None else m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return Address("tcp", host=host or "0.0.0.0", port=port)


_HOST_RE = re.compile(r"^(\*\.)?([a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$|^(\*\.)?localhost$")


def normalise_mount(path: str) -> str:
    p = "/" + path.strip("/")
    return p


class Site:
    """A validated config with every path resolved; what the manager and proxy run from."""

    def __init__(self, path: Path, config: SiteConfig, addresses: list[Address], apps: list[AppConfig]):
        self.path = path
        self.config = config
        self.addresses = addresses
        self.apps = apps  # resolved AppConfig copies (absolute root, type, entry, concurrency, mount)
        self.client_max_body_size = parse_size(config.client_max_body_size)
        self.metrics_address = parse_address(config.metrics_listen, path.parent) if config.metrics_listen else None

    @property
    def development(self) -> bool:
        return self.config.environment == "development"

    def app(self, name: str) -> AppConfig | None:
        return next((a for a in self.apps if a.name == name), None)


# Path-valued keys, and what a relative value resolves against (README, "Paths"). Resolved once,
# here, so `check` and `start` mean the same file whatever the current directory, and every path a
# spawner or the proxy sees is absolute. A new path key goes in one of these lists.
SITE_PATHS = ("log_file", "access_log")   # the config file's folder ("-" for access_log is stdout)
APP_PROGRAMS = ("python", "ruby", "node")  # the config file's folder; a bare name is looked up on PATH
APP_FILES = ("error_page",)                # the app's root (files the app ships)
APP_FOLDER_MAPS = ("static",)              # the app's root: {url prefix: folder}
# Also resolved: `root` and `listen`/`metrics_listen` unix: sockets and TLS files (the config
# file's folder), `command`'s program when it is a relative path in a list (the app's root, which
# is its working directory, as for a shell string); `entry` is always read inside the root.


def resolve_path(base: Path, value: str) -> str:
    """`value` (with ~ expanded) as an absolute path, relative ones taken from `base`."""
    p = Path(os.path.expanduser(value))
    return os.path.normpath(p if p.is_absolute() else base / p)


def resolve_program(base: Path, value: str) -> str:
    """A program: a bare name stays as it is (looked up on PATH); a path is resolved from `base`."""
    return resolve_path(base, value) if os.sep in value or value.startswith("~") else value


class _PartialSite(SiteConfig):
    """The site keys that passed validation, when others did not: the cross-checks still run on
    them, so one pass reports every problem."""

    apps: list[AppConfig] = Field(default_factory=list)


def _validate(data: dict) -> tuple[SiteConfig | None, list[tuple[int, AppConfig]], list[Problem], set]:
    """The validated config, its apps with their index in the file, the schema problems and the
    locations in error. With problems, the config holds what did validate: keys in error are
    left out (an app without a valid name or root is left out)."""
    try:
        config = SiteConfig.model_validate(data)
        return config, list(enumerate(config.apps)), [], set()
    except ValidationError as e:
        errors = e.errors()
    problems = [_problem_from_pydantic(data, err) for err in errors]
    bad_keys = {err["loc"][0] for err in errors if err["loc"]}
    bad_app_keys: dict[int, set] = {}
    for err in errors:
        loc = err["loc"]
        if len(loc) > 2 and loc[0] == "apps" and isinstance(loc[1], int):
            bad_app_keys.setdefault(loc[1], set()).add(loc[2])
        elif len(loc) == 2 and loc[0] == "apps" and isinstance(loc[1], int):
            bad_app_keys.setdefault(loc[1], set()).add(None)  # the item itself (not a mapping)
    try:
        config = _PartialSite.model_validate({k: v for k, v in data.items() if k != "apps" and k not in bad_keys})
    except ValidationError:
        return None, [], problems, set()
    apps = []
    if isinstance(data.get("apps"), list):
        for i, item in enumerate(data["apps"]):
            wrong = bad_app_keys.get(i, set())
            if None in wrong or not isinstance(item, dict):
                continue
            try:
                apps.append((i, AppConfig.model_validate({k: v for k, v in item.items() if k not in wrong})))
            except ValidationError:
                pass
    config.apps = [a for _, a in apps]
    in_error = {tuple(err["loc"][:3]) for err in errors} | {(k,) for k in bad_keys if k != "apps"}
    return config, apps, problems, in_error


def load(path: str | os.PathLike, registry: Registry | None = None) -> Site:
    """Read, validate and resolve a site config. Raises ConfigError with every problem found,
    schema and cross-checks together, in the order of the file."""
    path = Path(path).absolute()
    path = path.parent.resolve() / path.name  # `..` as the kernel sees it; a symlinked file stays
    data = read_yaml(path)
    if data is None:
        raise ConfigError(path, [Problem("", "the file is empty; it needs at least `apps:`")])
    if not isinstance(data, dict):
        raise ConfigError(path, [Problem("", "the top level must be a mapping of keys (listen, apps, ...)",
                                         getattr(data, "line", 1))])
    problems: list[Problem] = duplicate_keys(data)
    config, app_items, schema_problems, in_error = _validate(data)
    problems += schema_problems
    if config is None:
        raise ConfigError(path, _in_file_order(problems))

    def bad(loc: tuple, message: str) -> None:
        if loc[:3] in in_error or loc[:1] in in_error:
            return  # that key's schema problem is reported already
        problems.append(Problem(key_name(data, loc), message, line_of(data, loc)))

    base = path.parent
    addresses: list[Address] = []
    for i, item in enumerate(config.listen):
        text = item if isinstance(item, str) else item.address
        loc = ("listen", i) if isinstance(item, str) else ("listen", i, "address")
        try:
            addr = parse_address(text, base)
        except ValueError as e:
            bad(loc, str(e))
            continue
        if not isinstance(item, str) and item.tls is not None:
            addr.tls = _resolve_tls(item.tls, base, ("listen", i, "tls"), bad)
        if any(str(a) == str(addr) for a in addresses):
            bad(loc, f"{addr} is listed twice")
        addresses.append(addr)
    if config.metrics_listen:
        try:
            parse_address(config.metrics_listen, base)
        except ValueError as e:
            bad(("metrics_listen",), str(e))
    for key in SITE_PATHS:
        value = getattr(config, key)
        if value and value != "-":
            setattr(config, key, resolve_path(base, value))
    try:
        parse_size(config.client_max_body_size)
    except ValueError as e:
        bad(("client_max_body_size",), str(e))
    for i, cidr in enumerate(config.trusted_proxies):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            bad(("trusted_proxies", i), f"{cidr!r} is not an IP address or CIDR network")

    names: dict[str, int] = {}
    for i, item in enumerate(data.get("apps") if isinstance(data.get("apps"), list) else []):
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and name in names:  # also among apps with other problems
            bad(("apps", i, "name"), f"app name {name!r} is already used by apps[{names[name]}]")
        names.setdefault(name, i)

    apps: list[AppConfig] = []
    claims: dict[tuple[str, str], str] = {}
    known_types = registry.types() if registry else None
    for i, app in app_items:
        loc = ("apps", i)
        app = app.model_copy(deep=True)
        root = Path(resolve_path(base, app.root))
        if not root.is_dir():
            bad(loc + ("root",), f"folder {root} does not exist" if not root.exists() else f"{root} is not a folder")
            continue
        app.root = str(root)
        for key in APP_PROGRAMS:
            if getattr(app, key):
                setattr(app, key, resolve_program(base, getattr(app, key)))
        if isinstance(app.command, list) and app.command and os.sep in app.command[0]:
            app.command[0] = resolve_path(root, app.command[0])
        if not app.path.startswith("/"):
            bad(loc + ("path",), f"{app.path!r} must start with /")
        elif re.search(r"(^|/)\.\.?(/|$)|%|\?|#|//", app.path):
            bad(loc + ("path",), f"{app.path!r} must be a plain path (no '.', '..', '%', '?', '#' or '//')")
        app.path = normalise_mount(app.path)
        hosts = []
        for j, h in enumerate(app.hosts):
            hn = h.strip().lower().rstrip(".")
            if not _HOST_RE.match(hn):
                bad(loc + ("hosts", j), f"{h!r} is not a host name (exact, or *.domain)")
            hosts.append(hn)
        app.hosts = hosts
        for j, h in enumerate(app.hosts or ["*any*"]):
            other = claims.get((h, app.path))
            if other is not None:
                what = f"host {h!r}" if h != "*any*" else "any host"
                bad(loc + (("hosts", j) if app.hosts else ("path",)),
                    f"{what} with path {app.path!r} is already claimed by app {other!r}")
            claims.setdefault((h, app.path), app.name)
        if app.min_processes > app.max_processes:
            bad(loc + ("min_processes",), f"{app.min_processes} is more than max_processes ({app.max_processes})")
        if app.min_processes > config.max_pool_size:
            bad(loc + ("min_processes",), f"{app.min_processes} is more than max_pool_size ({config.max_pool_size})")
        for key in APP_FOLDER_MAPS:
            folders = getattr(app, key)
            for k, folder in folders.items():
                if not k.startswith("/"):
                    bad(loc + (key, k), "URL prefixes must start with /")
                folders[k] = resolve_path(root, folder)
                if not os.path.isdir(folders[k]):
                    bad(loc + (key, k), f"folder {folders[k]} does not exist")
        for key in APP_FILES:
            if getattr(app, key):
                f = resolve_path(root, getattr(app, key))
                if not os.path.isfile(f):
                    bad(loc + (key,), f"file {f} does not exist")
                setattr(app, key, f)
        if app.smoke:
            for j, s in enumerate(app.smoke):
                if s.path and not s.path.startswith("/"):
                    bad(loc + ("smoke", j, "path"), f"{s.path!r} must start with /")
        if registry is not None:
            if app.type is None:
                found, seen, why = registry.detect(root)
                if found is None:
                    bad(loc + ("root",), why)
                    continue
                app.type = found
            elif app.type not in known_types:
                bad(loc + ("type",), f"unknown type {app.type!r}; known: {', '.join(sorted(known_types))}")
                continue
            for key, message in registry.resolve(app, root):
                bad(loc + tuple(key.split(".")) if key else loc, message)
        apps.append(app)
    if problems:
        raise ConfigError(path, _in_file_order(problems))
    return Site(path, config, addresses, apps)


def _in_file_order(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: p.line or 0)


def _resolve_tls(tls: TLSConfig, base: Path, loc: tuple, bad) -> TLSConfig:
    tls = tls.model_copy(deep=True)

    def fix(p: str, where: tuple) -> str:
        f = Path(resolve_path(base, p))
        if not f.is_file():
            bad(where, f"file {f} does not exist")
        return str(f)

    def check(cert: str, key: str, where: tuple) -> None:
        if os.path.isfile(cert) and os.path.isfile(key):
            import ssl

            try:
                load_certificate(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), cert, key)
            except ValueError as e:
                bad(where, str(e))

    tls.cert = fix(tls.cert, loc + ("cert",))
    tls.key = fix(tls.key, loc + ("key",))
    check(tls.cert, tls.key, loc + ("cert",))
    for i, c in enumerate(tls.certificates):
        c.cert = fix(c.cert, loc + ("certificates", i, "cert"))
        c.key = fix(c.key, loc + ("certificates", i, "key"))
        check(c.cert, c.key, loc + ("certificates", i, "cert"))
    return tls


def load_certificate(ctx, cert: str, key: str) -> None:
    """Load a PEM certificate chain and its key into an ssl.SSLContext. Raises ValueError with
    a reason a user can act on (OpenSSL's own is often just "PEM lib")."""
    import ssl

    try:
        ctx.load_cert_chain(cert, key, password=b"")  # an encrypted key fails, never prompts
        return
    except ssl.SSLError as e:
        reason = e.reason or ""
    except OSError as e:
        raise ValueError(f"cannot read {cert} or {key}: {e.strerror or e}") from None

    def head(path: str) -> str:
        try:
            with open(path, "rb") as f:
                return f.read(1 << 20).decode("latin-1")
        except OSError:
            return ""

    c, k = head(cert), head(key)
    if "-----BEGIN CERTIFICATE-----" not in c:
        why = f"{cert} is not a PEM certificate"
    elif "PRIVATE KEY-----" not in k:
        why = f"{key} is not a PEM private key"
    elif "ENCRYPTED" in k:
        why = f"the key {key} is encrypted with a passphrase; give passenger-lite an unencrypted key"
    elif reason == "KEY_VALUES_MISMATCH":
        why = f"the key {key} does not belong to the certificate {cert}"
    else:
        why = f"{cert} with {key} cannot be used ({reason or 'OpenSSL could not load them'})"
    raise ValueError(why)


def _problem_from_pydantic(data: Any, err: dict) -> Problem:
    loc = tuple(err["loc"])
    # pydantic reports union members as extra loc parts ('listen', 0, 'str'); drop those
    clean = tuple(p for p in loc if not (isinstance(p, str) and (p in ("str", "int", "list[str]")
                                                                or p.endswith("Config") or "[" in p)))
    kind = err["type"]
    if kind == "extra_forbidden":
        msg = "unknown key" + _did_you_mean(clean)
    elif kind == "missing":
        msg = "required key is missing"
    else:
        msg = err["msg"].removeprefix("Value error, ")
        if "input" in err and kind not in ("missing",) and not isinstance(err["input"], (dict, list)):
            msg += f" (got {err['input']!r})"
    return Problem(key_name(data, clean), msg, line_of(data, clean))


def _did_you_mean(loc: tuple) -> str:
    import difflib

    if not loc:
        return ""
    key = str(loc[-1])
    model: type[BaseModel] = SiteConfig
    if len(loc) >= 3 and loc[0] == "apps":
        model = AppConfig
    elif len(loc) >= 2 and loc[0] == "listen":
        model = ListenConfig
    close = difflib.get_close_matches(key, list(model.model_fields), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def json_schema() -> dict:
    schema = SiteConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "passenger-lite site config"
    return schema
