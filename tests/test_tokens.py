"""Signed links: one salt per purpose, key rotation, maximum age, layered errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from daemon.errors import ConfigError, LinkExpired, LinkTampered
from daemon.tokens import LinkSigner, Purpose, SecretKeys
from tests.conftest import FakeClock
from tests.signatures import forged

OLD = "o" * 40
NEW = "n" * 40


def keys_file(tmp_path: Path, *keys: str) -> Path:
    path = tmp_path / "keys"
    path.write_text("# comment\n" + "\n".join(keys) + "\n")
    return path


def test_a_token_for_one_purpose_never_verifies_for_another(tmp_path: Path) -> None:
    signer = LinkSigner(SecretKeys.load(keys_file(tmp_path, OLD)), FakeClock())
    token = signer.sign(Purpose.INVITE, [1, "nonce"])
    assert signer.verify(Purpose.INVITE, token, None) == [1, "nonce"]
    with pytest.raises(LinkTampered):
        signer.verify(Purpose.MANAGE, token, None)


def test_rotation_newest_key_signs_and_old_keys_still_verify(tmp_path: Path) -> None:
    clock = FakeClock()
    old = LinkSigner(SecretKeys.load(keys_file(tmp_path, OLD)), clock)
    issued_before = old.sign(Purpose.INVITE, [7, "n"])
    rotated = LinkSigner(SecretKeys.load(keys_file(tmp_path, OLD, NEW)), clock)
    assert rotated.verify(Purpose.INVITE, issued_before, None) == [7, "n"]
    issued_after = rotated.sign(Purpose.INVITE, [8, "n"])
    with pytest.raises(LinkTampered):
        old.verify(Purpose.INVITE, issued_after, None)  # signed with the new key
    only_new = LinkSigner(SecretKeys.load(keys_file(tmp_path, NEW)), clock)
    assert only_new.verify(Purpose.INVITE, issued_after, None) == [8, "n"]
    with pytest.raises(LinkTampered):
        only_new.verify(Purpose.INVITE, issued_before, None)  # retired key


def test_expired_is_told_apart_from_tampered_and_keeps_its_payload(tmp_path: Path) -> None:
    clock = FakeClock()
    signer = LinkSigner(SecretKeys.load(keys_file(tmp_path, OLD)), clock)
    token = signer.sign(Purpose.TRANSFER, [3, "x"])
    clock.advance(hours=49)
    with pytest.raises(LinkExpired) as info:
        signer.verify(Purpose.TRANSFER, token, timedelta(hours=48))
    assert info.value.payload == [3, "x"]
    with pytest.raises(LinkTampered):
        signer.verify(Purpose.TRANSFER, forged(token), timedelta(hours=48))


def test_a_signature_has_four_spellings_and_forged_changes_every_one(tmp_path: Path) -> None:
    """Why tests forge with ``forged``: the last character of a signature keeps four bits of six.

    Swapping it for one that differs only in the two dropped bits leaves the same signature, which
    still verifies (so a token is never a key by its spelling: the row it names decides). Changing
    the first character always yields another signature, which never does.
    """
    signer = LinkSigner(SecretKeys.load(keys_file(tmp_path, OLD)), FakeClock())
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for n in range(64):
        token = signer.sign(Purpose.INVITE, [n, "nonce"])
        last = alphabet.index(token[-1])
        spellings = [token[:-1] + alphabet[(last & ~3) | low] for low in range(4)]
        assert [signer.verify(Purpose.INVITE, spelling, None) for spelling in spellings] == [[n, "nonce"]] * 4
        with pytest.raises(LinkTampered):
            signer.verify(Purpose.INVITE, forged(token), None)


@pytest.mark.parametrize("content", ["", "# only a comment\n", "short\n"])
def test_bad_key_files_are_config_errors(tmp_path: Path, content: str) -> None:
    path = tmp_path / "keys"
    path.write_text(content)
    with pytest.raises(ConfigError):
        SecretKeys.load(path)


def test_keys_never_show_in_reprs(tmp_path: Path) -> None:
    keys = SecretKeys.load(keys_file(tmp_path, OLD))
    assert OLD not in repr(keys) and OLD not in str(keys.keys[0])


def test_addresses_are_signed_as_itsdangerous_signs_them_and_rotate_like_links(tmp_path: Path) -> None:
    """The address serializers are built once with their keys kept: the bytes stay those a fresh
    itsdangerous serializer gives (a bounce to an address signed before still verifies)."""
    from itsdangerous import URLSafeSerializer

    clock = FakeClock()
    old = LinkSigner(SecretKeys.load(keys_file(tmp_path, OLD)), clock)
    for purpose in (Purpose.BOUNCE, Purpose.REPLY):
        fresh = URLSafeSerializer([OLD], salt=purpose.salt).dumps("a1b2c3")
        assert old.sign_address(purpose, "a1b2c3") == fresh
        assert old.sign_address(purpose, "a1b2c3") == fresh  # the second signature, with the kept key
    signed_before = old.sign_address(Purpose.BOUNCE, "a1b2c3")
    rotated = LinkSigner(SecretKeys.load(keys_file(tmp_path, OLD, NEW)), clock)
    assert rotated.verify_address(Purpose.BOUNCE, signed_before) == "a1b2c3"
    assert rotated.sign_address(Purpose.BOUNCE, "a1b2c3") == URLSafeSerializer([NEW], salt=Purpose.BOUNCE.salt).dumps("a1b2c3")
    with pytest.raises(LinkTampered):
        rotated.verify_address(Purpose.REPLY, signed_before)  # another purpose's salt


@pytest.mark.parametrize("ref", ["a1b2c3", "o12345", "", "x" * 200, "éà" * 20, "o1-2_3.4", "\u2028\"\\"])
def test_an_address_signature_is_the_bytes_itsdangerous_writes_for_any_reference(tmp_path: Path, ref: str) -> None:
    # sign_address writes URLSafeSerializer.dumps's bytes itself: compressed or not, ASCII or not.
    from itsdangerous import URLSafeSerializer

    signer = LinkSigner(SecretKeys.load(keys_file(tmp_path, OLD, NEW)), FakeClock())
    for purpose in (Purpose.BOUNCE, Purpose.REPLY):
        expected = URLSafeSerializer([OLD, NEW], salt=purpose.salt)
        assert signer.sign_address(purpose, ref) == expected.dumps(ref)
        assert signer.verify_address(purpose, signer.sign_address(purpose, ref)) == ref
    assert signer.sign_address(Purpose.BOUNCE, "x" * 200).startswith(".")  # the compressed form was exercised


def test_a_short_address_payload_is_not_compressed_even_when_zlib_would_shorten_it(tmp_path: Path) -> None:
    # zlib is not tried on a ref as short as Cabinet's (its state costs more than the email's other
    # signing); itsdangerous still reads the uncompressed form, which it writes for every other short ref.
    import zlib

    from itsdangerous import URLSafeSerializer

    ref = "0" * 12  # a 12-hex ref that repeats itself: the rare one zlib shortens
    assert len(zlib.compress(f'"{ref}"'.encode())) < len(f'"{ref}"') - 1
    signer = LinkSigner(SecretKeys.load(keys_file(tmp_path, OLD, NEW)), FakeClock())
    signed = signer.sign_address(Purpose.BOUNCE, ref)
    assert not signed.startswith(".")
    assert URLSafeSerializer([OLD, NEW], salt=Purpose.BOUNCE.salt).loads(signed) == ref
    assert signer.verify_address(Purpose.BOUNCE, signed) == ref


@pytest.mark.parametrize("purpose", list(Purpose))
def test_tokens_are_the_ones_itsdangerous_itself_makes_and_reads(tmp_path: Path, purpose: Purpose) -> None:
    # The signer is tuned (one signer per salt, hmac in C, no zlib attempt on random ids), not changed:
    # a token issued before verifies after, and the other way round, for every purpose.
    import secrets
    import time

    from itsdangerous import URLSafeTimedSerializer

    signer = LinkSigner(SecretKeys.load(keys_file(tmp_path, OLD, NEW)), FakeClock())
    plain = URLSafeTimedSerializer([OLD, NEW], salt=purpose.salt)
    for payload in (secrets.token_urlsafe(32), [12, secrets.token_urlsafe(12)], ["company", 3, "a@b.example"]):
        ours = signer.sign(purpose, payload)
        theirs = plain.dumps(payload)
        assert plain.loads(ours) == payload and signer.verify(purpose, theirs, None) == payload
        if int(time.time()) == int(signer.inspect(purpose, ours)[1].timestamp()):  # same second: same bytes
            assert ours == theirs


def _stock_outcome(serializer: object, token: str, max_age: int | None) -> object:
    from itsdangerous import BadData, SignatureExpired

    try:
        return ("ok", serializer.loads(token, max_age=max_age))  # type: ignore[attr-defined]
    except SignatureExpired:
        return "expired"
    except BadData:
        return "tampered"


def _our_outcome(signer: LinkSigner, purpose: Purpose, token: str, max_age: timedelta | None) -> object:
    try:
        return ("ok", signer.verify(purpose, token, max_age))
    except LinkExpired:
        return "expired"
    except LinkTampered:
        return "tampered"


@pytest.mark.parametrize("purpose", [Purpose.INVITE, Purpose.CSRF, Purpose.BROWSER, Purpose.MANAGE])
def test_verify_agrees_with_itsdangerous_on_every_altered_token(tmp_path: Path, purpose: Purpose) -> None:
    """verify checks the HMAC with one C call instead of itsdangerous's layers: for a token and every
    one-character change, cut, doubled dot or stray part of it, both say the same (accepted with the same
    payload, expired, or refused)."""
    import string

    from itsdangerous import URLSafeTimedSerializer

    # The FakeClock runs at real time, as itsdangerous's does: an hour's age compares alike on both.
    signer = LinkSigner(SecretKeys.load(keys_file(tmp_path, OLD, NEW)), FakeClock())
    stock = URLSafeTimedSerializer([OLD, NEW], salt=purpose.salt)
    old_stock = URLSafeTimedSerializer([OLD], salt=purpose.salt)
    payload = "b" * 43 if purpose in (Purpose.CSRF, Purpose.BROWSER) else [12, "nonce-abc"]
    tokens = [signer.sign(purpose, payload), stock.dumps(payload), old_stock.dumps(payload)]
    altered: list[str] = []
    for token in tokens:
        altered.append(token)
        for i in range(len(token)):
            for replacement in ("A", "_", ".", "", "=", "é"):
                altered.append(token[:i] + replacement + token[i + 1:])
        altered += [token + ".", "." + token, token.replace(".", "..", 1), token + "=", token + "A", token.rsplit(".", 1)[0]]
    altered += ["", ".", "..", "a.b.c", string.ascii_letters]
    for token in altered:
        assert _our_outcome(signer, purpose, token, None) == _stock_outcome(stock, token, None), token
        assert _our_outcome(signer, purpose, token, timedelta(hours=1)) == _stock_outcome(stock, token, 3600), token
    valid = [t for t in altered if _stock_outcome(stock, t, None) != "tampered"]
    assert tokens[0] in valid and len(valid) < len(altered) // 2  # most changes break the signature


def test_behind_a_valid_signature_verify_reads_each_part_as_itsdangerous_does(tmp_path: Path) -> None:
    """verify decodes a signed token's timestamp and payload itself (``LinkSigner._check``): for bodies and
    timestamps signed with the real key (compressed, not JSON, not base64, not UTF-8, a timestamp of more
    than eight bytes, padding written out), it gives what itsdangerous gives: the payload, "tampered" for its
    ``BadSignature``, or its ``BadPayload`` (raised as before: only a holder of the key can sign one)."""
    import time

    from itsdangerous import BadPayload, BadSignature, URLSafeTimedSerializer
    from itsdangerous.encoding import base64_encode

    signer = LinkSigner(SecretKeys.load(keys_file(tmp_path, OLD, NEW)), FakeClock())
    stock = URLSafeTimedSerializer([OLD, NEW], salt=Purpose.INVITE.salt)
    signs = stock.make_signer(Purpose.INVITE.salt)
    now = int(time.time()).to_bytes(4, "big")
    bodies = [
        stock.dump_payload([12, "nonce"]), stock.dump_payload(["x" * 300]), stock.dump_payload("été"),
        base64_encode(b"not json"), b"!!!!", base64_encode(b'"\xe9"'),
        base64_encode(b'"\xff"'), b"", base64_encode(b"[1,2]") + b"==", b".", b"." + base64_encode(b"not zlib"),
    ]
    stamps = [base64_encode(now), base64_encode(b"\x01" * 9), base64_encode(b"\x00" + now), b"", b"!!", base64_encode(now) + b"="]
    assert bodies[1].startswith(b".")  # itsdangerous compressed it
    outcomes = set()
    for body in bodies:
        for stamp in stamps:
            value = body + b"." + stamp
            token = (value + b"." + signs.get_signature(value)).decode()
            try:
                theirs: object = ("ok", stock.loads(token))
            except BadPayload:
                theirs = "bad payload"
            except BadSignature:
                theirs = "tampered"
            try:
                ours = _our_outcome(signer, Purpose.INVITE, token, None)
            except BadPayload:
                ours = "bad payload"
            assert ours == theirs, (body, stamp)
            outcomes.add(theirs if isinstance(theirs, str) else "ok")
    assert outcomes == {"ok", "tampered", "bad payload"}


def test_tokens_from_the_future_or_past_their_age_are_expired_with_their_payload(tmp_path: Path) -> None:
    clock = FakeClock()
    clock.freeze()
    signer = LinkSigner(SecretKeys.load(keys_file(tmp_path, OLD)), clock)
    token = signer.sign(Purpose.CSRF, "browser-id")
    clock.advance(hours=1)
    assert signer.verify(Purpose.CSRF, token, timedelta(hours=1)) == "browser-id"  # exactly its age: still good
    clock.advance(seconds=1)
    with pytest.raises(LinkExpired) as info:
        signer.verify(Purpose.CSRF, token, timedelta(hours=1))
    assert info.value.payload == "browser-id"
    clock.advance(hours=-2)  # signed "in the future": a clock moved back, or a forged time
    with pytest.raises(LinkExpired):
        signer.verify(Purpose.CSRF, token, timedelta(hours=1))
    assert signer.verify(Purpose.CSRF, token, None) == "browser-id"  # no age asked: the signature is what counts


def test_a_kept_token_still_ages_and_each_caller_gets_its_own_payload(tmp_path: Path) -> None:
    """verify keeps what a checked token says (``_verified``): its age is still checked on every use,
    a caller changing its payload changes nothing for the next, and the kept tokens stay bounded."""
    from daemon import tokens

    clock = FakeClock()
    clock.freeze()
    signer = LinkSigner(SecretKeys.load(keys_file(tmp_path, OLD)), clock)
    token = signer.sign(Purpose.INVITE, [4, "nonce"])
    first = signer.verify(Purpose.INVITE, token, timedelta(hours=1))
    first.append("changed")
    assert signer.verify(Purpose.INVITE, token, timedelta(hours=1)) == [4, "nonce"]
    with pytest.raises(LinkTampered):
        signer.verify(Purpose.MANAGE, token, None)  # kept per purpose: another salt still refuses it
    clock.advance(hours=1, seconds=1)
    with pytest.raises(LinkExpired) as info:
        signer.verify(Purpose.INVITE, token, timedelta(hours=1))
    assert info.value.payload == [4, "nonce"]
    for i in range(tokens.VERIFIED_TOKENS + 10):
        signer.verify(Purpose.CSRF, signer.sign(Purpose.CSRF, f"browser-{i}"), None)
    assert len(signer._verified) <= tokens.VERIFIED_TOKENS


def test_signing_for_several_purposes_at_once_signs_as_each_alone(tmp_path: Path) -> None:
    """A new browser's CSRF token and cookie are signed together (``sign_each``): the same tokens as
    ``sign`` makes one by one, each verifying for its own purpose only."""
    clock = FakeClock()
    clock.freeze()
    signer = LinkSigner(SecretKeys.load(keys_file(tmp_path, OLD, NEW)), clock)
    purposes = (Purpose.CSRF, Purpose.BROWSER, Purpose.INVITE)
    for payload in ("a-browser-id", [7, "nonce"]):
        tokens = signer.sign_each(purposes, payload)
        assert tokens == [signer.sign(purpose, payload) for purpose in purposes]
        assert len(set(tokens)) == 3
        for purpose, token in zip(purposes, tokens):
            assert signer.verify(purpose, token, None) == payload
            with pytest.raises(LinkTampered):
                signer.verify(Purpose.MANAGE, token, None)


@pytest.mark.parametrize("key", [b"", b"k" * 20, b"\xff" * 64, bytes(range(100))])
def test_the_kept_hmac_is_hmac_sha1(key: bytes) -> None:
    import hashlib
    import hmac

    from daemon.tokens import _KeyedSha1

    keyed = _KeyedSha1(key)
    for value in (b"", b"payload.stamp", bytes(range(256)) * 3):
        assert keyed.mac(value) == hmac.new(key, value, hashlib.sha1).digest()


def test_on_the_system_clock_a_token_is_stamped_with_the_current_second(tmp_path: Path) -> None:
    """The system clock's seconds are read without a datetime (``LinkSigner._timestamp``): the same second."""
    import time

    from daemon.clock import SystemClock

    signer = LinkSigner(SecretKeys.load(keys_file(tmp_path, OLD)), SystemClock())
    before = int(time.time())
    token, cookie = signer.sign_each((Purpose.CSRF, Purpose.BROWSER), "a-browser-id")
    after = int(time.time())
    for purpose, signed in ((Purpose.CSRF, token), (Purpose.BROWSER, cookie)):
        assert before <= signer.issued_at(purpose, signed).timestamp() <= after
        assert signer.verify(purpose, signed, timedelta(minutes=1)) == "a-browser-id"
