"""bpc as users install it: `pip install .` (not editable) into a fresh
virtual environment, then `bpc bench` run from there.

Nothing may depend on the source checkout: the benchmark harness, its
child processes and the command line must all come from the installed
package. The new environment takes bpc's dependencies from the one running
the tests (a .pth file lists its site-packages), so installing needs no
network: `--no-build-isolation` when this environment's setuptools can build
a wheel by itself; otherwise pip's usual isolated build, whose setuptools
comes from the configured package index (the test is skipped when there is
none).
"""
import importlib.metadata
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import venv

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(ROOT, "pyproject.toml")),
                                reason="needs bpc's source tree (pyproject.toml)")


def _version(name):
    try:
        return tuple(int(p) for p in importlib.metadata.version(name).split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def _builds_offline():
    """Whether this environment's setuptools builds a wheel without fetching
    anything: setuptools >= 70.1 has bdist_wheel itself, older ones need the
    wheel package."""
    setuptools = _version("setuptools")
    return setuptools is not None and (setuptools >= (70, 1) or importlib.util.find_spec("wheel") is not None)


def _copy_source(dest):
    """What `pip install .` needs, copied so that building leaves no build/
    or egg-info folders in the source tree."""
    os.makedirs(dest)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), dest)
    shutil.copytree(os.path.join(ROOT, "bpc"), os.path.join(dest, "bpc"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _make_venv(path):
    """A virtual environment that sees this one's packages (bpc's
    dependencies), listed as plain paths: .pth files there, such as an
    editable install of bpc, are not run. Returns its Python."""
    own_pip = _version("pip") is None or _version("pip") < (22, 3)    # older pips lack --python
    venv.EnvBuilder(with_pip=own_pip).create(path)
    python = os.path.join(path, "Scripts" if os.name == "nt" else "bin", "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    dirs = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    with open(os.path.join(purelib, "_parent_environment.pth"), "w") as f:
        f.write("\n".join(d for d in dirs if os.path.isdir(d)) + "\n")
    return python, own_pip


def _pip_install(python, own_pip, src):
    pip = [python, "-m", "pip"] if own_pip else [sys.executable, "-m", "pip", "--python", python]
    options = ["--no-deps", "--no-build-isolation", "--no-index"] if _builds_offline() else ["--no-deps"]
    proc = subprocess.run(pip + ["install", "--disable-pip-version-check", *options, src],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "No matching distribution found" in proc.stdout + proc.stderr:
        pytest.skip("building bpc needs setuptools >= 70.1 or wheel here, or a package index to fetch them from")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_bench_runs_from_a_non_editable_install(tmp_path):
    if importlib.util.find_spec("pip") is None:
        pytest.skip("needs pip")
    src = tmp_path / "src"
    _copy_source(str(src))
    python, own_pip = _make_venv(str(tmp_path / "venv"))
    _pip_install(python, own_pip, str(src))
    shutil.rmtree(src)      # nothing may come from the sources any more

    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["BPC_CACHE_DIR"] = str(tmp_path / "cache")
    where = subprocess.run([python, "-c", "import bpc, bpc.bench; print(bpc.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(tmp_path / "venv")), where.stdout

    # The smallest run: a tiny model, 3 short rounds, no startup processes,
    # the NumPy reference, one batch size and no width sweep.
    bpc_command = os.path.join(os.path.dirname(python), "bpc")
    proc = subprocess.run([bpc_command, "bench", "--quick", "--model", "mlp:8-8-3", "--batch-size", "4",
                           "--compare", "numpy", "--no-startup", "--scaling", "--batches", "4", "--widths", "",
                           "--no-progress", "--out", "results"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "interp/comp" in proc.stdout and "crossover" in proc.stdout
    report = json.loads((work / "results" / "mlp_step.json").read_text())
    w, = report["workloads"]
    assert {"interpreted", "compiled", "numpy"} <= set(w["results"]), w["notes"]
    scaling = json.loads((work / "results" / "scaling.json").read_text())
    assert [(p["sweep"], p["x"]) for p in scaling["points"]] == [("batch", 4)]
