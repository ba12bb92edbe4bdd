"""Ruby spawner (`ruby-rack`): the app's config.ru under Puma, through our Rack loader.

Each worker runs `ruby loaders/rack_loader.rb` in the app's own Ruby (`ruby:`; default: ruby on
PATH), cwd = root. The loader does what `rackup -s puma` does (Rack::Builder.parse_file, then
Puma bound to the worker's Unix socket) without rackup's development middleware, which would
cost every request and overwrite RACK_ENV. Puma's threads are the app's `concurrency`
(default 1, as Passenger runs Ruby apps).

When the app has a Gemfile (or gems.rb) the loader sets up its bundle as `bundle exec` would; Puma
comes from the bundle if the Gemfile lists it, else from the system (Debian: `puma`). Sub-path
apps get SCRIPT_NAME and RAILS_RELATIVE_URL_ROOT.
"""
from __future__ import annotations

import os
from pathlib import Path

from passenger_lite.manager.config import AppConfig

from .base import Detection, WorkerContext, WorkerSpec, common_env, loader_path, resolve_program

GEMFILES = ("Gemfile", "gems.rb")


def gemfile_of(root: Path) -> Path | None:
    return next((root / g for g in GEMFILES if (root / g).is_file()), None)


class RackSpawner:
    type = "ruby-rack"
    default_concurrency = 1
    uses_port = False

    def detect(self, root: Path) -> Detection | None:
        return Detection(["config.ru"]) if (root / "config.ru").is_file() else None

    def resolve(self, app: AppConfig, root: Path) -> list[tuple[str, str]]:
        problems = []
        entry = app.entry or "config.ru"
        if not (root / entry).is_file():
            problems.append(("entry", f"rackup file {root / entry} not found"
                                      + ("" if app.entry else "; set `entry:` to the app's .ru file")))
        app.entry = entry
        return problems + resolve_program(app, "ruby", ("ruby",),
                                          "no ruby on PATH (Debian: apt-get install ruby); set `ruby:`")

    def worker_spec(self, ctx: WorkerContext) -> WorkerSpec:
        app = ctx.app
        root = Path(app.root)
        env = common_env(ctx)
        env["PASSENGER_LITE_ENTRY"] = str(root / (app.entry or "config.ru"))
        if "BUNDLE_GEMFILE" not in app.env:
            gemfile = gemfile_of(root)
            if gemfile is not None:
                env["BUNDLE_GEMFILE"] = str(gemfile)
            else:  # not the bundle of whoever started passenger-lite
                env.pop("BUNDLE_GEMFILE", None)
        if ctx.mount and "RAILS_RELATIVE_URL_ROOT" not in app.env:
            env["RAILS_RELATIVE_URL_ROOT"] = ctx.mount
        return WorkerSpec(argv=[app.ruby or "ruby", loader_path("rack_loader.rb")], env=env, cwd=os.fspath(root))
