"""HTTP: the session factory, and `fetch_body`: one URL → its body bytes or a failure
status, with retries (full-jitter exponential backoff, Retry-After honoured), a
per-host limiter that backs off on 429/503, and a total deadline per image.

aiohttp's exceptions become statuses here and nowhere else.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import random
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from yarl import URL

from .body import BodyWriter
from .config import NetConfig
from .limits import HostLimiter
from .records import Status, is_final

PLACEHOLDER_MARK = "photo_unavailable"
# An original whose Content-Length is wrong is rejected unread, unless it is this
# small: then it may be the placeholder served in its place, which the worker
# recognises by its MD5 (and reports as unavailable rather than a size mismatch).
PLACEHOLDER_MAX_BYTES = 64 * 1024
# Reserved against the byte budget when a response has no Content-Length.
GUESS_BYTES = 512 * 1024


@dataclass(slots=True)
class Fetched:
    body: BodyWriter  # the caller hands it off to the pool, then closes it
    http_status: int
    reserved: int  # bytes held in the budget for this body, released by the caller
    etag: str | None = None


@dataclass(slots=True)
class Failure:
    status: Status
    detail: str
    http_status: int | None = None
    retry_after: float | None = None


@dataclass(slots=True)
class Attempts:
    """What fetch_body returns: the last result and how many requests it took."""

    result: Fetched | Failure
    attempts: int


Reserve = Callable[[int], Awaitable[None]]
Release = Callable[[int], None]
NewWriter = Callable[[], BodyWriter]


def make_session(net: NetConfig) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=net.concurrency,
        limit_per_host=net.per_host,
        use_dns_cache=True,
        ttl_dns_cache=300,
    )
    timeout = aiohttp.ClientTimeout(
        total=net.total_timeout,
        sock_connect=net.connect_timeout,
        sock_read=net.read_timeout,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        # Identity: a compressed transfer would not match OriginalSize or the MD5.
        headers={"User-Agent": net.user_agent, "Accept-Encoding": "identity", **dict(net.headers)},
        cookie_jar=aiohttp.DummyCookieJar(),
        read_bufsize=2**18,
        # Proxies come from proxy_for(), once per host: aiohttp's trust_env would also read
        # ~/.netrc on a thread for every request (measured: a tenth of the main process).
        trust_env=False,
    )


@functools.lru_cache(maxsize=4096)
def _proxy(scheme: str, host: str, port: int | None) -> str | None:
    proxies = urllib.request.getproxies_environment()
    if not proxies or urllib.request.proxy_bypass(host if port is None else f"{host}:{port}"):
        return None
    return proxies.get(scheme) or proxies.get("all")


def proxy_for(url: URL) -> str | None:
    """The proxy for a URL from HTTP_PROXY / HTTPS_PROXY / ALL_PROXY / NO_PROXY (either
    case), as curl and requests read them: cluster nodes often reach the internet only
    through a proxy."""
    return _proxy(url.scheme, url.host or "", url.explicit_port)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait, from either form of Retry-After (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _url(url: str) -> URL:
    # Open Images URLs are plain ASCII and were validated by the reader: skip yarl's
    # re-quoting (measurable at hundreds of requests a second).
    return URL(url, encoded=True) if url.isascii() and "%" not in url else URL(url)


def _status_failure(resp: aiohttp.ClientResponse) -> Failure | None:
    code = resp.status
    if 200 <= code < 300:
        return None
    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    if code == 429:
        return Failure(Status.HTTP_429, "429 Too Many Requests", code, retry_after)
    if code == 408:
        return Failure(Status.TIMEOUT, "408 Request Timeout", code)
    if code >= 500:
        return Failure(Status.HTTP_5XX, f"{code} {resp.reason or ''}".strip(), code, retry_after)
    if code >= 400:
        return Failure(Status.HTTP_4XX, f"{code} {resp.reason or ''}".strip(), code)
    return Failure(Status.BAD_REDIRECT, f"unexpected {code} without a usable Location", code)


def _is_placeholder(resp: aiohttp.ClientResponse) -> bool:
    return any(PLACEHOLDER_MARK in r.url.path for r in (*resp.history, resp))


async def _read_capped(resp: aiohttp.ClientResponse, cap: int, writer: BodyWriter) -> bool:
    """Streams the body into writer; False as soon as it passes the cap. readchunk
    hands over each buffered chunk as it is (readany would join them: a copy)."""
    content = resp.content
    while True:
        chunk, end_of_http_chunk = await content.readchunk()
        if not chunk:
            if end_of_http_chunk:
                continue
            return True
        if writer.size + len(chunk) > cap:
            return False
        writer.write(chunk)


async def fetch_once(
    session: aiohttp.ClientSession,
    url: URL,
    *,
    expected_size: int | None,
    net: NetConfig,
    reserve: Reserve,
    release: Release,
    new_writer: NewWriter,
    timeout: float,
) -> Fetched | Failure:
    """One request. Exceptions are mapped most specific first, because aiohttp's
    hierarchy nests them (a DNS error is a connector error is a connection error)."""
    reserved = 0
    writer: BodyWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            async with session.get(url, max_redirects=net.max_redirects, proxy=proxy_for(url)) as resp:
                if resp.history and _is_placeholder(resp):
                    return Failure(Status.UNAVAILABLE, f"redirected to {resp.url}", resp.status)
                failure = _status_failure(resp)
                if failure is not None:
                    return failure
                length = resp.content_length
                if expected_size is not None and length is not None and length != expected_size and length > PLACEHOLDER_MAX_BYTES:
                    return Failure(
                        Status.SIZE_MISMATCH,
                        f"Content-Length {length}, OriginalSize is {expected_size}",
                        resp.status,
                    )
                if length is not None and length > net.max_body_bytes:
                    return Failure(Status.TOO_LARGE, f"Content-Length {length} over the cap of {net.max_body_bytes}", resp.status)
                reserved = length if length is not None else (expected_size or GUESS_BYTES)
                await reserve(reserved)
                writer = new_writer()
                if not await _read_capped(resp, net.max_body_bytes, writer):
                    return Failure(Status.TOO_LARGE, f"body over the cap of {net.max_body_bytes} bytes", resp.status)
                result = Fetched(writer, resp.status, reserved, resp.headers.get("ETag"))
                reserved, writer = 0, None  # now owned by the result
                return result
    except aiohttp.ServerTimeoutError as exc:  # a TimeoutError too: must come first
        return Failure(Status.TIMEOUT, f"{exc or 'read timeout'}")
    except TimeoutError:
        return Failure(Status.TIMEOUT, f"no complete answer within {timeout:.1f}s")
    except aiohttp.TooManyRedirects:
        return Failure(Status.BAD_REDIRECT, f"more than {net.max_redirects} redirects")
    except (aiohttp.NonHttpUrlRedirectClientError, aiohttp.InvalidUrlRedirectClientError) as exc:
        return Failure(Status.BAD_REDIRECT, f"redirect to a refused URL: {exc}")
    except (aiohttp.NonHttpUrlClientError, aiohttp.InvalidURL) as exc:
        return Failure(Status.BAD_ROW, f"refused URL: {exc}")
    except aiohttp.ClientConnectorDNSError as exc:
        return Failure(Status.DNS, f"cannot resolve {exc.host}")
    except aiohttp.ClientPayloadError as exc:
        # aiohttp keeps the socket error only in the message (its __cause__ is the
        # length check), so a reset mid-body is told apart from a clean short close here.
        if _caused_by(exc, ConnectionResetError) or "ConnectionResetError" in str(exc):
            return Failure(Status.CONNECTION, f"connection reset mid-body: {exc}")
        return Failure(Status.TRUNCATED, f"body cut short: {exc}")
    except aiohttp.ServerDisconnectedError:
        return Failure(Status.CONNECTION, "server closed the connection")
    except aiohttp.ClientError as exc:
        return Failure(Status.CONNECTION, f"{type(exc).__name__}: {exc}")
    except OSError as exc:
        return Failure(Status.CONNECTION, f"{type(exc).__name__}: {exc}")
    finally:
        if reserved:
            release(reserved)
        if writer is not None:
            writer.close()


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def backoff(attempt: int, net: NetConfig, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))] (AWS's analysis
    shows it spreads retries best when many clients back off at once)."""
    return rng.uniform(0.0, min(net.backoff_max, net.backoff_base * 2 ** (attempt - 1)))


