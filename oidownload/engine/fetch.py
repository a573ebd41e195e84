"""HTTP: the session factory, and `fetch_body`: one URL → its body bytes or a failure
status, with retries (full-jitter exponential backoff, Retry-After honoured), a
per-host limiter that backs off on 429/503 (and, with --per-host auto, grows while
growing pays), and a total deadline per image.

aiohttp's exceptions become statuses here and nowhere else.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import os
import random
import re
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from yarl import URL

from oidownload.core.config import NetConfig
from oidownload.core.records import Status, clean_text, is_final
from oidownload.engine.body import BodyWriter
from oidownload.engine.limits import HostHeld, HostLimiter, Reservation
from oidownload.engine.metrics import Metrics
from oidownload.inputs.urls import url_problem

PLACEHOLDER_MARK = "photo_unavailable"
# An original whose Content-Length is wrong is rejected unread, unless it is this
# small: then it may be the placeholder served in its place, which the worker
# recognises by its MD5 (and reports as unavailable rather than a size mismatch).
PLACEHOLDER_MAX_BYTES = 64 * 1024
# Reserved against the byte budget when a response has no Content-Length (and the
# row no OriginalSize), and the step by which such a body's reservation grows.
GUESS_BYTES = 512 * 1024
GROW_BYTES = 512 * 1024


@dataclass(slots=True)
class Fetched:
    body: BodyWriter  # the caller hands it off to the pool, then closes it
    http_status: int
    held: Reservation  # this body's bytes in the budget; the caller releases it
    etag: str | None = None
    encoding: str = ""  # the Content-Encoding of a body fetched as stored, still encoded


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


Reserve = Callable[[int], Awaitable[Reservation]]
NewWriter = Callable[[int], BodyWriter]  # called with the bytes the body is charged


def default_agent(task: str | None = None) -> str:
    """oidownload/VERSION, and the cluster task when there is one, so an origin's logs can
    tell the tasks apart. A --user-agent is sent exactly as given, as curl -A does."""
    from oidownload import __version__

    return f"oidownload/{__version__}" + (f" shard/{task}" if task else "")


def make_session(net: NetConfig) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=net.concurrency,
        limit_per_host=net.host_ceiling,
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
        headers={"User-Agent": net.user_agent or default_agent(), "Accept-Encoding": "identity", **dict(net.headers)},
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


# Retry-After beyond this is absurd; capping it keeps every later sum finite.
_RETRY_AFTER_CEILING = 10.0**9
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() is true for '²'
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait, from either form of Retry-After (delta-seconds or HTTP-date),
    at most _RETRY_AFTER_CEILING; None when the value is neither."""
    if not value:
        return None
    value = value.strip()
    if _DIGITS.fullmatch(value):
        return float(value) if len(value) < 10 else min(float(value), _RETRY_AFTER_CEILING)
    try:
        when = email.utils.parsedate_to_datetime(value)
        seconds = when.timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
    return min(max(0.0, seconds), _RETRY_AFTER_CEILING)


def _url(url: str) -> URL:
    # Open Images URLs are plain ASCII and were validated by the reader: skip yarl's
    # re-quoting (measurable at hundreds of requests a second).
    return URL(url, encoded=True) if url.isascii() and "%" not in url else URL(url)


def _status_failure(resp: aiohttp.ClientResponse) -> Failure | None:
    code = resp.status
    if 200 <= code < 300:
        return None
    reason = clean_text(resp.reason or "", 200)
    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    if code == 429:
        return Failure(Status.HTTP_429, "429 Too Many Requests", code, retry_after)
    if code == 408:
        return Failure(Status.TIMEOUT, "408 Request Timeout", code)
    if code >= 500:
        return Failure(Status.HTTP_5XX, f"{code} {reason}".strip(), code, retry_after)
    if code >= 400:
        return Failure(Status.HTTP_4XX, f"{code} {reason}".strip(), code)
    return Failure(Status.BAD_REDIRECT, f"unexpected answer {code} {reason}".strip(), code)


def _redirect(current: URL, resp: aiohttp.ClientResponse, hops: int, net: NetConfig) -> URL | Failure:
    """Where a redirect answer points, checked by the reader's URL rule; or why it is
    not followed."""
    code = resp.status
    location = resp.headers.get("Location")
    if location is None:
        return Failure(Status.BAD_REDIRECT, f"{code} redirect without a Location", code)
    shown = clean_text(location, 200)
    if hops >= net.max_redirects:
        return Failure(Status.BAD_REDIRECT, f"more than {net.max_redirects} redirects (--max-redirects); "
                       f"the next was to {shown}", code)
    # The Location as sent is checked, not yarl's re-serialisation of it (which may drop
    # what is wrong: some versions turn port 0 into no port). A relative one keeps the
    # current host, already checked, and is checked once joined.
    absolute = f"{current.scheme}:{location}" if location.startswith("//") else location
    try:
        target = current.join(URL(location))
        text = absolute if _ABSOLUTE.match(absolute) else str(target)
    except (ValueError, UnicodeError):
        return Failure(Status.BAD_REDIRECT, f"redirect to {shown}, which is not a URL", code)
    why = url_problem(text)
    if why is not None:
        return Failure(Status.BAD_REDIRECT, f"redirect to a refused URL: {clean_text(text, 200)} {why}", code)
    return target


