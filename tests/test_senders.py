"""Sender proof: trusted Authentication-Results, and DKIM verified by Cabinet itself."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from dkim import dknewkey

from daemon.senders import SenderVerdict, added_by_trusted_mta, prove_sender
from tests.mail_corpus import load, parse, raw

TRUSTED = ["mx.tremblay-cpa.ca"]
UNPROVEN_TREMBLAY = SenderVerdict(False, "none", "no trusted DKIM or DMARC pass for tremblay-cpa.ca")

# fixture -> (the address the caller checks, the verdict with TRUSTED)
FIXTURES = {
    "sender_dkim_pass_trusted.eml": (
        "marie@tremblay-cpa.ca",  # From: says Marie@Tremblay-CPA.ca: addresses compare lowercased
        SenderVerdict(True, "dkim", "dkim=pass header.d=tremblay-cpa.ca from mx.tremblay-cpa.ca"),
    ),
    "sender_dmarc_pass_trusted.eml": (
        "Luc Gagnon <luc@gagnon-comptables.ca>",
        # DKIM passed for sendgrid.net, which is not Luc's domain; DMARC aligned through SPF.
        SenderVerdict(True, "dmarc", "dmarc=pass header.from=gagnon-comptables.ca from mx.tremblay-cpa.ca"),
    ),
    # Our MTA saw no signature and a failing DMARC; the "pass" comes from the attacker's own header.
    "sender_forged_untrusted_authserv.eml": ("marie@tremblay-cpa.ca", UNPROVEN_TREMBLAY),
    "sender_dkim_fail.eml": ("marie@tremblay-cpa.ca", UNPROVEN_TREMBLAY),
}


@pytest.mark.parametrize("name", sorted(FIXTURES))
@pytest.mark.parametrize("dkim_verify", [False, True])
def test_authentication_results(name: str, dkim_verify: bool) -> None:
    claimed, verdict = FIXTURES[name]
    # dkim_verify=True changes nothing here: the fixtures carry no signature dkimpy could check
    # (sender_dkim_fail's is garbage), and dnsfunc answers no lookup.
    result = prove_sender(raw(name), load(name), claimed, TRUSTED, dkim_verify, dnsfunc=lambda *_a, **_k: None)
    assert result == verdict


def test_a_header_below_the_mtas_received_line_is_not_counted_even_with_a_trusted_id() -> None:
    """RFC 8601 §5: only results above the trusted MTA's own Received: are its words (issue #11)."""
    name = "sender_forged_untrusted_authserv.eml"
    message = load(name)
    assert added_by_trusted_mta(message) == [str(message.get_all("Authentication-Results")[0])]
    verdict = prove_sender(raw(name), message, "marie@tremblay-cpa.ca", ["mx.attacker.example"], False)
    assert verdict == SenderVerdict(False, "none", "no trusted DKIM or DMARC pass for tremblay-cpa.ca")
    # Moved above the Received: line, the very same header would count: it parses, it was only placed.
    data = raw(name)
    start = data.index(b"Authentication-Results: mx.attacker.example;")
    end = data.index(b"\nFrom:", start) + 1
    lifted = data[start:end] + data[:start] + data[end:]
    verdict = prove_sender(lifted, parse(lifted), "marie@tremblay-cpa.ca", ["mx.attacker.example"], False)
    assert verdict == SenderVerdict(True, "dkim", "dkim=pass header.d=tremblay-cpa.ca from mx.attacker.example")


@pytest.mark.parametrize("trusted", [[], ["mx.example.com"], ["tremblay-cpa.ca"]])
def test_nothing_is_proven_without_a_trusted_authserv_id(trusted: list[str]) -> None:
    name = "sender_dkim_pass_trusted.eml"
    assert prove_sender(raw(name), load(name), "marie@tremblay-cpa.ca", trusted, False) == UNPROVEN_TREMBLAY


def test_the_claimed_address_must_be_the_from_address() -> None:
    name = "sender_dkim_pass_trusted.eml"
    verdict = prove_sender(raw(name), load(name), "julie@boulangerie-roy.ca", TRUSTED, False)
    assert verdict == SenderVerdict(False, "none", "From: marie@tremblay-cpa.ca is not julie@boulangerie-roy.ca")


