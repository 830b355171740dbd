"""HTML from templates, every value escaped unless it is markup made here (`Html`).

Templates are `string.Template`s (`$name`): the page templates are files under `templates/`, the
small repeated pieces (a table row, a form) strings in `views.py`. A value put into either is
escaped with `html.escape` (quotes too, so it is safe in an attribute) unless it is an `Html`,
which only `fragment`, `page`, `join` and `esc` make. A plain `str` built by concatenating `Html`
is a `str` again and gets escaped: a mistake shows as visible markup, never as live markup.
"""

from __future__ import annotations

import functools
import html
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).parent / "templates"


class Html(str):
    """Markup that is safe to put in a page as it is."""

    __slots__ = ()


def esc(value: Any) -> Html:
    """`value` as HTML: markup as it is, anything else as text (None as nothing)."""
    if isinstance(value, Html):
        return value
    return Html(html.escape("" if value is None else str(value), quote=True))


def fragment(template: str, **values: Any) -> Html:
    return Html(string.Template(template).substitute({k: esc(v) for k, v in values.items()}))


def join(parts: Iterable[Any], sep: str = "\n") -> Html:
    return Html(sep.join(esc(p) for p in parts))


@functools.cache
def _template(name: str) -> string.Template:
    return string.Template((TEMPLATES / name).read_text(encoding="utf-8"))


def page(name: str, **values: Any) -> Html:
    """The template file `name` with `values` put in (escaped unless markup)."""
    return Html(_template(name).substitute({k: esc(v) for k, v in values.items()}))
