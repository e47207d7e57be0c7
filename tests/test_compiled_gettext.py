"""Page strings translated when a template compiles (daemon.web.compiled_gettext) read exactly as
jinja's newstyle gettext renders them, and every literal page string of the real templates is folded."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.support import Translations
from jinja2 import DictLoader, Environment, StrictUndefined

from daemon.web.compiled_gettext import CompiledGettext
from daemon.web.pages import Pages
from daemon.template_folders import TemplateFolders

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    "plain": '{{ _("Sign in") }}|{{ _("Forgot your password?") }}',
    "attribute": '<a title="{{ _("Sign in") }}">x</a>',
    "variables": '{{ _("Invitation from %(company)s", company=name, of_company=name|upper) }}',
    "escaped values": '{{ _("Hello %(who)s", who=who) }}',
    "percent": '{{ _("100%% done") }}|{{ _("%(n)s%% of %(total)s", n=3, total=count + 1) }}',
    "adjacent literals": '{{ _("Sign" " in") }}',
    "trailing comma": '{{ _("Hello %(who)s", who=who,) }}',
    "nested expression": '{{ _("Hello %(who)s", who=(names|join(", ")) ~ "!") }}',
    "in a list": '{% for label in [_("Sign in"), _("Hello %(who)s", who="<b>")] %}[{{ label }}]{% endfor %}',
    "filtered": '{{ _("Hello %(who)s", who=who)|length }}',
    "untranslated": '{{ _("Not in the catalogue %(x)s", x=who) }}',
    "variable message": '{{ _(message) }}',
    "conditional": '{% if who %}{{ _("Sign in") }}{% else %}{{ _("Email") }}{% endif %}',
}

CONTEXT = {"name": "Érablière & Fils", "who": "<script>alert('x')</script>", "count": 2,
           "names": ["a<", "b>"], "message": "Sign in"}


def _catalogue() -> Translations:
    catalog = Catalog(locale="fr")
    catalog.add("Sign in", "Se connecter")
    catalog.add("Forgot your password?", "Mot de passe oublié ?")
    catalog.add("Invitation from %(company)s", "Invitation %(of_company)s")
    catalog.add("Hello %(who)s", "Bonjour « %(who)s » l'ami")
    catalog.add("100%% done", "100 %% fait")
    catalog.add("%(n)s%% of %(total)s", "%(n)s %% sur %(total)s")
    catalog.add("Email", "Courriel")
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return Translations(fp=buffer)


def _environment(compiled: bool) -> Environment:
    extensions: list[object] = ["jinja2.ext.i18n"] + ([CompiledGettext] if compiled else [])
    env = Environment(loader=DictLoader(CASES), autoescape=True, undefined=StrictUndefined,
                      extensions=extensions)  # type: ignore[arg-type]
    catalogue = _catalogue()
    env.install_gettext_translations(catalogue, newstyle=True)  # type: ignore[attr-defined]
    if compiled:
        env.compiled_translations = catalogue  # type: ignore[attr-defined]
    return env


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_folded_string_renders_as_newstyle_gettext_does(case: str) -> None:
    expected = _environment(compiled=False).get_template(case).render(CONTEXT)
    assert _environment(compiled=True).get_template(case).render(CONTEXT) == expected


def test_folding_leaves_no_runtime_gettext_for_literal_strings() -> None:
    env = _environment(compiled=True)
    code = env.compile(CASES["variables"], raw=True)
    assert "Invitation %(of_company)s" in code and "'_'" not in code
    # A message that is not a literal still goes through the i18n extension's gettext.
    assert "'_'" in env.compile(CASES["variable message"], raw=True)


def test_every_literal_page_string_of_the_real_templates_is_folded() -> None:
    pages = Pages(TemplateFolders(ROOT / "templates"))
    folded = 0
    for locale in ("fr", "en"):
        env = pages._envs[locale]
        for name in env.list_templates(extensions=["html"]):
            source = env.loader.get_source(env, name)[0]  # type: ignore[union-attr]
            code = env.compile(source, name, raw=True)
            if not re.search(r"\b_\((?![\"'])", source):  # only literal messages (not _(product.name))
                assert "'_'" not in code, f"{name}: a literal page string left to runtime gettext"
            folded += 1
    assert folded > 20


def test_a_broken_translation_still_fails_at_render_time_not_at_load() -> None:
    catalog = Catalog(locale="fr")
    catalog.add("Sign in", "Se connecter %(nobody)s")  # a translator's mistake: a variable nobody gives
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    catalogue = Translations(fp=buffer)
    env = Environment(loader=DictLoader({"page": '{{ _("Sign in") }}'}), autoescape=True,
                      extensions=["jinja2.ext.i18n", CompiledGettext])
    env.install_gettext_translations(catalogue, newstyle=True)  # type: ignore[attr-defined]
    env.compiled_translations = catalogue  # type: ignore[attr-defined]
    template = env.get_template("page")
    with pytest.raises(KeyError):
        template.render()
