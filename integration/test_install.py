"""Issue 12 item 2: the product installs on its own, as the README's "Install" says: a wheel built
from the checkout, into a fresh virtualenv, works outside the clone (no test extras, no checkout
on the path)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from harness import REPO

SKIP = shutil.ignore_patterns(".git", ".venv", "node_modules", "build", "dist", "*.egg-info", "__pycache__")


def run(argv, cwd, timeout=300, env=None):
    r = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env=env)
    assert r.returncode == 0, (argv, r.stdout[-2000:], r.stderr[-2000:])
    return r


def test_a_wheel_of_the_checkout_installs_into_a_fresh_venv_and_serves_the_example(tmp_path):
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info next to the sources
    shutil.copytree(REPO, src, ignore=SKIP)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist",
         src], cwd=tmp_path)
    [wheel] = (tmp_path / "dist").glob("passenger_lite-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel],
        cwd=tmp_path, timeout=600)
    shutil.rmtree(src)  # nothing of the checkout is needed any more
    site = tmp_path / "site"  # the example config and apps, outside the clone
    shutil.copytree(REPO / "configs", site, ignore=SKIP)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    exe = venv / "bin" / "passenger-lite"
    r = run([exe, "--version"], cwd=cwd, env=env)
    from importlib.metadata import version

    assert r.stdout.strip() == f"passenger-lite {version('passenger-lite')}" and r.stdout.strip() != ""
    r = run([exe, "check", "--config", site / "sites.yaml"], cwd=cwd, env=env)
    assert r.stdout.startswith(f"{site / 'sites.yaml'}: OK, 3 apps"), r.stdout
    # the installed package is the wheel's, and its loaders (package data) are there: every app boots
    r = run([venv / "bin" / "python", "-c", "import passenger_lite.manager.cli as m; print(m.__file__)"], cwd=cwd,
            env=env)
    assert r.stdout.startswith(str(venv)), r.stdout
    r = run([exe, "smoke", "--config", site / "sites.yaml", "--timeout", "60"], cwd=cwd, env=env, timeout=180)
    assert "3 passed" in r.stdout or "6 passed" in r.stdout, r.stdout
    # only the product: none of the test extras came along
    r = run([venv / "bin" / "python", "-m", "pip", "list", "--format=freeze"], cwd=cwd, env=env)
    installed = {line.split("==")[0].lower() for line in r.stdout.splitlines()}
    assert "passenger-lite" in installed and not installed & {"pytest", "uvicorn", "flask", "trustme"}, installed
