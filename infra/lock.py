"""The requirements files exported from uv.lock, and the check that they and the lock match pyproject.toml.

    .venv/bin/python infra/lock.py --write   # after changing [project.dependencies]: `make lock` runs this
    .venv/bin/python infra/lock.py --check   # exit 1 with what drifted (tests/deploy/test_dependencies.py, make test)

- ``shared/requirements.txt``: the Lambda layer (CoreLayer, ContentUri shared/), installed by `sam build`:
  the core dependencies only, every version pinned with its hashes.
- ``infra/worker-requirements.txt``: the worker image (infra/worker.Dockerfile): the core dependencies and
  the ``worker`` extra (SMTP delivery, the CLI), pinned with hashes, installed with ``--require-hashes``.

Nothing here needs the network: ``uv lock --check --offline`` compares the lock with pyproject.toml's
metadata, and ``uv export --frozen`` reads the lock alone.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UV = Path(sys.executable).with_name("uv")

HEADER = """\
# GENERATED from uv.lock by `make lock` (infra/lock.py): do not edit. {what}
# Change [project.dependencies] in pyproject.toml, then run `make lock`; `make test` fails while this file,
# uv.lock and pyproject.toml disagree.
"""

EXPORTS = {
    "shared/requirements.txt": (
        "The Lambda layer's dependencies\n# (CoreLayer, ContentUri shared/; `sam build` installs them).",
        []),
    "infra/worker-requirements.txt": (
        "The worker image's dependencies\n# (infra/worker.Dockerfile installs them with --require-hashes).",
        ["--extra", "worker"]),
}


def uv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(UV), *args], cwd=ROOT, capture_output=True, text=True, check=False)


def exported(path: str) -> str:
    what, extra = EXPORTS[path]
    done = uv("export", "--frozen", "--offline", "--no-emit-project", "--no-header", "--format", "requirements-txt",
              *extra)
    if done.returncode != 0:
        raise SystemExit(f"uv export failed: {done.stderr.strip()}")
    return HEADER.format(what=what) + done.stdout


def check() -> list[str]:
    problems = []
    locked = uv("lock", "--check", "--offline")
    if locked.returncode != 0:
        problems.append("uv.lock does not match pyproject.toml: " + (locked.stderr.strip().splitlines() or ["?"])[-1])
    else:
        for path in EXPORTS:
            current = (ROOT / path).read_text() if (ROOT / path).exists() else ""
            if current != exported(path):
                problems.append(f"{path} differs from what uv.lock exports")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 when the lock or an export drifted")
    mode.add_argument("--write", action="store_true", help="lock (uv lock) and rewrite the exports")
    args = parser.parse_args()
    if args.write:
        locked = uv("lock")
        if locked.returncode != 0:
            raise SystemExit(f"uv lock failed: {locked.stderr.strip()}")
        for path in EXPORTS:
            (ROOT / path).write_text(exported(path))
            print(f"wrote {path}")
        return 0
    problems = check()
    for problem in problems:
        print(f"drift: {problem}; run `make lock`")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
