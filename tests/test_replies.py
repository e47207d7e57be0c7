"""Reply text (quotes and signatures stripped) and commands, over replies from real clients."""

from __future__ import annotations

from email.message import EmailMessage

import pytest
from hypothesis import given, settings, strategies as st

from daemon.replies import Command, _norm, _quoted, _strip_quotes, parse_command, reply_text
from tests.mail_corpus import load, names

ACCEPT, DECLINE = Command("accept", None), Command("decline", None)
FOR_TREMBLAY = "Tremblay CPA"

# fixture -> (the text the person wrote, the command it holds)
REPLIES: dict[str, tuple[str, Command | None]] = {
    "reply_gmail_en_top.eml": ("Accept", ACCEPT),
    "reply_gmail_fr_question.eml": (
        "Bonjour Julie,\n\nJe n'accepte pas tout de suite : j'aimerais d'abord\n"
        "confirmer le mandat avec vous. Pouvez-vous m'appeler?\n\nMerci,\nMarie",
        None,
    ),
    "reply_outlook_en_top.eml": (
        "Accept for Tremblay CPA\n\nThanks,\nMarie\n\nMarie Tremblay, CPA\nTremblay CPA | 418 555-0142",
        Command("accept", FOR_TREMBLAY),
    ),
    "reply_outlook_fr_top.eml": (
        "Accepter pour Tremblay CPA\n\nMarie Tremblay, CPA\nTremblay CPA",
        Command("accept", FOR_TREMBLAY),
    ),
    "reply_outlook_fr_plain.eml": ("Je refuse\n\nMarie", DECLINE),
    "reply_outlook_ios_en_html_only.eml": ("accept", ACCEPT),
    "reply_iphone_en_top.eml": ("Decline", DECLINE),
    "reply_iphone_fr_plain.eml": ("ACCEPTER\u00a0!", ACCEPT),
    "reply_apple_mail_fr_html_only.eml": ("J\u2019accepte pour Tremblay CPA\n\nMarie", Command("accept", FOR_TREMBLAY)),
    "reply_thunderbird_en_bottom.eml": ("Yes, I will look at them tomorrow.", None),
    "reply_thunderbird_fr_interleaved.eml": ("Oui, hier.\n\nPas encore.\n\nMarie", None),
    "reply_thunderbird_en_html_only.eml": ("Decline for Tremblay CPA", Command("decline", FOR_TREMBLAY)),
}


def test_every_reply_fixture_has_an_expectation() -> None:
    assert sorted(REPLIES) == names("reply_")


@pytest.mark.parametrize("name", sorted(REPLIES))
def test_reply_text(name: str) -> None:
    assert reply_text(load(name)) == REPLIES[name][0]


@pytest.mark.parametrize("name", sorted(REPLIES))
def test_command_in_reply(name: str) -> None:
    assert parse_command(reply_text(load(name))) == REPLIES[name][1]


@pytest.mark.parametrize("name", [n for n in sorted(REPLIES) if load(n).get_content_type() == "multipart/alternative"])
def test_html_alternative_gives_the_same_text(name: str) -> None:
    # The HTML half on its own (gmail_quote, blockquote type=cite, Outlook's divRplyFwdMsg)
    # must come down to what the text/plain half does.
    html = load(name).get_body(preferencelist=("html",))
    assert html is not None and html.get_content_type() == "text/html"
    assert reply_text(html) == REPLIES[name][0]


