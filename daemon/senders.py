"""Whether a message really comes from the address in its From: header.

From: is typed by whoever sends the message, so it proves nothing by itself.
Two things can prove it, as the config chooses:

- ``Authentication-Results`` (RFC 8601) written by an MTA the config trusts
  (by authserv-id) saying DKIM passed for the From: domain or a parent of it,
  or DMARC passed for exactly that domain. Headers with other authserv-ids
  are anyone's words and are ignored. Only the headers *above the topmost
  ``Received:``* count (RFC 8601 §5, §7.1): Cabinet sits behind one trusted
  MTA, which adds its ``Received:`` at the top and whose milters add their
  results above it; everything below that line came from the sender, who can
  type any authserv-id. The trusted MTA should still remove copies of its own
  header from incoming mail (Postfix milters, rspamd and Exchange do).
- Cabinet's own DKIM verification (dkimpy), when ``dkim_verify`` is set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr
from typing import Any

import authres

# DKIM verification looks public keys up in DNS, which can be slow or down: a message is
# worth at most this many signatures and this many seconds of lookups, then it is unproven.
MAX_DKIM_SIGNATURES = 3
DKIM_TIME_BUDGET = 10.0


@dataclass(frozen=True)
class SenderVerdict:
    proven: bool
    method: str  # "dkim" or "dmarc" (trusted Authentication-Results), "dkim-verified" (Cabinet), "none"
    detail: str


def prove_sender(
    raw: bytes,
    message: EmailMessage,
    claimed_from: str,
    trusted_authserv_ids: Sequence[str],
    dkim_verify: bool,
    dnsfunc: Callable[..., Any] | None = None,
    max_signatures: int = MAX_DKIM_SIGNATURES,
    time_budget: float = DKIM_TIME_BUDGET,
) -> SenderVerdict:
    """Whether ``claimed_from`` is proven to be the sender of ``message`` (whose bytes are ``raw``).

    ``dnsfunc`` is passed to dkimpy to look up public keys (dkimpy's own DNS
    resolver when None). Call it outside any database transaction: lookups
    take time. At most ``max_signatures`` signatures are tried, within
    ``time_budget`` seconds of lookups in all.
    """
    claimed = parseaddr(claimed_from)[1].lower()
    senders = [address.lower() for _, address in getaddresses([str(v) for v in message.get_all("From", [])])]
    # Authentication vouches for the From: header; a different or second address there is unproven.
    if senders != [claimed] or "@" not in claimed:
        return SenderVerdict(False, "none", f"From: {', '.join(senders) or 'missing'} is not {claimed or 'an address'}")
    domain = _domain(claimed)
    trusted = {authserv_id.lower() for authserv_id in trusted_authserv_ids}
    for header in added_by_trusted_mta(message):
        verdict = _from_authentication_results(str(header), trusted, domain)
        if verdict:
            return verdict
    if dkim_verify:
        # dkimpy (and dnspython under it) only where DKIM is verified: most commands never need it.
        import dkim

        verdict = _verify_dkim(raw, domain, _budgeted(dnsfunc or dkim.get_txt, time_budget), max_signatures)
        if verdict:
            return verdict
    return SenderVerdict(False, "none", f"no trusted DKIM or DMARC pass for {domain}")


def added_by_trusted_mta(message: EmailMessage) -> list[str]:
    """The Authentication-Results headers above the topmost ``Received:`` (all of them if there is none).

    The MTA in front of Cabinet prepends its ``Received:``; results its milters
    add go above it. A header below that line was in the message as the sender
    handed it over, whatever authserv-id it names. A message with no
    ``Received:`` at all did not come through an MTA (a test, or a local
    injection): its headers are taken as they are.
    """
    found: list[str] = []
    for name, value in message.items():
        name = name.lower()
        if name == "received":
            break
        if name == "authentication-results":
            found.append(str(value))
    return found


def _from_authentication_results(value: str, trusted: set[str], domain: str) -> SenderVerdict | None:
    try:
        header = authres.AuthenticationResultsHeader.parse_value(" ".join(value.split()))
    except authres.AuthResError:
        return None  # unreadable: it proves nothing, and the other headers still count
    authserv_id = str(header.authserv_id).lower()
    if authserv_id not in trusted:
        return None
    for result in header.results:
        if str(result.result).lower() != "pass":
            continue
        properties = {f"{p.type}.{p.name}".lower(): str(p.value).lower() for p in result.properties}
        method = str(result.method).lower()
        if method == "dkim":
            # header.i may be "@sub.example.com" or "user@example.com"; header.d is the signing domain.
            signer = properties.get("header.d") or _domain(properties.get("header.i", ""))
            if signer and _aligned(signer, domain):
                return SenderVerdict(True, "dkim", f"dkim=pass header.d={signer} from {authserv_id}")
        elif method == "dmarc" and properties.get("header.from", "").rstrip(".") == domain:
            return SenderVerdict(True, "dmarc", f"dmarc=pass header.from={domain} from {authserv_id}")
    return None


def _budgeted(dnsfunc: Callable[..., Any], budget: float) -> Callable[..., Any]:
    """``dnsfunc`` whose lookups together never take more than ``budget`` seconds."""
    deadline = time.monotonic() + budget

    def lookup(name: Any, timeout: float = 5) -> Any:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            import dkim

            raise dkim.DnsTimeoutError("DKIM lookup time budget spent")
        return dnsfunc(name, timeout=min(timeout, remaining))

    return lookup


def _verify_dkim(raw: bytes, domain: str, dnsfunc: Callable[..., Any], max_signatures: int) -> SenderVerdict | None:
    import dkim

    lookup = {"dnsfunc": dnsfunc}
    try:
        signatures = sum(1 for name, _ in dkim.DKIM(raw).headers if name.lower() == b"dkim-signature")
    except dkim.DKIMException:
        return None  # a message dkimpy cannot even split into headers and body
    for index in range(min(signatures, max_signatures)):
        signed = dkim.DKIM(raw)
        try:
            if not signed.verify(idx=index, **lookup):
                continue
        except dkim.DKIMException:
            continue  # a malformed signature proves nothing; another one may
        signer = signed.domain.decode("ascii", "replace").lower()
        # A signature that leaves From: out does not vouch for it; one with l= lets anyone append text.
        if b"from" not in signed.include_headers or b"l" in signed.signature_fields:
            continue
        if _aligned(signer, domain):
            return SenderVerdict(True, "dkim-verified", f"DKIM signature d={signer} verified by Cabinet")
    return None


def _aligned(signer: str, domain: str) -> bool:
    """DMARC's relaxed alignment: same domain, or a parent of it.

    Without the public-suffix list a bare TLD (d=ca) is refused at least; a
    deeper public suffix could only sign if its registry did.
    """
    signer = signer.rstrip(".")
    return "." in signer and (domain == signer or domain.endswith("." + signer))


def _domain(address: str) -> str:
    return address.rpartition("@")[2].rstrip(".").lower()
