"""Automatic replies: RFC 3834 headers, the habits of real robots, out-of-office subjects."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from daemon.autoreplies import AutoReplyVerdict, is_auto_reply
from tests.mail_corpus import load, names

HUMAN = AutoReplyVerdict(False, "no sign of an automatic reply")

# fixture -> reason, each delivered with an ordinary (non-null) envelope sender so the headers decide
ROBOTS = {
    "ooo_exchange_en_rfc3834.eml": "Auto-Submitted: auto-replied",
    "ooo_exchange_fr_suppress.eml": "X-Auto-Response-Suppress: All",
    "ooo_vacation_fr_precedence.eml": "Precedence: bulk",
    "ooo_x_autoreply.eml": "X-Autoreply present",
    "ooo_mailing_list.eml": "mailing list (List-Id)",
    "ooo_subject_only_en.eml":
        "out-of-office subject: Out of Office: Re: Boulangerie Roy invites you to be its accountant",
    "ooo_subject_only_fr.eml": "out-of-office subject: Message d'absence",
}


def test_every_robot_fixture_has_an_expectation() -> None:
    assert sorted(ROBOTS) == names("ooo_")


@pytest.mark.parametrize("name", sorted(ROBOTS))
def test_robots(name: str) -> None:
    assert is_auto_reply(load(name), "someone@example.org") == AutoReplyVerdict(True, ROBOTS[name])


@pytest.mark.parametrize("name", names("reply_", "sender_"))
def test_people_are_not_robots(name: str) -> None:
    message = load(name)
    assert is_auto_reply(message, str(message["From"].addresses[0].addr_spec)) == HUMAN


@pytest.mark.parametrize("name", names("dsn_", "bounce_"))
@pytest.mark.parametrize("mail_from", ["", "<>", " <> "])
def test_null_sender(name: str, mail_from: str) -> None:
    assert is_auto_reply(load(name), mail_from) == AutoReplyVerdict(True, "null sender")


def _message(**headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "pierre@cabinet-lavoie.ca"
    message["Subject"] = "Re: Boulangerie Roy invites you to be its accountant"
    for name, value in headers.items():
        del message[name.replace("_", "-")]
        message[name.replace("_", "-")] = value
    message.set_content("Accept")
    return message


@pytest.mark.parametrize(
    ("headers", "verdict"),
    [
        ({"Auto_Submitted": "no"}, HUMAN),
        ({"Auto_Submitted": "auto-generated"}, AutoReplyVerdict(True, "Auto-Submitted: auto-generated")),
        ({"Auto_Submitted": "auto-replied; owner-email=pierre@cabinet-lavoie.ca"},
         AutoReplyVerdict(True, "Auto-Submitted: auto-replied; owner-email=pierre@cabinet-lavoie.ca")),
        ({"Precedence": "List"}, AutoReplyVerdict(True, "Precedence: list")),
        ({"Precedence": "junk"}, AutoReplyVerdict(True, "Precedence: junk")),
        ({"Precedence": "first-class"}, HUMAN),
        ({"X_Autorespond": "yes"}, AutoReplyVerdict(True, "X-Autorespond present")),
        ({"X_Auto_Response_Suppress": "DR, OOF"}, AutoReplyVerdict(True, "X-Auto-Response-Suppress: DR, OOF")),
        ({"X_Auto_Response_Suppress": "DR, RN, NRN"}, HUMAN),
        ({"List_Unsubscribe": "<mailto:leave@lists.example.org>"},
         AutoReplyVerdict(True, "mailing list (List-Unsubscribe)")),
    ],
)
def test_headers(headers: dict[str, str], verdict: AutoReplyVerdict) -> None:
    assert is_auto_reply(_message(**headers), "pierre@cabinet-lavoie.ca") == verdict


# subject -> how the reason shows it (no-break spaces, curly apostrophes and decomposed accents normalised)
OUT_OF_OFFICE = {
    "Automatic reply: Boulangerie Roy invites you": None,
    "Auto: Boulangerie Roy invites you": None,
    "AutoReply: Boulangerie Roy invites you": None,
    "Auto-Reply: Boulangerie Roy invites you": None,
    "Out of Office: Boulangerie Roy": None,
    "I am out of the office until March 24": None,
    "OUT-OF-OFFICE": None,
    "Réponse automatique : Boulangerie Roy vous invite": None,
    "RÉPONSE AUTOMATIQUE\u00a0: Boulangerie Roy vous invite": "RÉPONSE AUTOMATIQUE : Boulangerie Roy vous invite",
    "Re\u0301ponse automatique : Boulangerie Roy": "Réponse automatique : Boulangerie Roy",
    "Absence du bureau": None,
    "Absent(e) du bureau jusqu'au 24 mars": None,
    "Absente : de retour le 17 mars": None,
    "Absent du bureau": None,
    "Je suis absente jusqu'au lundi": None,
    "Message d'absence": None,
    "Message d\u2019absence": "Message d'absence",
}


@pytest.mark.parametrize("subject", sorted(OUT_OF_OFFICE))
def test_out_of_office_subjects(subject: str) -> None:
    shown = OUT_OF_OFFICE[subject] or subject
    verdict = AutoReplyVerdict(True, f"out-of-office subject: {shown}")
    assert is_auto_reply(_message(Subject=subject), "pierre@cabinet-lavoie.ca") == verdict


@pytest.mark.parametrize(
    "subject",
    [
        "Re: Boulangerie Roy invites you to be its accountant",
        "Re: Auto: insurance documents",
        "Automobile expenses 2024",
        "Re: Réponse à votre question",
        "Office hours next week",
        "Re: absent-minded question about the office",
        "",
    ],
)
def test_ordinary_subjects(subject: str) -> None:
    assert is_auto_reply(_message(Subject=subject), "pierre@cabinet-lavoie.ca") == HUMAN