def _got(n: int, length: int | None) -> str:
    return f"{n} of {length} bytes" if length is not None else f"{n} bytes"


async def _read_capped(resp: aiohttp.ClientResponse, cap: int, writer: BodyWriter, held: Reservation) -> bool:
    """Streams the body into writer, growing its reservation as it goes (a body without
    Content-Length is charged as it arrives); False as soon as it passes the cap.
    readchunk hands over each buffered chunk as it is (readany would join them: a copy)."""
    content = resp.content
    while True:
        chunk, end_of_http_chunk = await content.readchunk()
        if not chunk:
            if end_of_http_chunk:
                continue
            return True
        size = writer.size + len(chunk)
        if size > cap:
            return False
        if size > held.size:
            await held.grow_to(min(cap, max(size, held.size + GROW_BYTES)))
        writer.write(chunk)


async def fetch_once(
    session: aiohttp.ClientSession,
    url: URL,
    *,
    expected_size: int | None,
    net: NetConfig,
    reserve: Reserve,
    new_writer: NewWriter,
    timeout: float,
    stored: bool = False,
) -> Fetched | Failure:
    """One request, following up to `net.max_redirects` redirects (each target checked
    like an input URL). Exceptions are mapped most specific first, because aiohttp's
    hierarchy nests them (a DNS error is a connector error is a connection error).
    `stored`: the body as the server stores it, even if it sends it with a
    Content-Encoding (a mirror's ETag is the MD5 of those bytes); it is decoded later."""
    held: Reservation | None = None
    writer: BodyWriter | None = None
    length: int | None = None
    hops = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                async with session.get(url, allow_redirects=False, proxy=proxy_for(url),
                                       auto_decompress=not stored) as resp:
                    if resp.status in _REDIRECTS:
                        target = _redirect(url, resp, hops, net)
                        if isinstance(target, Failure):
                            return target
                        if PLACEHOLDER_MARK in target.path:
                            return Failure(Status.UNAVAILABLE, f"redirected to {clean_text(str(target), 200)}",
                                           resp.status)
                        url, hops = target, hops + 1
                        continue
                    failure = _status_failure(resp)
                    if failure is not None:
                        return failure
                    length = resp.content_length
                    if (expected_size is not None and length is not None and length != expected_size
                            and length > PLACEHOLDER_MAX_BYTES):
                        return Failure(
                            Status.SIZE_MISMATCH,
                            f"Content-Length {length}, OriginalSize is {expected_size}",
                            resp.status,
                        )
                    if length is not None and length > net.max_body_bytes:
                        return Failure(Status.TOO_LARGE, f"Content-Length {length} over the cap of {net.max_body_bytes}",
                                       resp.status)
                    # Without a Content-Length, OriginalSize is a guess that may lie
                    # (999999999999999): never reserve more than the cap.
                    guess = length if length is not None else min(expected_size or GUESS_BYTES, net.max_body_bytes)
                    held = await reserve(guess)
                    writer = new_writer(guess)
                    # A body whose size is known is not read past it (a chunked original
                    # of OriginalSize 1000 is not read on to --max-body-mb), except that
                    # up to PLACEHOLDER_MAX_BYTES are read: the placeholder served in
                    # its place is told by its MD5.
                    known = max(expected_size, PLACEHOLDER_MAX_BYTES) if expected_size is not None else None
                    cap = net.max_body_bytes if known is None else min(net.max_body_bytes, known)
                    if not await _read_capped(resp, cap, writer, held):
                        if cap < net.max_body_bytes:
                            return Failure(Status.SIZE_MISMATCH, f"body longer than OriginalSize {expected_size} "
                                           f"(stopped reading after {writer.size} bytes)", resp.status)
                        return Failure(Status.TOO_LARGE, f"body over the cap of {net.max_body_bytes} bytes", resp.status)
                    encoding = resp.headers.get("Content-Encoding", "").strip() if stored else ""
                    result = Fetched(writer, resp.status, held, resp.headers.get("ETag"),
                                     "" if encoding.lower() == "identity" else encoding)
                    held, writer = None, None  # now owned by the result
                    return result
    except aiohttp.ConnectionTimeoutError:  # a TimeoutError too: must come first
        return Failure(Status.TIMEOUT, f"no connection within {net.connect_timeout:.0f}s")
    except aiohttp.ServerTimeoutError:
        got = f" (after {_got(writer.size, length)})" if writer is not None else ""
        return Failure(Status.TIMEOUT, f"no data for {net.read_timeout:.0f}s{got}")
    except TimeoutError:
        got = f" (after {_got(writer.size, length)})" if writer is not None else ""
        return Failure(Status.TIMEOUT, f"no complete answer within {timeout:.1f}s{got}")
    except aiohttp.ClientConnectorDNSError as exc:
        return Failure(Status.DNS, f"cannot resolve {clean_text(exc.host, 200)}")
    except aiohttp.ClientConnectorError as exc:
        err = exc.os_error
        why = os.strerror(err.errno) if err.errno else clean_text(str(err), 200)
        return Failure(Status.CONNECTION, f"cannot connect to {clean_text(exc.host, 200)}:{exc.port}: {why}")
    except aiohttp.ClientPayloadError as exc:
        got = _got(writer.size if writer is not None else 0, length)
        # aiohttp keeps the socket error only in the message (its __cause__ is the
        # length check), so a reset mid-body is told apart from a clean short close here.
        if _caused_by(exc, ConnectionResetError) or "ConnectionResetError" in str(exc):
            return Failure(Status.CONNECTION, f"connection reset after {got}")
        if length is None:
            return Failure(Status.TRUNCATED, f"body ended after {got}, before its last chunk")
        return Failure(Status.TRUNCATED, f"body ended after {got}")
    except aiohttp.ServerDisconnectedError:
        return Failure(Status.CONNECTION, "the server closed the connection without an answer")
    except (aiohttp.NonHttpUrlClientError, aiohttp.InvalidURL) as exc:
        return Failure(Status.BAD_REDIRECT if hops else Status.BAD_ROW, f"refused URL: {clean_text(str(exc), 200)}")
    except aiohttp.ClientError as exc:
        return Failure(Status.CONNECTION, clean_text(f"{type(exc).__name__}: {exc}"))
    except OSError as exc:
        return Failure(Status.CONNECTION, clean_text(f"{exc.strerror or type(exc).__name__}: {exc}"))
    except (ValueError, UnicodeError) as exc:
        # The URL rule should have refused it; yarl or the IDNA codec did instead.
        return Failure(Status.BAD_REDIRECT if hops else Status.BAD_ROW, clean_text(f"unusable URL: {exc}"))
    finally:
        if held is not None:
            held.release()
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
    new_writer: NewWriter,
    deadline: float,
    rng: random.Random,
    stored: bool = False,
    metrics: Metrics | None = None,
) -> Attempts:
    """Fetches url, retrying retryable failures until `net.retries` retries or the
    loop-time `deadline` is spent; final failures are returned at once. No wait (for
    the host, a slot, a backoff or Retry-After) outlasts the deadline: what cannot be
    done by then ends as a retryable failure at once, so the run goes on."""
    loop = asyncio.get_running_loop()
    why = url_problem(url)
    if why is not None:
        return Attempts(Failure(Status.BAD_ROW, f"URL {clean_text(url, 200)} {why}"), 0)
    try:
        parsed = _url(url)
        host = parsed.raw_host or ""
    except (ValueError, UnicodeError) as exc:
        return Attempts(Failure(Status.BAD_ROW, clean_text(f"URL {url[:200]} is unusable: {exc}")), 0)
    attempt = 0
    while True:
        attempt += 1
        if deadline - loop.time() <= 0:
            return Attempts(Failure(Status.TIMEOUT, "the image's total deadline passed"), attempt - 1)
        try:
            async with limiter.slot(host, deadline):
                sent = loop.time()
                left = deadline - sent
                result = await fetch_once(
                    session, parsed, expected_size=expected_size, net=net, reserve=reserve,
                    new_writer=new_writer, timeout=max(0.001, min(net.total_timeout, left)), stored=stored,
                )
                if metrics is not None:
                    metrics.request(host, result.http_status, loop.time() - sent)
        except HostHeld as held:
            status = Status.HTTP_429 if held.http_status == 429 else Status.HTTP_5XX
            return Attempts(Failure(status, f"not asked: the host asked for a pause of {held.seconds:.0f}s "
                                    f"(Retry-After with a {held.http_status}), past this image's deadline"), attempt - 1)
        except TimeoutError:
            return Attempts(Failure(Status.TIMEOUT, f"no free connection to {clean_text(host, 200)} "
                                    "before the image's deadline"), attempt - 1)
        if isinstance(result, Fetched):
            limiter.reward(host, loop.time() - sent)
            return Attempts(result, attempt)
        pause = result.retry_after
        if pause is not None and pause > net.retry_after_max:
            result.detail += f" (Retry-After {pause:.0f}s is past the {net.retry_after_max:.0f}s cap)"
        if result.http_status in (429, 503):
            # Capped before it holds the host: one answer cannot park a host for days.
            limiter.penalise(host, min(pause, net.retry_after_max) if pause else None, result.http_status, sent)
        elif limiter.auto and result.status in (Status.CONNECTION, Status.TIMEOUT):
            # A reset or a timeout may be a server shedding load: a grown host stops growing.
            limiter.penalise(host, sent_at=sent)
        if is_final(result.status) or attempt > net.retries:
            return Attempts(result, attempt)
        if pause is not None and pause > net.retry_after_max:
            return Attempts(result, attempt)
        delay = max(backoff(attempt, net, rng), pause or 0.0)
        if loop.time() + delay >= deadline:
            return Attempts(result, attempt)
        if metrics is not None:
            metrics.retry(result.status.value)
        await asyncio.sleep(delay)
