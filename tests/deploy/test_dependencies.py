"""The lock file drives the Lambda layer and the worker image: uv.lock matches pyproject.toml, the two
requirements files are what it exports, and the security floors hold in what it pins."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).with_name("uv")
LAYER = ROOT / "shared" / "requirements.txt"
WORKER = ROOT / "infra" / "worker-requirements.txt"


def pins(path: Path) -> dict[str, str]:
    return {m[1].lower(): m[2] for m in re.finditer(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", path.read_text(), re.M)}


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_the_lock_and_the_exported_requirements_match_pyproject() -> None:
    # GIVEN the repository as committed WHEN the drift check runs THEN it finds nothing
    done = subprocess.run([sys.executable, str(ROOT / "infra" / "lock.py"), "--check"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_dependency_changed_without_locking_is_drift(tmp_path: Path) -> None:
    # GIVEN a copy of the project whose pyproject gained a dependency that uv.lock does not know
    for name in ("pyproject.toml", "uv.lock", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tmp_path / name)
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"tzdata>=', '"six>=1.16",\n    "tzdata>=', 1))
    # WHEN uv checks the lock, offline THEN it reports the lock stale
    done = subprocess.run([str(UV), "lock", "--check", "--offline"], cwd=tmp_path, capture_output=True, text=True,
                          check=False)
    assert done.returncode != 0, done.stderr


def test_the_layer_holds_the_core_dependencies_only_and_the_image_adds_the_worker_extra() -> None:
    layer, worker = pins(LAYER), pins(WORKER)
    # worker-only packages stay out of the layer
    assert "aiosmtplib" not in layer and "click" not in layer
    assert {"aiosmtplib", "click"} <= set(worker)
    # everything the layer pins, the image pins at the same version
    assert all(worker.get(name) == pinned for name, pinned in layer.items())
    # what the core package imports at run time, markupsafe and tzdata included
    assert {"markupsafe", "tzdata", "jinja2", "fastapi", "starlette", "mangum", "nats-py"} <= set(layer)
    # every pin carries hashes (pip --require-hashes)
    assert LAYER.read_text().count("==") == len(layer) and "--hash=sha256:" in LAYER.read_text()


def test_security_floors_hold_in_pyproject_and_in_the_lock() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = " ".join(project["dependencies"])
    assert "jinja2>=3.1.6" in deps and "starlette>=0.49.1" in deps and "tzdata" in deps
    dev = " ".join(project["optional-dependencies"]["dev"])
    assert re.search(r"ruff>=[\d.]+,<[\d.]+", dev), "ruff has no upper bound"
    layer = pins(LAYER)
    assert version(layer["jinja2"]) >= (3, 1, 6)
    assert version(layer["starlette"]) >= (0, 49, 1)
    assert project["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
