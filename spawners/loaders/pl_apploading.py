"""What both Python loaders do the same way: load the app an entry names (gunicorn's factory
syntax included), tell an app from a factory, show the app's INFO logs, print a load error
without our own frames.

Imported by wsgi_loader.py and asgi_loader.py from their own folder (before they take that folder
off sys.path), inside the app's own interpreter: standard library only, CPython 3.8 and up, and it
never imports passenger_lite.
"""
import ast
import importlib
import inspect
import logging
import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))


def load_app(entry, default):
    """The object `module:name` names; `module:factory(args)` (gunicorn's syntax, literal
    arguments only) calls the factory and returns what it built."""
    module, _, attr = entry.partition(":")
    attr = (attr or default).strip()
    args, kwargs = (), {}
    if "(" in attr:
        call = ast.parse(attr, mode="eval").body
        if not isinstance(call, ast.Call):
            raise ValueError("%r is not a name or a call such as create_app()" % attr)
        args = tuple(ast.literal_eval(a) for a in call.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        attr = attr[:attr.index("(")].strip()
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if "(" in entry.partition(":")[2]:
        obj = obj(*args, **kwargs)
    if not callable(obj):
        raise TypeError("%s is %s, not a callable app" % (entry, type(obj).__name__))
    return obj


def is_factory(obj):
    """A plain function that can be called without arguments builds an app, it is not one."""
    return inspect.isfunction(obj) and takes(obj, 0)


def takes(obj, n):
    """Can `obj` be called with n positional arguments? (True when its signature is unknown.)"""
    try:
        inspect.signature(obj).bind(*range(n))
    except TypeError:
        return False
    except ValueError:
        return True
    return True


def _not_handled_below(record):
    """False for a record a logger below the root already wrote (Flask's app.logger has its
    own handler): once is enough."""
    lg = logging.getLogger(record.name)
    while lg.parent is not None:
        if lg.handlers:
            return False
        if not lg.propagate:
            break
        lg = lg.parent
    return True


def show_info_logs():
    """The app's own INFO lines reach the log, as uvicorn's do (Python's last-resort handler
    shows WARNING and up only). An app that configured logging itself is left alone."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s: %(message)s"))
    handler.addFilter(_not_handled_below)
    root.addHandler(handler)
    if root.level == logging.WARNING:  # the default: nobody chose it
        root.setLevel(logging.INFO)


def print_app_error():
    """The exception being handled, without the frames of the loaders and of importlib (the
    app's own frames are the ones that matter)."""
    etype, value, tb = sys.exc_info()
    te = traceback.TracebackException(etype, value, tb)
    te.stack = traceback.StackSummary.from_list(
        [f for f in te.stack if os.path.dirname(os.path.abspath(f.filename)) != HERE
         and not f.filename.startswith("<frozen importlib")
         and not f.filename.endswith(os.path.join("importlib", "__init__.py"))])
    sys.stderr.write("".join(te.format()))
