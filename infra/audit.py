"""`make audit`: known vulnerabilities in the installed environment (.venv), by pip-audit.

`make audit-lock` (``--lock``): the same check against what uv.lock pins for production, the Lambda layer
(shared/requirements.txt) and the worker image (infra/worker-requirements.txt), without installing
anything: pip-audit reads the pinned versions and asks the advisory service about each. It needs only
Python, pip-audit and a reachable advisory service, so a deployer's CI can run it on every change:
``pip install pip-audit && python infra/audit.py --lock``.

Fails when a dependency has a known vulnerability that a newer release fixes; one without a fix is
printed and does not fail. Ignoring one needs an entry in IGNORED with the reason.

pip-audit asks PyPI's JSON API (per release) for advisories, or the OSV service. Where neither answers
(an index mirror without the per-release JSON API answers "not found" for every package, and OSV may
not resolve at all), nothing was audited: that prints "audit skipped: vulnerability service
unreachable" with what each service said, and does not fail, rather than reporting a clean result.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# vulnerability id -> why it is ignored (e.g. "only the X feature is affected, which jetmail never uses")
IGNORED: dict[str, str] = {}

PIP_AUDIT = Path(sys.executable).with_name("pip-audit")
ROOT = Path(__file__).resolve().parents[1]
# exported from uv.lock by infra/lock.py: what production installs
LOCKED = ("shared/requirements.txt", "infra/worker-requirements.txt")
TIMEOUT_S = 300


def run(service: str, *, lock: bool = False) -> tuple[list[dict[str, Any]] | None, str]:
    """The audited dependencies as pip-audit reports them, or None and why nothing was audited. ``lock``:
    the pinned, hashed requirements exported from uv.lock instead of the installed environment."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "audit.json"
        source = ["--local", "--skip-editable"]
        if lock:
            source = ["--disable-pip", "--no-deps", "--require-hashes"]
            for path in LOCKED:
                source += ["-r", str(ROOT / path)]
        cmd = [str(PIP_AUDIT), *source, "--progress-spinner", "off", "--vulnerability-service",
               service, "--format", "json", "--output", str(out)]
        for vuln in IGNORED:
            cmd += ["--ignore-vuln", vuln]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return None, f"no answer within {TIMEOUT_S}s"
        if not out.exists():
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            return None, lines[-1] if lines else f"pip-audit exited {done.returncode}"
        deps: list[dict[str, Any]] = json.loads(out.read_text())["dependencies"]
    audited = [dep for dep in deps if "skip_reason" not in dep]
    if not audited:
        reasons = {dep["skip_reason"].split(":")[0] for dep in deps}
        return None, f"no package audited ({len(deps)} skipped: {'; '.join(sorted(reasons))})"
    return deps, ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", action="store_true", help="audit what uv.lock pins for production")
    args = parser.parse_args()
    said: list[str] = []
    for service in ("pypi", "osv"):
        deps, why = run(service, lock=args.lock)
        if deps is not None:
            break
        said.append(f"{service}: {why}")
    else:
        print(f"audit skipped: vulnerability service unreachable ({' | '.join(said)})")
        return 0
    fixable, unfixable = [], []
    for dep in deps:
        for vuln in dep.get("vulns", []):
            line = f"{dep['name']} {dep['version']}: {vuln['id']}"
            if vuln.get("fix_versions"):
                fixable.append(f"{line} (fixed in {', '.join(vuln['fix_versions'])})")
            else:
                unfixable.append(f"{line} (no fixed release yet)")
    skipped = [dep for dep in deps if "skip_reason" in dep]
    for line in unfixable:
        print(f"note: {line}")
    for vuln, reason in IGNORED.items():
        print(f"ignored: {vuln}: {reason}")
    if fixable:
        print("known vulnerabilities with a fix; upgrade these:")
        for line in fixable:
            print(f"  {line}")
        return 1
    print(f"audit ({service}): {len(deps) - len(skipped)} packages, no known vulnerability with a fix"
          + (f"; {len(skipped)} not audited" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
