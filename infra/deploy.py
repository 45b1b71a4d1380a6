"""The whole deploy in one command: the worker image, then `sam build` and `sam deploy`.

    python3 infra/deploy.py [--config-env ENV] [--dry-run] [-- more sam deploy options]

`sam build` builds container images only for Lambda functions; the worker is an ECS task, so its image is
built here (infra/build-worker.sh) and handed to the stack as WorkerImage. The values come from
samconfig.toml (copy samconfig.example.toml): the repository of WorkerImage, whose tag this script sets to
a digest of everything the image is built from, so an unchanged worker is neither rebuilt nor redeployed,
and `Architecture`, the platform it is built for. `sam deploy --parameter-overrides` replaces the config's
list rather than merging with it, so the script passes the config's list back with WorkerImage changed.
Needs the AWS CLI, Docker with buildx and the SAM CLI; --dry-run prints the commands without running any.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What infra/worker.Dockerfile.dockerignore lets into the image's build context, and the Dockerfile itself.
CONTEXT = ("infra/worker.Dockerfile", "infra/worker-requirements.txt", "pyproject.toml", "README.md", "LICENSE",
           "shared")
SKIPPED = ("__pycache__", ".egg-info", ".pyc")


class DeployError(Exception):
    """A samconfig.toml this script cannot deploy from; the message says what to change."""


def context_files(root: Path) -> Iterator[Path]:
    for name in CONTEXT:
        path = root / name
        found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        yield from (p for p in found if not any(part.endswith(SKIPPED) for part in p.relative_to(root).parts))


def image_tag(root: Path, architecture: str) -> str:
    """A digest of the image's build context and Dockerfile: the same sources give the same tag."""
    digest = hashlib.sha256()
    for path in context_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{digest.hexdigest()[:16]}-{architecture}"


def overrides(config: dict[str, object], env: str) -> list[str]:
    """The `parameter_overrides` of [ENV.deploy.parameters], as a list of Key=Value."""
    section = config.get(env, {})
    deploy = section.get("deploy", {}) if isinstance(section, dict) else {}
    parameters = deploy.get("parameters", {}) if isinstance(deploy, dict) else {}
    value = parameters.get("parameter_overrides", []) if isinstance(parameters, dict) else []
    items = shlex.split(value) if isinstance(value, str) else [str(v) for v in value] if isinstance(value, list) else []
    if not items:
        raise DeployError(f"samconfig.toml has no [{env}.deploy.parameters] parameter_overrides: copy "
                          "samconfig.example.toml and fill in your values")
    return items


def with_image(items: Sequence[str], *, root: Path) -> tuple[list[str], str, str]:
    """The overrides with WorkerImage's tag replaced: (overrides, image, architecture). Each item is in
    `sam deploy` syntax, Key=value or Key="value with spaces"."""
    values = {key: value.strip("\"'") for key, value in (item.split("=", 1) for item in items if "=" in item)}
    repository = values.get("WorkerImage", "").split("@", 1)[0]
    if ":" in repository.rsplit("/", 1)[-1]:
        repository = repository.rsplit(":", 1)[0]
    if "/" not in repository or ".dkr.ecr." not in repository:
        raise DeployError("WorkerImage in samconfig.toml must name an ECR repository, e.g. "
                          "123456789012.dkr.ecr.eu-west-1.amazonaws.com/jetmail-worker (its tag is set here)")
    architecture = values.get("Architecture", "x86_64")
    image = f"{repository}:{image_tag(root, architecture)}"
    return [f"WorkerImage={image}" if i.startswith("WorkerImage=") else i for i in items], image, architecture


def commands(config_file: Path, env: str, extra: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """(the image-exists check, the commands that deploy): build and push the image, sam build, sam deploy."""
    if not config_file.exists():
        raise DeployError(f"{config_file} not found: copy samconfig.example.toml to samconfig.toml and fill it in")
    items, image, architecture = with_image(overrides(tomllib.loads(config_file.read_text()), env), root=ROOT)
    repository, tag = image.rsplit(":", 1)
    registry, name = repository.split("/", 1)
    region = registry.split(".")[3]
    exists = ["aws", "ecr", "describe-images", "--region", region, "--repository-name", name,
              "--image-ids", f"imageTag={tag}"]
    config = ["--config-file", str(config_file), "--config-env", env]
    return exists, [
        [str(ROOT / "infra" / "build-worker.sh"), image, architecture],
        ["sam", "build", *config],
        ["sam", "deploy", *config, "--parameter-overrides", *items, *extra],
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", type=Path, default=ROOT / "samconfig.toml")
    parser.add_argument("--config-env", default="default")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run none")
    parser.add_argument("extra", nargs="*", help="more `sam deploy` options (after --)")
    args = parser.parse_args(argv)
    try:
        exists, steps = commands(args.config_file, args.config_env, args.extra)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(shlex.join(exists), "|| \\")
        for step in steps:
            print(shlex.join(step))
        return 0
    if subprocess.run(exists, capture_output=True, check=False).returncode == 0:
        print(f"worker image {steps[0][1]} is in ECR already")
        steps = steps[1:]
    for step in steps:
        print("+", shlex.join(step), flush=True)
        if subprocess.run(step, cwd=ROOT, check=False).returncode != 0:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
