"""The docs a newcomer walks: a short README, references generated from the code, and links that lead somewhere."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "infra" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def test_the_generated_references_are_current() -> None:
    # GIVEN the settings, commands and routes as the code defines them
    # WHEN the references are generated again and compared with what is committed
    done = subprocess.run([sys.executable, str(ROOT / "infra" / "refdocs.py")], capture_output=True, text=True,
                          timeout=120, check=False)
    # THEN nothing is stale (a new setting, command or route needs `make docs`)
    assert done.returncode == 0, done.stderr


def test_every_setting_is_described() -> None:
    from jetmail.config import Settings, descriptions

    documented = descriptions()
    missing = [name for name, field in Settings.model_fields.items() if not field.exclude and not documented.get(name)]
    assert not missing, f"settings without a description: {missing}"


def test_every_relative_link_leads_to_a_file_and_heading() -> None:
    broken = []
    for page in PAGES:
        for match in LINK.finditer(FENCE.sub("", page.read_text())):
            target = match["target"]
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_readme_is_an_overview_that_links_every_guide() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    guides = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md")}
    linked = {m["target"].partition("#")[0] for m in LINK.finditer(readme)}
    assert guides <= linked, f"pages the README does not lead to: {sorted(guides - linked)}"
