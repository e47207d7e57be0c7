"""URLs of the pages behind emailed links, always built from ``[http] public_url``.

Never from a request's Host header: a forged Host would otherwise put an
attacker's domain into the links we email.
"""

from __future__ import annotations


class Links:
    INVITATION = "/invitations/{token}"
    INVITATION_RENEWAL = "/invitations/renew/{token}"

    def __init__(self, public_url: str) -> None:
        self._base = public_url.rstrip("/")

    def invitation(self, token: str) -> str:
        return self._base + self.INVITATION.format(token=token)

    def invitation_renewal(self, token: str) -> str:
        return self._base + self.INVITATION_RENEWAL.format(token=token)

    def home(self) -> str:
        return self._base + "/"
