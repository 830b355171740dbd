"""The transport under every connector's httpx client: aiohttp's connections and its C parser.

httpx keeps the API the connectors are written against (requests, responses, timeouts, its
exception tree); httpx-aiohttp hands the wire to aiohttp, which takes about a third of the CPU
httpcore and h11 take per exchange on this project's machines (`python -m tests.bench
http_stack`: 340-450 us against 1,000-1,330 us a request), and every mirror write is two or
three such exchanges.

What this module adds to httpx-aiohttp's transport is the meaning of a failure. Its own table
reports a connection that was never made as a `ConnectTimeout` and lets some aiohttp errors
through untranslated; here each aiohttp error becomes the httpx error that says what happened,
because `HttpClient.request` repeats a write only when it surely never left
(`httpx.ConnectError`), and everything it does not know is a bug with a traceback.

The proxy the environment names for the platform's URL (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY,
NO_PROXY: what httpx honoured with its own transport) is read once, when the client is made:
aiohttp's `trust_env` would look up proxies and `.netrc` again on a thread for every request,
which cost more CPU than the parser saves. The session keeps no cookies (httpx has its jar), and
never sends a request twice by itself.

An answer that declares its length, up to `read_whole_up_to` bytes and not encoded, is read
whole here, in one call, and handed up already read: nearly every platform answer is a task of
a few hundred bytes, and passing it up chunk by chunk through the layers of async generators
between aiohttp and `HttpClient` (httpx-aiohttp's stream, httpx's raw, decoded and bounded
iterators) cost more CPU than reading it. Longer, encoded or undeclared answers stream as they
arrive, so `HttpClient` still bounds them as it reads.
"""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator
from typing import NoReturn

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

# Most specific first: the first class an error is an instance of names its httpx error.
_TRANSLATED: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientProxyConnectionError, httpx.ProxyError),
    (aiohttp.ClientHttpProxyError, httpx.ProxyError),
    (aiohttp.ClientConnectorError, httpx.ConnectError),  # no connection: nothing was sent
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),  # an answer that is not HTTP
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.ClientConnectionError, httpx.NetworkError),  # reset, broken pipe
    (aiohttp.ClientError, httpx.TransportError),
)


def translate(exc: BaseException) -> httpx.TransportError | None:
    """The httpx error for an aiohttp one (or for httpx-aiohttp's own translation of it), or
    None for anything else."""
    cause = exc.__cause__ if isinstance(exc, httpx.TransportError) else exc
    for source, target in _TRANSLATED:
        if isinstance(cause, source):
            return target(str(cause) or type(cause).__name__)
    return None


def _raise_translated(exc: BaseException) -> NoReturn:
    """Raise the httpx error for `exc` (from it), or `exc` itself when it has none."""
    mapped = translate(exc)
    if mapped is None:
        raise exc
    raise mapped from exc


class _Body(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except (httpx.TransportError, aiohttp.ClientError) as exc:
            _raise_translated(exc)

    async def aclose(self) -> None:
        await self._inner.aclose()


DEFAULT_LIMITS = httpx.Limits()  # httpx's own: 100 connections, idle ones closed after 5 s
# The longest answer read whole by the transport (see above); a listing page is longer and streams.
DEFAULT_READ_WHOLE_UP_TO = 64 * 1024


def environment_proxy(url: str) -> httpx.Proxy | None:
    """The proxy the environment names for `url`, or None (none named, or NO_PROXY covers it)."""
    target = httpx.URL(url)
    if not target.host or urllib.request.proxy_bypass(target.host):
        return None
    proxies = urllib.request.getproxies()
    found = proxies.get(target.scheme) or proxies.get("all")
    return httpx.Proxy(found) if found else None


class Transport(AiohttpTransport):
    def __init__(
        self,
        url: str,
        *,
        limits: httpx.Limits = DEFAULT_LIMITS,
        read_whole_up_to: int = DEFAULT_READ_WHOLE_UP_TO,
    ) -> None:
        super().__init__(limits=limits, proxy=environment_proxy(url))
        self.read_whole_up_to = read_whole_up_to

    def get_client(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self.limits.max_connections or 0,
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
        )
        session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        # aiohttp sends a GET, PUT or DELETE a second time when its connection drops, even after
        # the platform may have applied it. A write must never go out late (over an edit made
        # since its read); whether to try again is HttpClient's decision, and the outbox's.
        # No public setting says so (aiohttp 3.14); the attribute is checked by a test.
        session._retry_connection = False
        return session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except (httpx.TransportError, aiohttp.ClientError) as exc:
            _raise_translated(exc)
        whole = await self._whole(response)
        if whole is not None:
            return whole
        response.stream = _Body(response.stream)
        return response

    async def _whole(self, response: httpx.Response) -> httpx.Response | None:
        """`response` read whole, or None to stream it: see the module's docstring."""
        declared = response.headers.get("content-length")
        inner = getattr(response.stream, "_aiohttp_response", None)  # httpx-aiohttp's, checked by a test
        if (
            inner is None
            or declared is None
            or not declared.isdigit()
            or int(declared) > self.read_whole_up_to
            or response.headers.get("content-encoding", "identity").lower() != "identity"
        ):
            return None
        try:
            body = await inner.read()
        except BaseException as exc:
            inner.close()  # a connection left half-read (cut short, a deadline, a stop) is not reused
            _raise_translated(exc)
        # Built as httpx builds an answer given its body: read, with its own headers kept.
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            content=body,
            request=response.request,
            extensions=response.extensions,
        )
