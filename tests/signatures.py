"""A forged copy of a signed token, for tests that must see it refused.

Changing a token's last characters does not always change its signature: an
itsdangerous signature is base64 without padding, and the last character of a
20-byte HMAC carries two bits the decoder drops, so ``…xw``, ``…xx``, ``…xy``
and ``…xz`` are one signature. A test that tampered that way passed the forgery
about once in a thousand runs (CI, 3 December). The signature's first character
carries six whole bits: changing it always changes the signature.
"""

from __future__ import annotations


def forged(token: str) -> str:
    """``token`` (or a link ending in one) with its signature's first character changed."""
    head, dot, signature = token.rpartition(".")
    if not dot or not signature:
        raise ValueError(f"{token!r} ends in no signature")
    first = "B" if signature[0] == "A" else "A"
    return f"{head}.{first}{signature[1:]}"
