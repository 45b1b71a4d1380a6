"""Where templates come from: a folder on disk, and the store the platform keeps them in."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from jetmail.messaging.templating.environment import new_environment
from jetmail.messaging.templating.errors import TemplateLoadError, TemplateNotFoundError
from jetmail.messaging.templating.layouts import layout_names
from jetmail.messaging.templating.locales import pick_locale
from jetmail.messaging.templating.model import TemplateContent, TemplateVersion

#: The example templates shipped with the package (see the README.md inside).
EXAMPLE_TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "example_templates"

_META_KEYS = frozenset({"category", "description", "sample_context", "variables"})


def load_template_dir(path: str | Path) -> list[TemplateContent]:
    """Every translation under ``path``, sorted by name then locale, each after the templates it
    extends or includes (so that saving them in order never refers to a template not yet saved).

    Layout: ``<name>/meta.json`` (optional; shared by all translations) and
    ``<name>/<locale>/subject.txt``, ``body.html`` and optionally ``body.txt``.
    Raises :class:`TemplateLoadError` naming the file at fault.
    """
    root = Path(path)
    if not root.is_dir():
        raise TemplateLoadError(f"{root}: not a directory")
    templates: list[TemplateContent] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        meta = _read_meta(folder / "meta.json")
        locales = sorted(p for p in folder.iterdir() if p.is_dir())
        if not locales:
            raise TemplateLoadError(f"{folder}: no locale folders")
        for locale_dir in locales:
            templates.append(_read_translation(folder.name, locale_dir, meta))
    return _layouts_first(templates)


def _layouts_first(templates: list[TemplateContent]) -> list[TemplateContent]:
    env = new_environment()
    by_name: dict[str, list[TemplateContent]] = {}
    for content in templates:
        by_name.setdefault(content.name, []).append(content)
    ordered: list[TemplateContent] = []
    placed: set[str] = set()

    def place(name: str, trail: frozenset[str]) -> None:
        if name in placed or name in trail or name not in by_name:
            return  # a loop or a missing layout is reported when the template is saved
        for layout in sorted(set().union(*(layout_names(c, env=env) for c in by_name[name]))):
            place(layout, trail | {name})
        placed.add(name)
        ordered.extend(by_name[name])

    for name in by_name:
        place(name, frozenset())
    return ordered


def _read_meta(path: Path) -> dict[str, object]:
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TemplateLoadError(f"{path}: {exc}") from None
    if not isinstance(meta, dict) or not meta.keys() <= _META_KEYS:
        raise TemplateLoadError(f"{path}: expected an object with keys among {sorted(_META_KEYS)}")
    return meta


def _read_translation(name: str, folder: Path, meta: dict[str, object]) -> TemplateContent:
    subject_path, html_path, text_path = folder / "subject.txt", folder / "body.html", folder / "body.txt"
    for required in (subject_path, html_path):
        if not required.is_file():
            raise TemplateLoadError(f"{required}: missing")
    fields = {key: value for key, value in meta.items() if key != "variables"}
    try:
        return TemplateContent.model_validate(
            {
                **fields,
                "name": name,
                "locale": folder.name,
                "subject": subject_path.read_text(encoding="utf-8").strip(),
                "html": html_path.read_text(encoding="utf-8"),
                "text": text_path.read_text(encoding="utf-8") if text_path.is_file() else None,
            }
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise TemplateLoadError(f"{folder}: {problems}") from None


class TemplateStore(Protocol):
    """What template resolution needs from storage; versions count per name and locale."""

    def locales(self, name: str) -> Collection[str]:
        """Locales holding at least one version of ``name``."""
        ...

    def get(self, name: str, *, locale: str, version: int | None = None) -> TemplateVersion | None:
        """One version (the latest when ``version`` is ``None``), or ``None``."""
        ...


def resolve_template(
    store: TemplateStore,
    name: str,
    *,
    locale: str | None,
    default_locale: str,
    version: int | None = None,
) -> TemplateVersion:
    """The translation of ``name`` best suited to ``locale``; see :func:`pick_locale`."""
    chosen = pick_locale(store.locales(name), locale, default_locale)
    found = store.get(name, locale=chosen, version=version) if chosen is not None else None
    if found is None:
        wanted = f"{name} v{version}" if version is not None else name
        raise TemplateNotFoundError(f"no template {wanted} for locale {locale or default_locale}")
    return found


def pick_layout(
    translations: Mapping[str, TemplateVersion], locale: str, default_locale: str
) -> TemplateVersion | None:
    """The translation of a layout that a template in ``locale`` extends or includes.

    The one a recipient in ``locale`` would get (:func:`pick_locale`); a layout with a single
    translation serves every locale, as layouts are mostly markup.
    """
    chosen = pick_locale(translations, locale, default_locale)
    if chosen is None and len(translations) == 1:
        chosen = next(iter(translations))
    return translations[chosen] if chosen is not None else None


class InMemoryTemplates:
    """A :class:`TemplateStore` in a dict: tests, previews and the bundled examples.

    Its :meth:`layout` is a :data:`~jetmail.messaging.templating.layouts.LayoutLoader` for a
    :class:`~jetmail.messaging.templating.renderer.Renderer`.
    """

    def __init__(self, templates: Iterable[TemplateContent] = (), *, default_locale: str = "en") -> None:
        self.default_locale = default_locale
        self._versions: dict[tuple[str, str], list[TemplateVersion]] = {}
        for content in templates:
            self.add(content)

    def add(self, content: TemplateContent) -> TemplateVersion:
        """Store ``content`` as the next version of its name and locale."""
        versions = self._versions.setdefault((content.name, content.locale), [])
        fields = content.model_dump(exclude={"version"})
        stored = TemplateVersion(**fields, version=len(versions) + 1)
        versions.append(stored)
        return stored

    def locales(self, name: str) -> list[str]:
        return sorted(locale for (n, locale) in self._versions if n == name)

    def get(self, name: str, *, locale: str, version: int | None = None) -> TemplateVersion | None:
        versions = self._versions.get((name, locale))
        if not versions:
            return None
        if version is None:
            return versions[-1]
        return versions[version - 1] if 1 <= version <= len(versions) else None

    def names(self) -> list[str]:
        return sorted({name for name, _ in self._versions})

    def layout(self, name: str, locale: str) -> TemplateVersion | None:
        """The latest translation of ``name`` for a template in ``locale`` (see :func:`pick_layout`)."""
        translations = {loc: versions[-1] for (n, loc), versions in self._versions.items() if n == name}
        return pick_layout(translations, locale, self.default_locale)
