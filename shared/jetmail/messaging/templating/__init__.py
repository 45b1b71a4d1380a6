"""Email templates: model, layouts, static checks, per-recipient rendering, locale fallback, loading.

Pure: nothing here does I/O except :func:`load_template_dir`; storage sits behind
:class:`TemplateStore` and, for the layouts templates extend, a :data:`LayoutLoader`.
"""

from jetmail.messaging.templating.errors import (
    ReservedContextKeyError,
    TemplateField,
    TemplateLimitError,
    TemplateLoadError,
    TemplateNotFoundError,
    TemplateProblem,
    TemplateRenderError,
    TemplateTimeoutError,
    TemplateValidationError,
    UnsafeHtmlError,
)
from jetmail.messaging.templating.layouts import LayoutLoader
from jetmail.messaging.templating.library import (
    EXAMPLE_TEMPLATES_DIR,
    InMemoryTemplates,
    TemplateStore,
    load_template_dir,
    pick_layout,
    resolve_template,
)
from jetmail.messaging.templating.limits import RenderLimits
from jetmail.messaging.templating.links import LinkRewriter, rewrite_links
from jetmail.messaging.templating.locales import locale_chain, normalize_locale, pick_locale
from jetmail.messaging.templating.model import (
    STANDARD_NAMES,
    Category,
    Company,
    Recipient,
    RenderedEmail,
    StandardContext,
    TemplateContent,
    TemplateVersion,
)
from jetmail.messaging.templating.plaintext import html_to_text
from jetmail.messaging.templating.renderer import Renderer, check_template
from jetmail.messaging.templating.validation import template_variables, validate_template

__all__ = [
    "EXAMPLE_TEMPLATES_DIR",
    "STANDARD_NAMES",
    "Category",
    "Company",
    "InMemoryTemplates",
    "LayoutLoader",
    "LinkRewriter",
    "Recipient",
    "RenderLimits",
    "RenderedEmail",
    "Renderer",
    "ReservedContextKeyError",
    "StandardContext",
    "TemplateContent",
    "TemplateField",
    "TemplateLimitError",
    "TemplateLoadError",
    "TemplateNotFoundError",
    "TemplateProblem",
    "TemplateRenderError",
    "TemplateStore",
    "TemplateTimeoutError",
    "TemplateValidationError",
    "TemplateVersion",
    "UnsafeHtmlError",
    "check_template",
    "html_to_text",
    "load_template_dir",
    "locale_chain",
    "normalize_locale",
    "pick_layout",
    "pick_locale",
    "resolve_template",
    "rewrite_links",
    "template_variables",
    "validate_template",
]
