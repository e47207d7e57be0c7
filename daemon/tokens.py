"""Signed links and addresses (itsdangerous).

A token proves that Cabinet issued it, for one purpose, recently enough. It
never proves that the link is still usable: the database row it names decides
that (state and nonce), so a replayed link is answered with the current state
and has no second effect.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import secrets
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, Signer, URLSafeSerializer, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode
from itsdangerous.timed import TimestampSigner
from itsdangerous.url_safe import URLSafeSerializerMixin

from daemon.clock import Clock, SystemClock
from daemon.config import Secret
from daemon.errors import ConfigError, LinkExpired, LinkTampered


class Purpose(Enum):
    """One salt per purpose: a token for one purpose never verifies for another."""

    INVITE = "invite"
    TRANSFER = "transfer"
    SETUP = "setup"
    PAYMENT = "payment"
    MANAGE = "manage"
    REPLY = "reply"
    BOUNCE = "bounce"
    SESSION = "session"
    CSRF = "csrf"
    BROWSER = "browser"
    PASSWORD_RESET = "password-reset"
    NEW_ACCOUNT = "new-account"

    # Members are singletons, equal only to themselves: hashed by identity, in C. Enum's own ``__hash__``
    # is a Python call, and signing or verifying a token looks its purpose up several times.
    __hash__ = object.__hash__

    @property
    def salt(self) -> str:
        return f"cabinet.{self.value}"


@dataclass(frozen=True)
class SecretKeys:
    """Signing keys, newest first: the newest signs, all of them verify (rotation)."""

    keys: tuple[Secret, ...]

    @classmethod
    def load(cls, path: Path) -> SecretKeys:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise ConfigError(f"secret keys file {path} does not exist; run `cabinet init` first") from None
        keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise ConfigError(f"secret keys file {path} holds no key")
        if any(len(key) < 32 for key in keys):
            raise ConfigError(f"every key in {path} must be at least 32 characters")
        # The file lists the newest key last (append to rotate); signing wants it first.
        return cls(tuple(Secret(key) for key in reversed(keys)))

    @staticmethod
    def generate() -> str:
        return secrets.token_urlsafe(48)


#: Purposes whose payload is a random id: incompressible, so zlib (which itsdangerous tries on every
#: payload, keeping the result only when shorter) never wins and is not tried.
RANDOM_PAYLOADS = frozenset({Purpose.CSRF, Purpose.BROWSER})


#: The longest address payload (JSON bytes) written without trying zlib. The refs Cabinet signs are 12 hex
#: digits (14 bytes): zlib shortens so short a payload only when it repeats itself ("000000000000"; none of
#: 200,000 random refs), and trying cost each email 10–70 µs, most of it zlib's 256 KB of state allocated
#: and cleared for 14 bytes (7% of an accept's instructions, for its two emails). Either form verifies:
#: itsdangerous reads a payload as it is unless it starts with ".".
SHORT_ADDRESS_PAYLOAD = 32


class _OneSignerSerializer(URLSafeTimedSerializer):
    """itsdangerous builds a new signer for every dumps and loads; one per salt does (a signer keeps
    only its settings, so threads can share it)."""

    def __init__(self, *args: Any, compress: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._signers: dict[Any, Any] = {}
        self._compress = compress

    def dump_payload(self, obj: Any) -> bytes:
        if self._compress:
            return super().dump_payload(obj)
        # What the URL-safe mixin writes when compression does not shorten the payload.
        return base64_encode(super(URLSafeSerializerMixin, self).dump_payload(obj))

    def make_signer(self, salt: str | bytes | None = None) -> Any:
        signer = self._signers.get(salt)
        if signer is None:
            signer = self._signers[salt] = super().make_signer(salt)
        return signer


def _keeping_keys(base: type[Signer]) -> type[Signer]:
    """``base`` keeping its derived keys, in a cache of the class made here (one per serializer).

    itsdangerous builds a signer per call and derives its key (a hash of salt and secret) each time;
    the derived keys depend only on what they hash, so they can be kept.
    """
    derived: dict[tuple[Any, ...], bytes] = {}

    # mypy takes no variable (``base``) as a base class; the class is made at run time from the one given.
    class KeptKeys(base):  # type: ignore[valid-type, misc]
        def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
            cache_key = (self.salt, self.key_derivation, self.digest_method, secret_key)
            key = derived.get(cache_key)
            if key is None:
                key = derived[cache_key] = super().derive_key(secret_key)
            return key

    return KeptKeys


def _int_to_bytes(number: int) -> bytes:
    """itsdangerous's ``int_to_bytes``: big-endian, no leading zero bytes."""
    return number.to_bytes((number.bit_length() + 7) // 8, "big")


#: Verified tokens a signer keeps (``LinkSigner.verify``): a few hundred bytes each.
VERIFIED_TOKENS = 4096

_UNKEPT = object()  # a payload verify decodes each time (not a string, a number or a flat list of them)
_SCALARS = (str, int, float, bool, type(None))


def _frozen(payload: Any) -> Any:
    """A payload as kept: a flat list as a tuple (each caller gets its own list back), a scalar as is."""
    if isinstance(payload, _SCALARS):
        return payload
    if isinstance(payload, list) and all(isinstance(item, _SCALARS) for item in payload):
        return tuple(payload)
    return _UNKEPT


def _thawed(kept: Any) -> Any:
    return list(kept) if isinstance(kept, tuple) else kept


class _KeyedSha1:
    """HMAC-SHA1 under one key (RFC 2104), its inner and outer hashes keyed once: a signature is two
    copies of them, in C. ``hmac.HMAC.copy`` wraps the same in Python objects on every signature, and a
    one-shot ``hmac.digest`` looks the digest up in OpenSSL each time (twice the cost of either)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        block = (hashlib.sha1(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
        self._inner = hashlib.sha1(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha1(bytes(b ^ 0x5C for b in block))

    def mac(self, value: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(value)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def _mac(keyed: _KeyedSha1, value: bytes) -> bytes:
    return keyed.mac(value)


_URL_SAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URL_SAFE = bytes.maketrans(b"-_", b"+/")


def _b64(data: bytes) -> bytes:
    """itsdangerous's ``base64_encode`` (URL-safe, unpadded) of bytes, without its checks and copies."""
    return binascii.b2a_base64(data, newline=False).translate(_URL_SAFE).rstrip(b"=")


def _unb64(data: bytes) -> bytes:
    """itsdangerous's ``base64_decode`` of bytes (padded, then ``base64.urlsafe_b64decode``: the same
    non-strict ``binascii`` decoding) without its four Python layers; raises ``binascii.Error`` where it
    raises ``BadData``."""
    return binascii.a2b_base64((data + b"=" * (-len(data) % 4)).translate(_FROM_URL_SAFE))


_from_json = json.JSONDecoder().decode  # ``json.loads``'s own decoder, without its checks


class LinkSigner:
    """Signs and verifies tokens for every purpose, with a controllable clock."""

    def __init__(self, keys: SecretKeys, clock: Clock) -> None:
        self._keys = keys
        self._clock = clock
        self._serializers = {purpose: self._serializer(purpose) for purpose in Purpose}
        self._address_serializers = {purpose: self._address_serializer(purpose) for purpose in Purpose}
        # Per purpose, newest key first (the newest signs, each verifies), an HMAC keyed with what
        # itsdangerous's signer derives ("django-concat": sha1 of salt, "signer" and the secret).
        self._macs = {
            purpose: tuple(
                _KeyedSha1(hashlib.sha1(purpose.salt.encode() + b"signer" + key.reveal().encode()).digest())
                for key in keys.keys
            )
            for purpose in Purpose
        }
        # The system clock's seconds read without a datetime (a test's clock is asked, as everywhere).
        self._seconds = time.time if isinstance(clock, SystemClock) else None
        self._compact = json.JSONEncoder(separators=(",", ":"))  # itsdangerous's compact JSON, built once
        # What itsdangerous's serializer writes for any payload (non-ASCII kept as UTF-8), for addresses.
        self._address_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
        self._verified: dict[tuple[Purpose, str], tuple[Any, int, bytes]] = {}
        self._last_stamp: tuple[int, bytes] = (-1, b"")  # (seconds, its encoded part): ``_stamp``

    def _serializer(self, purpose: Purpose) -> URLSafeTimedSerializer:
        clock = self._clock

        # A base class computed by a call (``_keeping_keys``), which mypy does not take.
        class _ClockSigner(_keeping_keys(TimestampSigner)):  # type: ignore[misc]
            def get_timestamp(self) -> int:
                return int(clock.now().timestamp())

        # itsdangerous signs with the last key and verifies with all of them.
        ordered = [key.reveal() for key in reversed(self._keys.keys)]
        # hashlib.sha1 rather than itsdangerous's default (a Python function returning the same sha1):
        # given OpenSSL's own constructor, hmac computes the MAC in C instead of in pure Python. Same
        # bytes, so tokens already issued still verify.
        return _OneSignerSerializer(ordered, salt=purpose.salt, signer=_ClockSigner,
                                    signer_kwargs={"digest_method": hashlib.sha1},
                                    compress=purpose not in RANDOM_PAYLOADS)

    # sign and verify write and read itsdangerous's URL-safe timed format byte for byte
    # (``payload.timestamp.signature``, each part URL-safe base64, the signature HMAC-SHA1 over the first
    # two) with a kept keyed HMAC: itsdangerous's own layers (a signer, ``hmac.new``, the key derivation, the
    # checks around them) cost more than the MAC. The payload's encoding is still
    # itsdangerous's (``dump_payload`` / ``load_payload``); ``inspect`` still goes through it whole.

    def sign(self, purpose: Purpose, payload: Any) -> str:
        return self.sign_each((purpose,), payload)[0]

    def sign_each(self, purposes: tuple[Purpose, ...], payload: Any) -> list[str]:
        """``sign`` of one payload for each of ``purposes`` (a new browser's CSRF token and its cookie
        sign the same id): the payload encoded and the time read once for all of them."""
        stamp = self._stamp(self._timestamp())
        random_body = None
        tokens = []
        for purpose in purposes:
            if purpose in RANDOM_PAYLOADS:  # never compressed: what ``_OneSignerSerializer.dump_payload`` writes
                if random_body is None:
                    random_body = _b64(self._compact.encode(payload).encode())
                body = random_body
            else:
                body = self._serializers[purpose].dump_payload(payload)
            value = body + stamp
            tokens.append((value + b"." + _b64(_mac(self._macs[purpose][0], value))).decode("ascii"))
        return tokens

    def _stamp(self, seconds: int) -> bytes:
        """A token's ``.timestamp`` part for ``seconds``, written once per second (every new visitor's
        page signs two tokens)."""
        kept = self._last_stamp
        if kept[0] != seconds:
            kept = self._last_stamp = (seconds, b"." + _b64(_int_to_bytes(seconds)))
        return kept[1]

    def verify(self, purpose: Purpose, token: str, max_age: timedelta | None) -> Any:
        """Return the payload, or raise ``LinkTampered`` / ``LinkExpired``.

        A token whose signature checked is kept with its payload and time of issue (``_verified``): what
        a token says never changes, only its age, which is checked on every use. A link opened again, a
        browser's cookie on its next page, skip the HMAC and the decoding."""
        known = self._verified.get((purpose, token))
        if known is None:
            known = self._check(purpose, token)
            if known[0] is not _UNKEPT:
                if len(self._verified) >= VERIFIED_TOKENS:
                    self._verified.clear()  # bounded; the hot tokens come back in a few requests
                self._verified[(purpose, token)] = known
        kept, issued, body = known
        payload = self._payload(purpose, body) if kept is _UNKEPT else _thawed(kept)
        if max_age is not None:
            age = self._timestamp() - issued
            if age > int(max_age.total_seconds()) or age < 0:
                raise LinkExpired("link.expired", payload)
        return payload

    def _check(self, purpose: Purpose, token: str) -> tuple[Any, int, bytes]:
        """(the payload frozen for keeping, or ``_UNKEPT``; its time of issue; its encoded body), or
        ``LinkTampered``."""
        signed = token.encode("utf-8")
        value, dot, encoded = signed.rpartition(b".")
        if not dot or not self._signed_by_us(purpose, value, encoded):
            raise LinkTampered("link.invalid")
        body, dot, stamp = value.rpartition(b".")
        if not dot:
            raise LinkTampered("link.invalid")
        try:
            # itsdangerous's ``bytes_to_int``: big-endian, at most 8 bytes (more is its struct's error).
            issued = _unb64(stamp)
            if len(issued) > 8:
                raise ValueError("a timestamp of more than 8 bytes")
        except Exception:  # noqa: BLE001 - as itsdangerous: a malformed timestamp is a bad signature
            raise LinkTampered("link.invalid") from None
        return _frozen(self._payload(purpose, body)), int.from_bytes(issued, "big"), body

    def _payload(self, purpose: Purpose, body: bytes) -> Any:
        """The serializer's ``load_payload`` of ``body``: a plain body (every link Cabinet signs: zlib never
        shortens a link's ids) decoded here, in C but for one call; a compressed one, or one this does not
        read, by the serializer itself, which decodes it or raises its ``BadPayload``."""
        if not body.startswith(b"."):
            try:
                return _from_json(_unb64(body).decode("utf-8"))
            except Exception:  # noqa: BLE001 - read again below, which raises itsdangerous's own error
                pass
        return self._serializers[purpose].load_payload(body)

    def _signed_by_us(self, purpose: Purpose, value: bytes, encoded: bytes) -> bool:
        try:
            signature = _unb64(encoded)
        except Exception:  # noqa: BLE001 - itsdangerous reads an undecodable signature as a wrong one
            return False
        return any(hmac.compare_digest(signature, _mac(keyed, value)) for keyed in self._macs[purpose])

    def _timestamp(self) -> int:
        if self._seconds is not None:
            return int(self._seconds())
        return int(self._clock.now().timestamp())

    def inspect(self, purpose: Purpose, token: str) -> tuple[Any, datetime]:
        """The payload and when the token was issued, whatever its age (support's `link explain`).

        The signature is still checked: a forged or truncated token raises ``LinkTampered``.
        """
        try:
            payload, issued = self._serializers[purpose].loads(token, max_age=None, return_timestamp=True)
        except BadSignature:
            raise LinkTampered("link.invalid") from None
        return payload, issued

    def issued_at(self, purpose: Purpose, token: str) -> datetime:
        return self.inspect(purpose, token)[1]

    def sign_address(self, purpose: Purpose, ref: str) -> str:
        """A short signed reference for an email address's local part (reply+…, bounce+…).

        No timestamp: a local part has at most 64 characters, and a bounce may
        arrive days later. The outbox row the reference names decides the rest.
        """
        # ``URLSafeSerializer.dumps``'s bytes (its compact JSON, zlib only when it is shorter and the
        # payload not short: SHORT_ADDRESS_PAYLOAD, URL-safe base64, the django-concat key's HMAC) written
        # directly: every queued email signs its bounce+ address and the worker its reply+ one, and
        # itsdangerous's Python layers were three quarters of that.
        payload = self._address_json.encode(ref).encode()
        body = _b64(payload)
        if len(payload) > SHORT_ADDRESS_PAYLOAD:
            compressed = zlib.compress(payload)
            if len(compressed) < len(payload) - 1:
                body = b"." + _b64(compressed)
        return (body + b"." + _b64(_mac(self._macs[purpose][0], body))).decode("ascii")

    def verify_address(self, purpose: Purpose, token: str) -> str:
        try:
            ref = self._address_serializers[purpose].loads(token)
        except BadSignature:
            raise LinkTampered("address.not_ours") from None
        if not isinstance(ref, str):
            raise LinkTampered("address.not_ours")
        return ref

    def _address_serializer(self, purpose: Purpose) -> URLSafeSerializer:
        # Built once per purpose, its derived keys kept, as ``_serializer``: every queued email signs
        # its bounce+ address and the worker its reply+ one (a serializer and a key derivation each).
        ordered = [key.reveal() for key in reversed(self._keys.keys)]
        return URLSafeSerializer(ordered, salt=purpose.salt, signer=_keeping_keys(Signer))

    def nonce(self) -> str:
        return secrets.token_urlsafe(12)
