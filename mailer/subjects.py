"""A subject template of plain text and ``{{ name }}`` substitutions, rendered without jinja's machinery.

A subject is one short line rendered for every email queued (an accept queues two, on the event loop):
jinja's context, its generator and its ``str()`` per value cost ~44k instructions a subject under
callgrind, as much as the rest of preparing the email's row. What such a template renders is its text with
each named value put in, when every value is a ``str`` and the template is not autoescaped (subjects are
not: ``select_autoescape(["html"])``); anything else (a filter, a tag, an undefined name, a value of any
other type) is left to jinja, which says what it always said. The pieces come from jinja's own parse of
the same file, so its delimiters and whitespace control are read as jinja reads them.
tests/test_subjects.py holds it to jinja's text for every subject in ``templates/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, nodes

# Names jinja gives a meaning of its own in a template (not looked up in the values).
_SPECIAL = frozenset({"self", "super", "loop", "caller", "varargs", "kwargs"})


@dataclass(frozen=True)
class PlainSubject:
    """``texts[0] + values[names[0]] + texts[1] + …``: ``len(texts) == len(names) + 1``."""

    texts: tuple[str, ...]
    names: tuple[str, ...]

    def render(self, values: dict[str, Any]) -> str | None:
        """The template's text with ``values`` put in; None when one is missing or not a ``str`` (jinja
        renders it, or raises what it raises)."""
        texts = self.texts
        pieces = [texts[0]]
        for n, name in enumerate(self.names, 1):
            value = values.get(name)
            if value.__class__ is not str:
                return None
            pieces.append(value)
            pieces.append(texts[n])
        return "".join(pieces)


def plain_subject(env: Environment, path: str, filename: str | None) -> PlainSubject | None:
    """``path``'s template as a ``PlainSubject``, if it is one and the file jinja compiled (``filename``) is
    the one read here; else None."""
    if env.loader is None or env.finalize is not None:
        return None
    autoescape = env.autoescape(path) if callable(env.autoescape) else env.autoescape
    if autoescape:
        return None
    source, read_from, _ = env.loader.get_source(env, path)
    if read_from != filename:
        return None
    texts, names = [""], []
    for node in env.parse(source, path, read_from).body:
        if not isinstance(node, nodes.Output):
            return None
        for part in node.nodes:
            if isinstance(part, nodes.TemplateData):
                texts[-1] += part.data
            elif isinstance(part, nodes.Name) and part.ctx == "load" and part.name not in _SPECIAL:
                names.append(part.name)
                texts.append("")
            else:
                return None
    return PlainSubject(tuple(texts), tuple(names))
