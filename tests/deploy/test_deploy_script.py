"""infra/deploy.py, the one-command deploy, without Docker or an AWS account: the commands it would run."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "deploy.py"
REPOSITORY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/jetmail-worker"


@pytest.fixture(scope="module")
def deploy() -> ModuleType:
    spec = importlib.util.spec_from_file_location("jetmail_deploy", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dry_run(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--config-file", str(config), "--dry-run", *extra],
                          capture_output=True, text=True, timeout=60, check=False)


def test_one_command_builds_the_image_then_deploys_the_stack_with_it(tmp_path: Path, deploy: ModuleType) -> None:
    # GIVEN the example configuration, copied as the deploy guide says
    config = tmp_path / "samconfig.toml"
    shutil.copy(ROOT / "samconfig.example.toml", config)
    # WHEN the deploy runs (dry)
    done = dry_run(config, "--", "--no-confirm-changeset")
    assert done.returncode == 0, done.stderr
    exists, build, sam_build, sam_deploy = (shlex.split(line.removesuffix(" || \\"))
                                            for line in done.stdout.splitlines())
    # THEN the image is tagged with the digest of its sources and the architecture the stack runs on
    image = f"{REPOSITORY}:{deploy.image_tag(ROOT, 'arm64')}"
    assert exists[:3] == ["aws", "ecr", "describe-images"] and f"imageTag={image.rsplit(':', 1)[1]}" in exists
    assert build == [str(ROOT / "infra" / "build-worker.sh"), image, "arm64"]
    assert sam_build[:2] == ["sam", "build"] and str(config) in sam_build
    # AND sam deploy gets the configuration's every parameter back, WorkerImage pointing at that image
    assert sam_deploy[:2] == ["sam", "deploy"] and sam_deploy[-1] == "--no-confirm-changeset"
    given = tomllib.loads(config.read_text())["default"]["deploy"]["parameters"]["parameter_overrides"]
    passed = sam_deploy[sam_deploy.index("--parameter-overrides") + 1:-1]
    assert passed == [f"WorkerImage={image}" if p.startswith("WorkerImage=") else p for p in given]


def test_the_tag_follows_the_image_sources_only(tmp_path: Path, deploy: ModuleType) -> None:
    # GIVEN a copy of what the image is built from
    for name in ("infra/worker.Dockerfile", "infra/worker-requirements.txt", "pyproject.toml", "README.md",
                 "LICENSE", "shared/jetmail/__init__.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    tag = deploy.image_tag(tmp_path, "x86_64")
    assert deploy.image_tag(tmp_path, "arm64") != tag
    # WHEN a file the build ignores changes THEN the tag stays
    (tmp_path / "shared" / "jetmail" / "__pycache__").mkdir()
    (tmp_path / "shared" / "jetmail" / "__pycache__" / "x.pyc").write_bytes(b"x")
    (tmp_path / "docs.md").write_text("not in the image")
    assert deploy.image_tag(tmp_path, "x86_64") == tag
    # WHEN a source changes THEN the tag changes
    (tmp_path / "shared" / "jetmail" / "new.py").write_text("X = 1\n")
    assert deploy.image_tag(tmp_path, "x86_64") != tag


def test_the_digest_covers_what_the_dockerignore_lets_in(deploy: ModuleType) -> None:
    ignore = (ROOT / "infra" / "worker.Dockerfile.dockerignore").read_text()
    allowed = {m.rstrip("/") for m in re.findall(r"^!(\S+)$", ignore, re.M)}
    assert set(deploy.CONTEXT) == allowed | {"infra/worker.Dockerfile"}


@pytest.mark.parametrize(("content", "message"), [
    (None, "copy samconfig.example.toml"),
    ("version = 0.1\n", "no [default.deploy.parameters] parameter_overrides"),
    ('[default.deploy.parameters]\nparameter_overrides = ["WorkerImage=jetmail-worker:1"]\n',
     "must name an ECR repository"),
], ids=["missing", "no-overrides", "not-ecr"])
def test_a_config_it_cannot_deploy_from_is_a_clear_error(tmp_path: Path, content: str | None, message: str) -> None:
    config = tmp_path / "samconfig.toml"
    if content is not None:
        config.write_text(content)
    done = dry_run(config)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_the_example_quotes_every_value_with_a_space() -> None:
    # sam deploy cuts an unquoted value at its first space (and drops the rest without a word)
    overrides = tomllib.loads((ROOT / "samconfig.example.toml").read_text())["default"]["deploy"]["parameters"][
        "parameter_overrides"]
    for item in overrides:
        value = item.split("=", 1)[1]
        assert " " not in value or (value[0] == value[-1] == '"'), item
