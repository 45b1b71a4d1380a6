"""Check recorded AWS calls against the IAM policies template.yaml gives each role.

``record(path)`` installs a botocore hook on jetmail's one boto3 session (``jetmail.aws.clients``) that appends
every API call a process makes, as the IAM action and resource ARNs AWS authorises it against, to a
JSON-lines file. ``TemplateRoles`` expands the SAM template (policy templates included, through
samtranslator, the library ``sam deploy`` uses), resolves its intrinsic functions for one account and
region, and evaluates those calls against a role's statements: Allow, action and resource patterns,
and the ``StringEquals`` conditions the template uses. A call that no statement allows is reported.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACCOUNT = "123456789012"  # moto's default account: the ARNs the code sees locally
REGION = "us-east-1"
PARTITION = "aws"

# IAM service prefixes where botocore's signing name differs
IAM_PREFIX = {"monitoring": "cloudwatch", "email": "ses"}
# TransactWriteItems and TransactGetItems are authorised per item, as the single-item action
TRANSACT_ACTIONS = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                    "ConditionCheck": "ConditionCheckItem", "Get": "GetItem"}


@dataclass(frozen=True)
class Call:
    """One authorisation AWS makes for an API call: an action on a resource, with condition keys."""

    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = ()
    operation: str = ""

    def to_json(self) -> str:
        return json.dumps({"action": self.action, "resource": self.resource, "context": dict(self.context),
                           "operation": self.operation})

    @classmethod
    def from_json(cls, line: str) -> Call:
        data = json.loads(line)
        return cls(data["action"], data["resource"], tuple(sorted(data["context"].items())), data["operation"])


def _table_arn(name: str, index: str | None = None) -> str:
    arn = f"arn:{PARTITION}:dynamodb:{REGION}:{ACCOUNT}:table/{name}"
    return f"{arn}/index/{index}" if index else arn


def calls_for(service: str, operation: str, params: dict[str, Any]) -> list[Call]:
    """The authorisations one API call needs (the Service Authorization Reference's resources)."""
    prefix = IAM_PREFIX.get(service, service)
    action = f"{prefix}:{operation}"
    if prefix == "dynamodb":
        if operation in ("BatchGetItem", "BatchWriteItem"):
            return [Call(action, _table_arn(t), operation=operation) for t in params.get("RequestItems", {})]
        if operation in ("TransactWriteItems", "TransactGetItems"):
            out = []
            for item in params.get("TransactItems", []):
                for kind, body in item.items():
                    out.append(Call(f"dynamodb:{TRANSACT_ACTIONS[kind]}", _table_arn(body["TableName"]),
                                    operation=operation))
            return out
        if "TableName" in params:
            return [Call(action, _table_arn(params["TableName"], params.get("IndexName")), operation=operation)]
        return [Call(action, "*", operation=operation)]
    if prefix == "ses":
        if operation == "SendEmail":
            sender = params.get("FromEmailAddress") or ""
            domain = sender.rpartition("@")[2].rstrip(">").lower()
            out = [Call(action, f"arn:{PARTITION}:ses:{REGION}:{ACCOUNT}:identity/{domain}", operation=operation)]
            if params.get("ConfigurationSetName"):
                out.append(Call(action, f"arn:{PARTITION}:ses:{REGION}:{ACCOUNT}:configuration-set/"
                                        f"{params['ConfigurationSetName']}", operation=operation))
            return out
        return [Call(action, "*", operation=operation)]
    if prefix == "sns":
        return [Call(action, params.get("TopicArn", "*"), operation=operation)]
    if prefix == "secretsmanager":
        return [Call(action, params.get("SecretId", "*"), operation=operation)]
    if prefix == "cloudwatch" and operation == "PutMetricData":
        return [Call(action, "*", (("cloudwatch:namespace", params.get("Namespace", "")),), operation)]
    return [Call(action, "*", operation=operation)]


def record(path: Path | str) -> None:
    """Append every AWS call this process makes from now on to ``path`` (one Call per line)."""
    import jetmail.aws.clients as aws

    aws.reset_aws_clients()
    session = aws._get_session()
    out = Path(path)

    def hook(params: dict[str, Any], model: Any, **_: Any) -> None:
        service = model.service_model.signing_name
        lines = [c.to_json() for c in calls_for(service, model.name, params)]
        with out.open("a") as f:
            f.write("".join(line + "\n" for line in lines))

    session.events.register("before-parameter-build", hook)


def recorded(path: Path | str) -> list[Call]:
    p = Path(path)
    return [Call.from_json(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


# ---------------------------------------------------------------------- the template's policies

@dataclass
class Statement:
    actions: list[str]
    resources: list[str]
    conditions: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def allows(self, call: Call) -> bool:
        if not any(fnmatch.fnmatchcase(call.action.lower(), a.lower()) for a in self.actions):
            return False
        if not any(fnmatch.fnmatchcase(call.resource, r) for r in self.resources):
            return False
        context = dict(call.context)
        for operator, keys in self.conditions.items():
            if operator != "StringEquals":
                return False  # not understood here: never assume it holds
            for key, values in keys.items():
                if key == "kms:ViaService":
                    continue  # holds for keys used by DynamoDB on the caller's behalf only
                if context.get(key) not in values:
                    return False
        return True


class TemplateRoles:
    """The IAM roles of template.yaml, resolved for one account, region and set of physical names."""

    def __init__(self, template: Path, *, physical: dict[str, str], parameters: dict[str, str] | None = None,
                 stack_name: str = "jetmail") -> None:
        self.physical = physical
        self.stack_name = stack_name
        self.doc = _transform(template)
        self.parameters = {name: str(p.get("Default", "")) for name, p in self.doc.get("Parameters", {}).items()}
        self.parameters.update(parameters or {})
        self.resources: dict[str, Any] = self.doc["Resources"]

    def roles(self) -> list[str]:
        return [k for k, v in self.resources.items() if v["Type"] == "AWS::IAM::Role"]

    def statements(self, role: str) -> list[Statement]:
        props = self.resources[role]["Properties"]
        out = []
        for policy in props.get("Policies", []):
            if "Fn::If" in policy:  # a policy only some parameter values add (NatsTlsCaSecretArn)
                condition, chosen, other = policy["Fn::If"]
                policy = chosen if self._condition(condition) else other
                if policy == {"Ref": "AWS::NoValue"}:
                    continue
            for st in self._resolve(policy["PolicyDocument"])["Statement"]:
                if st.get("Effect") != "Allow":
                    continue
                out.append(Statement(_listed(st.get("Action")), _listed(st.get("Resource")),
                                     {op: {k: _listed(v) for k, v in keys.items()}
                                      for op, keys in st.get("Condition", {}).items()}))
        return out

    def denied(self, role: str, calls: Iterable[Call]) -> list[Call]:
        statements = self.statements(role)
        return sorted({c for c in calls if not any(s.allows(c) for s in statements)}, key=lambda c: c.action)

    # -- intrinsic functions

    def _condition(self, name: str) -> bool:
        def evaluate(node: Any) -> Any:
            if isinstance(node, dict) and len(node) == 1:
                (fn, arg), = node.items()
                if fn == "Condition":
                    return self._condition(arg)
                if fn == "Fn::Equals":
                    return evaluate(arg[0]) == evaluate(arg[1])
                if fn == "Fn::Not":
                    return not evaluate(arg[0])
                if fn == "Fn::And":
                    return all(evaluate(a) for a in arg)
                if fn == "Fn::Or":
                    return any(evaluate(a) for a in arg)
            return self._resolve(node)

        return bool(evaluate(self.doc["Conditions"][name]))

    def _name(self, logical: str) -> str:
        return self.physical.get(logical, logical)

    def _ref(self, name: str) -> str:
        pseudo = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": PARTITION,
                  "AWS::StackName": self.stack_name, "AWS::URLSuffix": "amazonaws.com"}
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        kind = self.resources[name]["Type"]
        physical = self._name(name)
        if kind == "AWS::SNS::Topic":
            return f"arn:{PARTITION}:sns:{REGION}:{ACCOUNT}:{physical}"
        if kind == "AWS::SecretsManager::Secret":
            return f"arn:{PARTITION}:secretsmanager:{REGION}:{ACCOUNT}:secret:{physical}"
        return physical

    def _getatt(self, name: str, attribute: str) -> str:
        kind = self.resources[name]["Type"]
        physical = self._name(name)
        if kind == "AWS::DynamoDB::Table" and attribute == "Arn":
            return _table_arn(physical)
        if kind == "AWS::SNS::Topic" and attribute == "TopicName":
            return physical
        if kind == "AWS::KMS::Key" and attribute == "Arn":
            return f"arn:{PARTITION}:kms:{REGION}:{ACCOUNT}:key/{physical}"
        return f"{name}.{attribute}"

    def _resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self._resolve(n) for n in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (fn, arg), = node.items()
            if fn == "Ref":
                return self._ref(arg)
            if fn == "Fn::GetAtt":
                name, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
                return self._getatt(name, attribute)
            if fn == "Fn::Sub":
                text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], self._resolve(arg[1]))
                return re.sub(r"\$\{([^}]+)\}", lambda m: self._sub(m.group(1), extra), text)
            if fn == "Fn::Join":
                return arg[0].join(str(self._resolve(part)) for part in arg[1])
        return {k: self._resolve(v) for k, v in node.items()}

    def _sub(self, name: str, extra: dict[str, Any]) -> str:
        if name in extra:
            return str(extra[name])
        if "." in name and not name.startswith("AWS::"):
            logical, attribute = name.split(".", 1)
            return self._getatt(logical, attribute)
        return self._ref(name)


def _listed(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _transform(template: Path) -> dict[str, Any]:
    """The SAM template as CloudFormation, with the policy templates expanded as `sam deploy` would."""
    import boto3
    from cfnlint.decode import decode_str
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    decoded, errors = decode_str(template.read_text())
    assert not errors, errors
    doc: dict[str, Any] = json.loads(json.dumps(decoded, default=str))
    for resource in doc["Resources"].values():
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key), str):  # local folders: `sam build` uploads them
                props[key] = "s3://bucket/key"
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=REGION))
    return copy.deepcopy(translator.translate(doc, {}, get_managed_policy_map=lambda: {}))