def _with_results(results: str, sender: str = "marie@tremblay-cpa.ca", authserv_id: str = TRUSTED[0]) -> bytes:
    return (
        f"Authentication-Results: {authserv_id};\r\n\t{results}\r\n"
        f"From: Marie Tremblay <{sender}>\r\nTo: reply+x@cabinet.tremblay-cpa.ca\r\nSubject: Re: x\r\n\r\nAccept\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("results", "sender", "verdict"),
    [
        # A parent domain's signature covers its subdomains (relaxed alignment) ...
        ("dkim=pass header.d=tremblay-cpa.ca", "marie@mail.tremblay-cpa.ca",
         SenderVerdict(True, "dkim", "dkim=pass header.d=tremblay-cpa.ca from mx.tremblay-cpa.ca")),
        # ... a subdomain's does not cover its parent, nor a look-alike, nor a bare TLD.
        ("dkim=pass header.d=mail.tremblay-cpa.ca", "marie@tremblay-cpa.ca", UNPROVEN_TREMBLAY),
        ("dkim=pass header.d=evil-tremblay-cpa.ca", "marie@tremblay-cpa.ca", UNPROVEN_TREMBLAY),
        ("dkim=pass header.d=ca", "marie@tremblay-cpa.ca", UNPROVEN_TREMBLAY),
        # header.i alone, as Gmail writes it.
        ("dkim=pass header.i=@tremblay-cpa.ca header.s=20230601", "marie@tremblay-cpa.ca",
         SenderVerdict(True, "dkim", "dkim=pass header.d=tremblay-cpa.ca from mx.tremblay-cpa.ca")),
        ("dkim=PASS header.d=Tremblay-CPA.ca", "Marie@TREMBLAY-cpa.ca",
         SenderVerdict(True, "dkim", "dkim=pass header.d=tremblay-cpa.ca from mx.tremblay-cpa.ca")),
        # DMARC names the From: domain exactly.
        ("dmarc=pass header.from=mail.tremblay-cpa.ca", "marie@tremblay-cpa.ca", UNPROVEN_TREMBLAY),
        ("dkim=neutral header.d=tremblay-cpa.ca; dmarc=temperror header.from=tremblay-cpa.ca",
         "marie@tremblay-cpa.ca", UNPROVEN_TREMBLAY),
        ("spf=pass smtp.mailfrom=marie@tremblay-cpa.ca", "marie@tremblay-cpa.ca", UNPROVEN_TREMBLAY),
    ],
)
def test_alignment(results: str, sender: str, verdict: SenderVerdict) -> None:
    data = _with_results(results, sender)
    assert prove_sender(data, parse(data), sender, TRUSTED, False) == verdict


def test_authserv_id_compares_without_case_and_a_broken_header_does_not_hide_a_good_one() -> None:
    good = _with_results("dkim=pass header.d=tremblay-cpa.ca", authserv_id="MX.Tremblay-CPA.ca")
    data = b"Authentication-Results: ;;; garbage\r\n" + good
    verdict = prove_sender(data, parse(data), "marie@tremblay-cpa.ca", TRUSTED, False)
    assert verdict == SenderVerdict(True, "dkim", "dkim=pass header.d=tremblay-cpa.ca from mx.tremblay-cpa.ca")


def test_two_from_addresses_are_never_proven() -> None:
    data = _with_results("dkim=pass header.d=tremblay-cpa.ca", "marie@tremblay-cpa.ca>, <boss@tremblay-cpa.ca")
    verdict = prove_sender(data, parse(data), "marie@tremblay-cpa.ca", TRUSTED, False)
    assert verdict == SenderVerdict(
        False, "none", "From: marie@tremblay-cpa.ca, boss@tremblay-cpa.ca is not marie@tremblay-cpa.ca"
    )


# --- DKIM verified by Cabinet (dkimpy) ---------------------------------------------------------

SELECTOR = b"cabinet2025"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """A fresh RSA key pair from dkimpy's own helper: (private key PEM, DNS TXT record)."""
    folder: Path = tmp_path_factory.mktemp("dkim")
    dknewkey.GenRSAKeys(str(folder / "key"), verbose=False)
    dknewkey.ExtractRSADnsPublicKey(str(folder / "key"), str(folder / "dns"), verbose=False)
    return (folder / "key").read_bytes(), (folder / "dns").read_bytes()


def _dns(records: dict[bytes, bytes]) -> Callable[..., bytes | None]:
    """A fake of the internet's DNS (the only thing faked here): it answers TXT lookups from `records`."""

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    return lookup