async def fetch_body(
    session: aiohttp.ClientSession,
    url: str,
    *,
    expected_size: int | None,
    net: NetConfig,
    limiter: HostLimiter,
    reserve: Reserve,
    release: Release,
    new_writer: NewWriter,
    deadline: float,
    rng: random.Random,
) -> Attempts:
    """Fetches url, retrying retryable failures until `net.retries` retries or the
    loop-time `deadline` is spent; final failures are returned at once."""
    loop = asyncio.get_running_loop()
    parsed = _url(url)
    host = parsed.host or ""
    attempt = 0
    while True:
        attempt += 1
        left = deadline - loop.time()
        if left <= 0:
            return Attempts(Failure(Status.TIMEOUT, "the image's total deadline passed"), attempt - 1)
        async with limiter.slot(host):
            left = deadline - loop.time()
            result = await fetch_once(
                session, parsed, expected_size=expected_size, net=net,
                reserve=reserve, release=release, new_writer=new_writer,
                timeout=max(0.001, min(net.total_timeout, left)),
            )
        if isinstance(result, Fetched):
            limiter.reward(host)
            return Attempts(result, attempt)
        if result.http_status in (429, 503):
            limiter.penalise(host, result.retry_after)
        if is_final(result.status) or attempt > net.retries:
            return Attempts(result, attempt)
        delay = backoff(attempt, net, rng)
        if result.retry_after is not None:
            if result.retry_after > net.retry_after_max:
                result.detail += f" (Retry-After {result.retry_after:.0f}s is past --retry-after-max)"
                return Attempts(result, attempt)
            delay = max(delay, result.retry_after)
        if loop.time() + delay >= deadline:
            return Attempts(result, attempt)
        await asyncio.sleep(delay)
