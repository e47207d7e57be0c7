"""URLs of the pages behind emailed links, always built from ``[http] public_url``.

Never from a request's Host header: a forged Host would otherwise put an
attacker's domain into the links we email.
"""

from __future__ import annotations


class Links:
    INVITATION = "/invitations/{token}"
    INVITATION_RENEWAL = "/invitations/renew/{token}"
    MANAGE = "/company/{token}"
    TRANSFER = "/transfers/{token}"
    SETUP = "/setup/{token}"
    PAYMENT = "/payment/{token}"
    PASSWORD_RESET = "/password-reset/{token}"
    NEW_ACCOUNT = "/accounts/new/{token}"

    def __init__(self, public_url: str) -> None:
        self._base = public_url.rstrip("/")

    def _url(self, pattern: str, token: str) -> str:
        return self._base + pattern.format(token=token)

    def invitation(self, token: str) -> str:
        return self._url(self.INVITATION, token)

    def invitation_renewal(self, token: str) -> str:
        return self._url(self.INVITATION_RENEWAL, token)

    def home(self) -> str:
        """The signed-in start page: the firm's client list."""
        return self._base + "/"

    def manage(self, token: str) -> str:
        return self._url(self.MANAGE, token)

    def transfer(self, token: str) -> str:
        return self._url(self.TRANSFER, token)

    def setup(self, token: str) -> str:
        return self._url(self.SETUP, token)

    def payment(self, token: str) -> str:
        return self._url(self.PAYMENT, token)

    def password_reset(self, token: str) -> str:
        return self._url(self.PASSWORD_RESET, token)

    def new_account(self, token: str) -> str:
        return self._url(self.NEW_ACCOUNT, token)
