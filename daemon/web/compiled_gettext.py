"""Page strings translated once, when a template compiles, instead of on every render.

Each language has its own template environment (``daemon.web.pages``), so a literal ``_("…")``
in a template always gives the same translation there. This jinja extension (``filter_stream``, the
token filter jinja documents for inline gettext) rewrites, in that environment's token stream:

- ``_("Sign in")`` into the translation marked safe: jinja folds it into the template's text;
- ``_("… %(name)s …", name=expr, …)`` into ``("…translation…"|safe) % {"name": expr, …}``.

That is exactly what jinja's newstyle gettext computes at render time (``Markup(translation) %
variables``: the values are escaped, the translation is not), without its three nested
``Context.call``\\s per string. Any other use of ``_`` (a variable message, positional arguments,
``**`` or ``*``) is left to the i18n extension's ``_``, which stays installed, as does ``{% trans %}``.
"""

from __future__ import annotations

from gettext import NullTranslations
from typing import Iterable, Iterator

from jinja2 import Environment
from jinja2.ext import Extension
from jinja2.lexer import Token, TokenStream
from markupsafe import Markup

#: Tokens that end an expression: a rewrite never looks past them.
_ENDS = frozenset({"variable_end", "block_end", "eof"})
_OPEN = frozenset({"lparen", "lbracket", "lbrace"})
_CLOSE = frozenset({"rparen", "rbracket", "rbrace"})


class CompiledGettext(Extension):
    """Set ``environment.compiled_translations`` (this environment's catalogue) before templates load."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        environment.extend(compiled_translations=None)

    def filter_stream(self, stream: TokenStream) -> Iterable[Token]:
        catalogue: NullTranslations | None = getattr(self.environment, "compiled_translations", None)
        if catalogue is None or self.environment.autoescape is not True:
            return stream
        return _rewrite(list(stream), catalogue)


def _rewrite(tokens: list[Token], catalogue: NullTranslations) -> Iterator[Token]:
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.type == "name" and token.value == "_" and (i == 0 or tokens[i - 1].type != "dot"):
            folded = _fold(tokens, i, catalogue)
            if folded is not None:
                replacement, i = folded
                yield from replacement
                continue
        yield token
        i += 1


def _fold(tokens: list[Token], start: int, catalogue: NullTranslations) -> tuple[list[Token], int] | None:
    """The tokens replacing the call ``_(…)`` at ``start`` and the index after it, or None to leave it."""
    i = start + 1
    if i >= len(tokens) or tokens[i].type != "lparen":
        return None
    i += 1
    message = ""
    while i < len(tokens) and tokens[i].type == "string":  # adjacent literals concatenate, as in jinja
        message += tokens[i].value
        i += 1
    if i == start + 2 or i >= len(tokens):
        return None  # not a literal message
    line = tokens[start].lineno
    translation = Markup(catalogue.gettext(message))
    if tokens[i].type == "rparen":
        try:
            text = translation % {}  # what newstyle gettext does with no variables ("%%" → "%")
        except (KeyError, TypeError, ValueError):
            return None  # a broken translation fails at render time, as before
        return _safe(line, str(text)), i + 1
    if tokens[i].type != "comma":
        return None
    variables = _keywords(tokens, i + 1)
    if variables is None:
        return None
    pairs, end = variables
    out = [Token(line, "lparen", "("), *_safe(line, str(translation)), Token(line, "mod", "%"), Token(line, "lbrace", "{")]
    for name, value in pairs:
        out += [Token(line, "string", name), Token(line, "colon", ":"), *value, Token(line, "comma", ",")]
    out += [Token(line, "rbrace", "}"), Token(line, "rparen", ")")]
    return out, end


def _keywords(tokens: list[Token], i: int) -> tuple[list[tuple[str, list[Token]]], int] | None:
    """``name=expr, …)`` from ``i``: the pairs and the index after the closing parenthesis."""
    pairs: list[tuple[str, list[Token]]] = []
    while True:
        if i + 1 >= len(tokens) or tokens[i].type != "name" or tokens[i + 1].type != "assign":
            return None  # a positional argument, * or **: not ours to rewrite
        name = tokens[i].value
        i += 2
        value: list[Token] = []
        depth = 0
        while i < len(tokens):
            kind = tokens[i].type
            if kind in _ENDS:
                return None
            if depth == 0 and kind in ("comma", "rparen"):
                break
            depth += kind in _OPEN
            depth -= kind in _CLOSE
            value.append(tokens[i])
            i += 1
        else:
            return None
        if not value:
            return None
        pairs.append((name, value))
        if tokens[i].type == "rparen":
            return pairs, i + 1
        i += 1  # the comma
        if i < len(tokens) and tokens[i].type == "rparen":  # a trailing comma
            return pairs, i + 1


def _safe(line: int, text: str) -> list[Token]:
    """``("text"|safe)``: a constant jinja folds into the output, unescaped, as a translation is."""
    return [Token(line, "lparen", "("), Token(line, "string", text), Token(line, "pipe", "|"),
            Token(line, "name", "safe"), Token(line, "rparen", ")")]