def _signed(private_key: bytes, domain: bytes, sender: str = "marie@tremblay-cpa.ca", **options: object) -> bytes:
    message = (
        f"From: Marie Tremblay <{sender}>\r\nTo: Cabinet <reply+eyJpIjo0Mn0.Z9GA1w.k3J8d0@cabinet.tremblay-cpa.ca>\r\n"
        "Subject: Re: Boulangerie Roy invites you to be its accountant\r\nDate: Wed, 12 Mar 2025 11:45:09 -0400\r\n"
        "Message-ID: <dkim-test@tremblay-cpa.ca>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nAccept\r\n"
    ).encode()
    headers = [b"from", b"to", b"subject", b"date", b"message-id"]
    return bytes(dkim.sign(message, SELECTOR, domain, private_key, include_headers=headers, **options)) + message


@pytest.fixture
def dns(keys: tuple[bytes, bytes]) -> Callable[..., bytes | None]:
    public = keys[1]
    return _dns({SELECTOR + b"._domainkey.tremblay-cpa.ca.": public, SELECTOR + b"._domainkey.attacker.example.": public})


VERIFIED = SenderVerdict(True, "dkim-verified", "DKIM signature d=tremblay-cpa.ca verified by Cabinet")


@pytest.mark.parametrize("sender", ["marie@tremblay-cpa.ca", "marie@mail.tremblay-cpa.ca"])
def test_dkim_verified_by_cabinet(keys: tuple[bytes, bytes], dns: Callable[..., bytes | None], sender: str) -> None:
    data = _signed(keys[0], b"tremblay-cpa.ca", sender)
    assert prove_sender(data, parse(data), sender, [], True, dnsfunc=dns) == VERIFIED


def test_dkim_is_not_checked_unless_configured(keys: tuple[bytes, bytes], dns: Callable[..., bytes | None]) -> None:
    data = _signed(keys[0], b"tremblay-cpa.ca")
    assert prove_sender(data, parse(data), "marie@tremblay-cpa.ca", [], False, dnsfunc=dns) == UNPROVEN_TREMBLAY


@pytest.mark.parametrize(
    ("change", "description"),
    [
        (lambda data: data.replace(b"\r\n\r\nAccept", b"\r\n\r\nDecline"), "body changed after signing"),
        (lambda data: data.replace(b"Marie Tremblay <", b"Boss <"), "From: changed after signing"),
    ],
)
def test_a_tampered_message_is_not_proven(
    keys: tuple[bytes, bytes], dns: Callable[..., bytes | None], change: Callable[[bytes], bytes], description: str
) -> None:
    data = change(_signed(keys[0], b"tremblay-cpa.ca"))
    assert prove_sender(data, parse(data), "marie@tremblay-cpa.ca", [], True, dnsfunc=dns) == UNPROVEN_TREMBLAY


def test_a_valid_signature_from_another_domain_proves_nothing(
    keys: tuple[bytes, bytes], dns: Callable[..., bytes | None]
) -> None:
    data = _signed(keys[0], b"attacker.example")
    assert dkim.verify(data, dnsfunc=dns)  # the signature itself is good ...
    assert prove_sender(data, parse(data), "marie@tremblay-cpa.ca", [], True, dnsfunc=dns) == UNPROVEN_TREMBLAY


def test_a_body_length_limit_is_refused(keys: tuple[bytes, bytes], dns: Callable[..., bytes | None]) -> None:
    data = _signed(keys[0], b"tremblay-cpa.ca", length=True) + b"Text anyone could append\r\n"
    assert dkim.verify(data, dnsfunc=dns)  # l= makes the appended text invisible to the signature
    assert prove_sender(data, parse(data), "marie@tremblay-cpa.ca", [], True, dnsfunc=dns) == UNPROVEN_TREMBLAY


def test_no_key_in_dns(keys: tuple[bytes, bytes]) -> None:
    data = _signed(keys[0], b"tremblay-cpa.ca")
    assert prove_sender(data, parse(data), "marie@tremblay-cpa.ca", [], True, dnsfunc=_dns({})) == UNPROVEN_TREMBLAY


def test_dkim_lookups_stop_when_their_time_budget_is_spent(keys: tuple[bytes, bytes], dns: Callable[..., bytes | None]) -> None:
    calls: list[bytes] = []

    def counting(name: bytes, timeout: float = 5) -> bytes | None:
        calls.append(name)
        return dns(name, timeout)

    data = _signed(keys[0], b"tremblay-cpa.ca")
    verdict = prove_sender(data, parse(data), "marie@tremblay-cpa.ca", [], True, dnsfunc=counting, time_budget=0)
    assert not verdict.proven and calls == []
    assert prove_sender(data, parse(data), "marie@tremblay-cpa.ca", [], True, dnsfunc=counting) == VERIFIED
    assert len(calls) == 1
