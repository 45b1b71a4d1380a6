"""template.yaml rendered offline, as `sam deploy` would, once per combination of its optional parts:
SnapStart on/off, arm64/x86_64, the SES identity on/off. Each rendering is checked for the resources and
properties those parameters switch, with the template's conditions evaluated for the parameter values."""

from __future__ import annotations

import itertools
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from iamcheck import _transform  # noqa: E402

FUNCTIONS = ("ApiFunction", "SesEventsFunction", "SchedulerFunction")
REQUIRED = {"NatsUrl": "tls://nats-1.example.internal:4222", "DefaultFrom": "A <a@mail.example.com>",
            "PublicBaseUrl": "https://api.example.com", "CompanyName": "Acme", "CompanyAddress": "1 Road",
            "WorkerImage": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/jetmail-worker:0.1.0",
            "VpcId": "vpc-1", "SubnetIds": "subnet-1,subnet-2,subnet-3"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, Any]:
    return _transform(ROOT / "template.yaml")


NO_VALUE = object()


class Stack:
    """The rendered template for one set of parameter values: its conditions evaluated, ``Fn::If`` resolved."""

    def __init__(self, doc: dict[str, Any], parameters: dict[str, str]) -> None:
        self.doc = doc
        self.values = {name: str(p.get("Default", "")) for name, p in doc["Parameters"].items()}
        self.values.update(REQUIRED)
        self.values.update(parameters)
        self.conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        if name not in self.conditions:
            self.conditions[name] = bool(self.evaluate(self.doc["Conditions"][name]))
        return self.conditions[name]

    def evaluate(self, node: Any) -> Any:
        if isinstance(node, dict) and len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                return NO_VALUE if arg == "AWS::NoValue" else self.values.get(arg, arg)
            if key == "Fn::Sub" and isinstance(arg, str):
                return re.sub(r"\$\{([^}.]+)\}", lambda m: self.values.get(m[1], m[0]), arg)
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::Equals":
                return self.evaluate(arg[0]) == self.evaluate(arg[1])
            if key == "Fn::Not":
                return not self.evaluate(arg[0])
            if key == "Fn::And":
                return all(self.evaluate(a) for a in arg)
            if key == "Fn::Or":
                return any(self.evaluate(a) for a in arg)
            if key == "Fn::If":
                return self.evaluate(arg[1] if self.condition(arg[0]) else arg[2])
        if isinstance(node, dict):
            evaluated = {k: self.evaluate(v) for k, v in node.items()}
            return {k: v for k, v in evaluated.items() if v is not NO_VALUE}
        if isinstance(node, list):
            return [v for v in (self.evaluate(v) for v in node) if v is not NO_VALUE]
        return node

    def resources(self) -> dict[str, dict[str, Any]]:
        return {name: r for name, r in self.doc["Resources"].items()
                if "Condition" not in r or self.condition(r["Condition"])}

    def outputs(self) -> set[str]:
        return {name for name, o in self.doc.get("Outputs", {}).items()
                if "Condition" not in o or self.condition(o["Condition"])}

    def properties(self, name: str) -> dict[str, Any]:
        props: dict[str, Any] = self.evaluate(self.resources()[name].get("Properties", {}))
        return props


COMBINATIONS = list(itertools.product(("true", "false"), ("x86_64", "arm64"), ("", "mail.example.com")))


@pytest.mark.parametrize(("snapstart", "architecture", "ses_domain"), COMBINATIONS,
                         ids=[f"snapstart={s}-{a}-ses={'on' if d else 'off'}" for s, a, d in COMBINATIONS])
def test_each_parameter_combination_renders_the_resources_it_asks_for(rendered: dict[str, Any], snapstart: str,
                                                                      architecture: str, ses_domain: str) -> None:
    stack = Stack(rendered, {"SnapStart": snapstart, "Architecture": architecture, "SesDomain": ses_domain})
    resources = stack.resources()
    for function in FUNCTIONS:
        props = stack.properties(function)
        # SnapStart only when asked for; the alias `live` always (SnapStart needs a published version)
        assert props.get("SnapStart") == ({"ApplyOn": "PublishedVersions"} if snapstart == "true" else None)
        assert f"{function}Aliaslive" in resources
        assert props["Architectures"] == [architecture]
        # the layer built for the function's architecture, and only that one deployed
        layer = props["Layers"][0]
        assert layer in resources and stack.properties(layer)["CompatibleArchitectures"] == [architecture]
        assert props["Environment"]["Variables"]["POWERTOOLS_TRACE_DISABLED"] == "true"
    layers = {n for n, r in resources.items() if r["Type"] == "AWS::Lambda::LayerVersion"}
    assert len(layers) == 1
    task = stack.properties("WorkerTaskDefinition")
    assert task["RuntimePlatform"]["CpuArchitecture"] == ("ARM64" if architecture == "arm64" else "X86_64")
    # the SES identity with Easy DKIM and MAIL FROM, and its DNS records, only with a domain
    assert ("SesIdentity" in resources) is bool(ses_domain)
    assert ({"SesDnsRecords", "SesDkimRecord1", "SesMailFromRecords"} <= stack.outputs()) is bool(ses_domain)
    if ses_domain:
        identity = stack.properties("SesIdentity")
        assert identity["EmailIdentity"] == ses_domain
        assert identity["MailFromAttributes"]["MailFromDomain"] == f"bounce.{ses_domain}"
        assert identity["DkimSigningAttributes"]["NextSigningKeyLength"] == "RSA_2048_BIT"


