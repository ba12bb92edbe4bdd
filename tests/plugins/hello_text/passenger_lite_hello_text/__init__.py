"""The `hello-text` spawner: an app is a folder with a hello.txt, served by server.py."""
import sys
from pathlib import Path

from passenger_lite.spawners.base import Detection, WorkerContext, WorkerSpec, common_env


class HelloTextSpawner:
    type = "hello-text"
    default_concurrency = 0
    uses_port = False

    def detect(self, root: Path):
        return Detection(["hello.txt"]) if (root / "hello.txt").is_file() else None

    def resolve(self, app, root: Path):
        app.entry = app.entry or "hello.txt"
        return [] if (root / app.entry).is_file() else [("entry", f"{root / app.entry} not found")]

    def worker_spec(self, ctx: WorkerContext) -> WorkerSpec:
        env = common_env(ctx)
        env["HELLO_FILE"] = str(Path(ctx.app.root) / ctx.app.entry)
        return WorkerSpec(argv=[sys.executable, str(Path(__file__).with_name("server.py"))], env=env,
                          cwd=ctx.app.root)