def _plain(body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "marie@tremblay-cpa.ca"
    message.set_content(body)
    return message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # Outlook in plain-text mode, English.
        ("Decline\n\n-----Original Message-----\nFrom: Cabinet\nSent: March 12\n\nHello", "Decline"),
        # Gmail's forward marker.
        ("See below.\n\n---------- Forwarded message ---------\nFrom: Julie Roy\nDate: Wed\n", "See below."),
        # French attribution on one line with a narrow no-break space before the colon.
        ("Parfait.\n\nLe 12 mars 2025 à 10:03, Julie Roy a écrit\u202f:\n> Bonjour", "Parfait."),
        # Outlook's rule line before the header block goes with it.
        ("OK\n\n________________________________\nFrom: Julie\nSent: Wed\nTo: Marie\nSubject: x\n\nHi", "OK"),
        # Gmail renders Outlook's bold labels with stars.
        ("Oui\n\n*De :* Julie Roy\n*Envoyé :* mercredi\n*À :* Marie\n*Objet :* x\n\nBonjour", "Oui"),
        ("Thanks\n\n-- \nMarie Tremblay\n418 555-0142", "Thanks"),
        ("Merci\n\nEnvoyé à partir de mon appareil Galaxy Samsung", "Merci"),
        ("Thanks\n\nGet Outlook for Android", "Thanks"),
        ("Merci\n\nEnvoyé de mon iPad", "Merci"),
        # Sentences that look like the markers but are not: nothing is cut.
        ("On Monday I will send them.\nThanks", "On Monday I will send them.\nThanks"),
        ("On the phone, Julie wrote:\nthe numbers are fine.", "On the phone, Julie wrote:\nthe numbers are fine."),
        ("From: our side, all is ready.\nMarie", "From: our side, all is ready.\nMarie"),
        ("Le dossier est prêt.\nMarie", "Le dossier est prêt.\nMarie"),
        ("", ""),
    ],
)
def test_strips_quotes_and_signatures(body: str, expected: str) -> None:
    assert reply_text(_plain(body)) == expected


def test_html_drops_scripts_styles_and_keeps_no_break_spaces_as_text() -> None:
    message = EmailMessage()
    message.set_content(
        "<html><head><style>p{x:y}</style><title>t</title></head><body><script>alert(1)</script>"
        "<p>Accept</p><p>&nbsp;</p><p>Marie &amp; Luc</p>"
        "<div class='gmail_signature'>Marie Tremblay</div></body></html>",
        subtype="html",
    )
    assert reply_text(message) == "Accept\n\nMarie & Luc"


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("Accept", ACCEPT),
        ("accept.", ACCEPT),
        ("ACCEPTER !", ACCEPT),
        ("Accepter\u00a0!", ACCEPT),
        ("*Accept*", ACCEPT),
        ("J\u2019accepte", ACCEPT),
        ("j'ACCEPTE", ACCEPT),
        ("\n\n   Accept   \nThank you for the invitation", ACCEPT),
        ("accept Tremblay CPA", Command("accept", FOR_TREMBLAY)),
        ("Accept for Tremblay CPA.", Command("accept", FOR_TREMBLAY)),
        ("accepter pour Tremblay CPA", Command("accept", FOR_TREMBLAY)),
        ("Accepter : Tremblay CPA", Command("accept", FOR_TREMBLAY)),
        ("Accept - Tremblay CPA", Command("accept", FOR_TREMBLAY)),
        ("j'accepte pour « Tremblay CPA »", Command("accept", FOR_TREMBLAY)),
        ("accept for", ACCEPT),
        ("Decline", DECLINE),
        ("Refuser.", DECLINE),
        ("je  refuse", DECLINE),
        ("DECLINE for Gagnon Comptables inc", Command("decline", "Gagnon Comptables inc")),
        ("Je refuse pour Tremblay CPA", Command("decline", FOR_TREMBLAY)),
    ],
)
def test_command(text: str, command: Command) -> None:
    assert parse_command(text) == command


@pytest.mark.parametrize(
    "text",
    [
        "I don't accept",
        "accepting this is hard",
        "Accepted",
        "Accept?",
        "Accept. Thanks Marie",
        "accept, thanks",
        "Je n'accepte pas",
        "Acceptez",
        "Oui",
        "yes",
        "OK",
        "Declined",
        "Refusé",
        "Thanks\naccept",
        "> accept",
        "",
        "   \n  ",
    ],
)
def test_not_a_command(text: str) -> None:
    assert parse_command(text) is None


@settings(max_examples=2000, deadline=None)
@given(st.text(st.sampled_from([">", " ", "\t", "\u00a0", "\u3000", "\u0338", "\u0301", "a", "\uff1e", "\u2019",
                                "\ufeff", "\u2003", "é"]), max_size=6))
def test_a_quoted_line_is_found_without_normalising_it_as_with(line: str) -> None:
    """The quick test for a quoted line says what the normalised line's first character says."""
    assert _quoted(line) == _norm(line).startswith(">")


def test_a_greater_than_that_composes_into_another_sign_is_no_quote() -> None:
    assert not _quoted(">\u0338 not a quote")  # NFKC makes it "≯"
    assert _strip_quotes("> quoted\n>\u0338 kept") == ">\u0338 kept"