def test_each_layer_is_built_for_the_architecture_it_declares() -> None:
    from cfnlint.decode import decode_str

    doc, _ = decode_str((ROOT / "template.yaml").read_text())
    layers = {n: r for n, r in doc["Resources"].items() if r["Type"] == "AWS::Serverless::LayerVersion"}
    assert len(layers) == 2
    for layer in layers.values():
        assert [layer["Metadata"]["BuildArchitecture"]] == layer["Properties"]["CompatibleArchitectures"]


def test_x_ray_sdk_tracing_is_a_parameter(rendered: dict[str, Any]) -> None:
    stack = Stack(rendered, {"XRaySdkTracing": "true"})
    assert stack.properties("ApiFunction")["Environment"]["Variables"]["POWERTOOLS_TRACE_DISABLED"] == "false"


def test_every_native_wheel_the_layer_pins_has_an_arm64_build_for_the_lambda_runtime() -> None:
    # GIVEN the packages the Lambda layer installs (shared/requirements.txt, exported from uv.lock)
    layer = {m[1].lower().replace("_", "-") for m in
             re.finditer(r"^([A-Za-z0-9_.-]+)==", (ROOT / "shared" / "requirements.txt").read_text(), re.M)}
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    missing = []
    for package in lock["package"]:
        if package["name"] not in layer:
            continue
        wheels = [Path(w["url"]).name for w in package.get("wheels", [])]
        if not wheels or any(w.endswith("-none-any.whl") for w in wheels):
            continue  # pure Python
        # THEN a manylinux aarch64 wheel exists for CPython 3.12 (or an abi3 one that covers it)
        arm = [w for w in wheels if "aarch64" in w and "manylinux" in w
               and ("cp312-cp312" in w or "abi3" in w)]
        if not arm:
            missing.append(f"{package['name']} {package['version']}")
    assert missing == []


def test_the_samconfig_example_deploys_with_parameters_the_template_declares() -> None:
    config = tomllib.loads((ROOT / "samconfig.example.toml").read_text())
    declared = set(_transform(ROOT / "template.yaml")["Parameters"])
    overrides = config["default"]["deploy"]["parameters"]["parameter_overrides"]
    named = {item.split("=", 1)[0] for item in overrides}
    assert named <= declared, named - declared
    assert config["default"]["build"]["parameters"]["cached"] is True


CA_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:nats-ca-AbCdEf"


@pytest.mark.parametrize("ca_arn", ["", CA_ARN], ids=["nats-ca=system", "nats-ca=private"])
def test_a_private_nats_ca_reaches_functions_and_workers_only_when_given(rendered: dict[str, Any],
                                                                         ca_arn: str) -> None:
    # GIVEN the NATS CA secret parameter empty or set  WHEN the template is rendered
    stack = Stack(rendered, {"NatsTlsCaSecretArn": ca_arn})
    for function in FUNCTIONS:
        variables = stack.properties(function)["Environment"]["Variables"]
        # THEN each function is told the secret's ARN and may read that secret, only when it is given
        assert variables.get("JETMAIL_NATS_TLS_CA_SECRET_ARN") == (ca_arn or None)
        role = stack.properties(stack.properties(function)["Role"]["Fn::GetAtt"][0])
        readable = [s.get("Resource") for p in role.get("Policies", []) for s in p["PolicyDocument"]["Statement"]
                    if "secretsmanager:GetSecretValue" in str(s.get("Action"))]
        assert (CA_ARN in str(readable)) is bool(ca_arn)
    # AND the worker gets the PEM injected by ECS, which its execution role may read
    container = stack.properties("WorkerTaskDefinition")["ContainerDefinitions"][0]
    injected = {s["Name"]: s["ValueFrom"] for s in container["Secrets"]}
    assert injected.get("JETMAIL_NATS_TLS_CA_PEM") == (ca_arn or None)
    execution = stack.properties(stack.properties("WorkerTaskDefinition")["ExecutionRoleArn"]["Fn::GetAtt"][0])
    assert (CA_ARN in str(execution["Policies"])) is bool(ca_arn)
