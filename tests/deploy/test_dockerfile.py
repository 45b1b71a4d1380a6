"""The worker image's Dockerfile, checked without a Docker daemon: hadolint, and jetmail's own rules.

Rules: a pinned base image, a non-root USER, a HEALTHCHECK on the worker's /healthz, an ENTRYPOINT/CMD that
is the worker command, and the same command and health check in the ECS task definition of template.yaml.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "infra" / "worker.Dockerfile"
PINNED = re.compile(r"^[\w./-]+(:[\w.-]*\d+\.\d+\.\d+[\w.-]*)?(@sha256:[0-9a-f]{64})?$")


def instructions(path: Path) -> list[tuple[str, str]]:
    parser = DockerfileParser(path=str(path))
    return [(i["instruction"], i["value"]) for i in parser.structure if i["instruction"] != "COMMENT"]


def exec_form(value: str) -> list[str]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return []
    return [str(p) for p in parsed] if isinstance(parsed, list) else []


def health_port(command: list[str]) -> str | None:
    return command[command.index("--health-port") + 1] if "--health-port" in command[:-1] else None


def problems(path: Path) -> list[str]:
    """Every way the Dockerfile at ``path`` breaks the worker image's rules (empty: it follows them)."""
    found: list[str] = []
    steps = instructions(path)
    bases = [value.split()[0] for name, value in steps if name == "FROM"]
    if not bases:
        found.append("no FROM")
    for base in bases:
        if not (PINNED.match(base) and (":" in base.split("/")[-1] or "@sha256:" in base)):
            found.append(f"base image {base} is not pinned to a full version or a digest")
    users = [value.strip() for name, value in steps if name == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        found.append("the image runs as root (no non-root USER as the last USER)")
    entrypoint = exec_form(next((v for n, v in reversed(steps) if n == "ENTRYPOINT"), ""))
    cmd = exec_form(next((v for n, v in reversed(steps) if n == "CMD"), ""))
    command = entrypoint + cmd
    if command[:2] != ["jetmail", "worker"]:
        found.append(f"ENTRYPOINT + CMD is {command}, not the exec-form `jetmail worker ...` command")
    port = health_port(command)
    if port is None:
        found.append("the worker command has no --health-port")
    checks = [v for n, v in steps if n == "HEALTHCHECK"]
    if not checks or checks[-1].strip().upper() == "NONE":
        found.append("no HEALTHCHECK")
    elif port is not None and f"127.0.0.1:{port}/healthz" not in checks[-1]:
        found.append(f"the HEALTHCHECK does not ask /healthz on the worker's port {port}")
    return found


def hadolint(path: Path) -> list[dict[str, Any]]:
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert binary, "hadolint not installed (pip install -e '.[dev]')"
    out = subprocess.run([binary, "--format", "json", "--no-fail", str(path)], capture_output=True, text=True,
                         check=True, timeout=60)
    findings: list[dict[str, Any]] = json.loads(out.stdout or "[]")
    return findings


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !Sub...) read as plain values."""


CfnLoader.add_multi_constructor("!", lambda loader, suffix, node: (
    loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode)
    else loader.construct_mapping(node) if isinstance(node, yaml.MappingNode) else loader.construct_scalar(node)))


def worker_container() -> dict[str, Any]:
    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=CfnLoader)  # noqa: S506 - SafeLoader subclass
    task = template["Resources"]["WorkerTaskDefinition"]  # the SMTP servers' tasks run other commands
    [container] = [c for c in task["Properties"]["ContainerDefinitions"] if c["Name"] == "worker"]
    return dict(container)


def test_worker_dockerfile_passes_hadolint() -> None:
    # GIVEN the worker Dockerfile WHEN hadolint reads it THEN it reports nothing
    assert hadolint(DOCKERFILE) == []


def test_worker_dockerfile_follows_the_image_rules() -> None:
    # GIVEN the worker Dockerfile WHEN it is parsed THEN it follows every rule
    assert problems(DOCKERFILE) == []


def test_the_rules_catch_a_root_unpinned_image_without_health_check(tmp_path: Path) -> None:
    # GIVEN a Dockerfile that breaks each rule
    bad = tmp_path / "Dockerfile"
    bad.write_text('FROM python:3.12\nRUN pip install jetmail\nUSER root\nCMD ["python", "-m", "http.server"]\n')
    # WHEN it is checked THEN every broken rule is reported, and hadolint finds fault too
    found = problems(bad)
    assert any("not pinned" in p for p in found)
    assert any("runs as root" in p for p in found)
    assert any("not the exec-form" in p for p in found)
    assert any("no HEALTHCHECK" in p for p in found)
    assert {f["code"] for f in hadolint(bad)} & {"DL3002", "DL3013", "DL3042"}


def test_ecs_task_runs_the_image_command_with_the_same_health_check() -> None:
    # GIVEN the Dockerfile's worker command and health check, and the ECS task definition in template.yaml
    steps = instructions(DOCKERFILE)
    cmd = exec_form(next(v for n, v in reversed(steps) if n == "CMD"))
    dockerfile_check = next(v for n, v in reversed(steps) if n == "HEALTHCHECK")
    container = worker_container()
    # WHEN they are compared THEN the task runs the same command (its ENTRYPOINT stays the image's), the
    # webhooks queue included unless a service of their own delivers webhooks (WebhookWorkerCount)
    assert "EntryPoint" not in container
    *command, webhooks = container["Command"]
    assert webhooks == ["SeparateWebhookWorkers", "AWS::NoValue", "webhooks"]
    assert [*command, "webhooks"] == cmd
    # and checks the same /healthz port with the same probe
    check = container["HealthCheck"]["Command"]
    assert check[0] == "CMD" and check[1:] == exec_form(dockerfile_check.split("CMD", 1)[1].strip())
    assert f"127.0.0.1:{health_port(cmd)}/healthz" in check[-1]
    assert container["HealthCheck"]["StartPeriod"] >= 10


@pytest.mark.parametrize("base, pinned", [("python:3.12.12-slim-bookworm", True), ("python:3.12-slim", False),
                                          ("python:latest", False), ("python", False),
                                          ("python@sha256:" + "a" * 64, True)])
def test_a_base_image_is_pinned_only_with_a_full_version_or_digest(tmp_path: Path, base: str, pinned: bool) -> None:
    # GIVEN an otherwise valid Dockerfile on a base image WHEN it is checked THEN only an exact base passes
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(DOCKERFILE.read_text().replace("FROM python:3.12.12-slim-bookworm", f"FROM {base}"))
    assert (problems(dockerfile) == []) is pinned
