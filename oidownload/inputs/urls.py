"""The URL rule every fetched URL passes (an input row's, a redirect's target): http(s),
a host that is a name or a canonical IP, no whitespace or control characters."""

from __future__ import annotations

import ipaddress
import re

from yarl import URL

# No whitespace or control characters anywhere; what else a URL must be is url_problem's.
_URL_RE = re.compile(r"(?i:https?)://[^/?#\s\x00-\x1f\x7f]+(?:[/?#][^\s\x00-\x1f\x7f]*)?")


# The usual shape, decided without a full parse: a plain ASCII host and an optional
# port. Anything else (IDN, IP literals, user info) is parsed by yarl.
_PLAIN_URL_RE = re.compile(r"(?i:https?)://([A-Za-z0-9._-]+(?::[0-9]{1,5})?)(?:[/?#][^\s\x00-\x1f\x7f]*)?")


_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"  # letters, digits, '-' and '_'; 1-63


_HOST_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


_BRACKETED_RE = re.compile(r"\[[^\[\]]+\](?::[0-9]*)?")


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"


_IPV4_RE = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")  # canonical: no leading zeros


# host[:port] already found good: a list names a few dozen, so most rows need no check.
_good_authorities: set[str] = set()


def _host_problem(host: str) -> str | None:
    """Why an ASCII (IDNA-encoded) host cannot be connected to, or None."""
    if host.replace(".", "").isdigit():
        # Digits and dots are an IPv4 address or nothing: aiohttp refuses the legacy
        # forms (127.1, 0177.0.0.1, 2130706433) that the resolver would still accept.
        return None if _IPV4_RE.fullmatch(host) else f"has host {host[:80]!r}, which is not a canonical IPv4 address"
    if len(host) > 253 or not _HOST_RE.fullmatch(host):
        return f"has host {host[:80]!r}, which is not a valid host name"
    return None


def url_problem(url: str) -> str | None:
    """Why a URL cannot be fetched, or None: it must be http(s), parse as aiohttp will
    parse it (yarl), with a port in 1-65535 and a host that is an IP address or a valid
    (IDNA-encodable) host name. The common shape is decided by a pattern alone."""
    plain = _PLAIN_URL_RE.fullmatch(url)
    if plain is not None:
        authority = plain.group(1)
        if authority in _good_authorities:
            return None
        host, _, port = authority.partition(":")
        if (not port or 0 < int(port) <= 65535) and "xn--" not in host.lower() and _host_problem(host) is None:
            if len(_good_authorities) > 4096:
                _good_authorities.clear()
            _good_authorities.add(authority)
            return None
    if not _URL_RE.fullmatch(url):
        return "is not an http(s) URL"
    # Brackets enclose an IPv6 literal and nothing else: some yarl versions read the
    # '::1' out of 'x[::1]'.
    hostport = re.split(r"[/?#]", url.split("://", 1)[1], maxsplit=1)[0].rpartition("@")[2]
    if ("[" in hostport or "]" in hostport) and not _BRACKETED_RE.fullmatch(hostport):
        return "has brackets around something other than the whole host"
    try:
        parsed = URL(url)
        host = parsed.raw_host  # IDNA-encoded (yarl raises on what cannot be)
        port = parsed.explicit_port
        _ = parsed.host  # decodes punycode labels: raises on a bad xn-- label
    except (ValueError, UnicodeError) as exc:
        return f"is not a valid URL ({exc})"
    if not host:
        return "has no host"
    if port is not None and not 0 < port <= 65535:
        return f"has port {port}, outside 1-65535"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        return _host_problem(host)
