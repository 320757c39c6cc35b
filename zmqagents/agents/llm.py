"""LLM agents over HTTP streaming APIs, with nothing but the standard library.

* :class:`OpenAIChatAgent` speaks the chat completions API (``POST {base_url}/chat/completions``
  with ``"stream": true``; server-sent ``data: {...}`` chunks ending ``data: [DONE]``). The base
  URL is configurable, so the same class serves OpenAI, Ollama (``http://127.0.0.1:11434/v1``),
  vLLM and llama.cpp's server.
* :class:`AnthropicAgent` speaks the Messages API (``POST {base_url}/v1/messages``, streamed as
  ``event:``/``data:`` pairs: message_start, content_block_delta, message_delta, message_stop).

Both stream each text delta as a progress chunk and return ``{"text": ..., "model": ...,
"stop": ..., "usage": ...}``. The HTTP/1.1 client below is deliberately small: one POST per
task on its own connection (``Connection: close``), TLS through :mod:`ssl` for https, chunked or
length-delimited or close-delimited bodies, and two clocks: ``connect_timeout`` for the
connection and ``idle_timeout`` for every read afterwards (an LLM may think for a while between
tokens, but a server that stops sending must not hold a task forever). The task's own deadline
arrives as cancellation and closes the connection. A connection that fails before any response,
and a 429 or 5xx answer, are tried again with backoff (``retries``, ``backoff``; Retry-After is
honoured). Behind a proxy, HTTPS_PROXY / HTTP_PROXY / ALL_PROXY and NO_PROXY are honoured as curl
and urllib read them: https through a CONNECT tunnel, http in absolute form; ``user:password@`` in
the proxy URL becomes Proxy-Authorization. Certificates are checked against the system's store
(SSL_CERT_FILE / SSL_CERT_DIR point elsewhere).

API keys are read from an environment variable at request time, are never stored on the
object, and are scrubbed from every error message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import ssl
import logging
import urllib.request
from typing import Any, AsyncIterator
from urllib.parse import unquote, urlsplit

from .base import AgentError, TaskContext, effective_timeout
from ..errors import InvalidArgument

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
MAX_ERROR_BODY = 64 * 1024
MAX_EVENT_BYTES = 1 << 20  # one server-sent event
MAX_TEXT = 900 * 1024  # characters of generated text kept: the output must fit a task result
RETRY_STATUS = frozenset({429, 500, 502, 503, 504, 529})  # rate limited, overloaded, or a passing server fault
MAX_RETRY_WAIT = 60.0  # seconds: the longest Retry-After or backoff honoured per attempt


class _Conn:
    """One HTTP/1.1 exchange: request written, status and headers read, body read in blocks."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, idle: float | None):
        self.reader = reader
        self.writer = writer
        self.idle = idle
        self.status = 0
        self.headers: dict[str, str] = {}

    async def _read(self, coro):
        try:
            return await asyncio.wait_for(coro, self.idle)
        except asyncio.TimeoutError:
            raise AgentError(f"the server sent nothing for {self.idle:g} s (idle timeout)") from None
        except ValueError:  # StreamReader.readline: a line beyond the reader's limit
            raise AgentError(f"the server sent a header or chunk line over {MAX_HEADER_BYTES} bytes") from None
        except OSError as exc:
            raise AgentError(f"the connection failed: {exc}") from None

    async def read_head(self) -> None:
        line = await self._read(self.reader.readline())
        parts = line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise AgentError(f"not an HTTP response: {line[:80]!r}")
        self.status = int(parts[1])
        size = len(line)
        while True:
            line = await self._read(self.reader.readline())
            size += len(line)
            if size > MAX_HEADER_BYTES:
                raise AgentError("response headers are too large")
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            self.headers[name.strip().lower()] = value.strip()

    async def body(self) -> AsyncIterator[bytes]:
        """The body in blocks, de-chunked."""
        reader = self.reader
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while True:
                line = await self._read(reader.readline())
                if not line:
                    raise AgentError("the response ended inside a chunk header")
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise AgentError(f"bad chunk size line {line[:40]!r}") from None
                if size == 0:
                    return
                left = size
                while left:
                    block = await self._read(reader.read(min(left, 65536)))
                    if not block:
                        raise AgentError("the response ended inside a chunk")
                    left -= len(block)
                    yield block
                await self._read(reader.readline())  # the CRLF after the chunk
        elif "content-length" in self.headers:
            try:
                left = int(self.headers["content-length"])
            except ValueError:
                raise AgentError("bad Content-Length") from None
            while left > 0:
                block = await self._read(reader.read(min(left, 65536)))
                if not block:
                    raise AgentError("the response ended before its Content-Length")
                left -= len(block)
                yield block
        else:
            while block := await self._read(reader.read(65536)):
                yield block

    def close(self) -> None:
        self.writer.close()


def _proxy_for(scheme: str, host: str) -> str | None:
    """The proxy URL the environment names for ``scheme`` (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY,
    lower or upper case), or None when there is none or NO_PROXY exempts ``host``."""
    proxies = urllib.request.getproxies_environment()
    if not proxies or urllib.request.proxy_bypass_environment(host, proxies):
        return None
    return proxies.get(scheme) or proxies.get("all")


class _Transient(AgentError):
    """The connection failed before any response: worth another attempt."""


async def _open(host: str, port: int, connect_timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.wait_for(asyncio.open_connection(host, port, limit=MAX_HEADER_BYTES), connect_timeout)
    except asyncio.TimeoutError:
        raise _Transient(f"could not connect to {host}:{port} within {connect_timeout:g} s") from None
    except OSError as exc:
        raise _Transient(f"could not connect to {host}:{port}: {exc}") from None


async def _through_proxy(proxy: str, host: str, port: int, connect_timeout: float
                         ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict[str, str]]:
    """A connection to ``proxy`` and the headers requests through it need (Proxy-Authorization
    from the proxy URL's user:password, RFC 7617)."""
    parts = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    if parts.scheme != "http" or not parts.hostname:
        raise AgentError(f"the proxy must be an http:// URL, got {parts.scheme or proxy!r}:// "
                         "(from HTTPS_PROXY/HTTP_PROXY/ALL_PROXY)")
    reader, writer = await _open(parts.hostname, parts.port or 80, connect_timeout)
    headers = {}
    if parts.username is not None:
        token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
        headers["Proxy-Authorization"] = f"Basic {token}"
    return reader, writer, headers


async def _post(url: str, headers: dict[str, str], payload: dict, *, connect_timeout: float,
                idle_timeout: float | None) -> _Conn:
    """POST ``payload`` as JSON and read the response head; the body is left to the caller.

    Honours the proxy environment variables as curl and urllib do: an https URL goes through an
    HTTP CONNECT tunnel (RFC 9110, 9.3.6) to the proxy, with TLS inside it to the origin; an http
    URL is sent to the proxy in absolute form.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AgentError(f"the base URL must be http:// or https://, got {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    authority = f"[{parts.hostname}]:{port}" if ":" in parts.hostname else f"{parts.hostname}:{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    proxy = _proxy_for(parts.scheme, parts.hostname)
    extra: dict[str, str] = {}
    if proxy is None:
        reader, writer = await _open(parts.hostname, port, connect_timeout)
    else:
        reader, writer, extra = await _through_proxy(proxy, parts.hostname, port, connect_timeout)
        if parts.scheme == "http":
            path = f"http://{host}{path}"  # absolute form: the proxy forwards it
    conn = _Conn(reader, writer, idle_timeout)
    try:
        if proxy is not None and parts.scheme == "https":
            tunnel = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"] + [f"{k}: {v}" for k, v in extra.items()]
            writer.write(("\r\n".join(tunnel) + "\r\n\r\n").encode())
            await conn._read(writer.drain())
            await conn.read_head()
            if conn.status != 200:
                raise AgentError(f"the proxy refused the tunnel to {authority}: HTTP {conn.status}")
            extra, conn.headers = {}, {}  # the proxy's credentials stay with the proxy
        if parts.scheme == "https":
            try:
                await asyncio.wait_for(writer.start_tls(ssl.create_default_context(), server_hostname=parts.hostname),
                                       connect_timeout)
            except asyncio.TimeoutError:
                raise AgentError(f"the TLS handshake with {host} took over {connect_timeout:g} s") from None
            except (OSError, ssl.SSLError) as exc:
                raise AgentError(f"the TLS handshake with {host} failed: {exc}") from None
        body = json.dumps(payload, ensure_ascii=False).encode()
        head = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
                "Accept: text/event-stream", f"Content-Length: {len(body)}", "Connection: close",
                "User-Agent: zmqagents"]
        head += [f"{k}: {v}" for k, v in {**extra, **headers}.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await conn._read(writer.drain())
        await conn.read_head()
    except OSError as exc:
        conn.close()
        raise _Transient(f"the connection to {host} failed: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn


async def _events(conn: _Conn) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events as (event name, data); the name is "message" when the server gives none."""
    pending = b""
    event, data = "", []
    size = 0
    async for block in conn.body():
        pending += block
        while True:
            nl = pending.find(b"\n")
            if nl < 0:
                if len(pending) > MAX_EVENT_BYTES:
                    raise AgentError(f"a server-sent line is longer than {MAX_EVENT_BYTES} bytes")
                break
            line, pending = pending[:nl].rstrip(b"\r").decode("utf-8", errors="replace"), pending[nl + 1:]
            if not line:
                if data:
                    yield event or "message", "\n".join(data)
                event, data, size = "", [], 0
                continue
            if line.startswith(":"):
                continue  # a comment (keep-alive)
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            size += len(value)
            if size > MAX_EVENT_BYTES:
                raise AgentError(f"a server-sent event is larger than {MAX_EVENT_BYTES} bytes")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
    if data:
        yield event or "message", "\n".join(data)


async def _error_text(conn: _Conn) -> str:
    """The message of an error response: the API's error.message when it is JSON, else the text."""
    raw = b""
    try:
        async for block in conn.body():
            raw += block
            if len(raw) > MAX_ERROR_BODY:
                break
    except AgentError:
        pass
    text = raw[:MAX_ERROR_BODY].decode("utf-8", errors="replace").strip()
    try:
        doc = json.loads(text)
        err = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(err, str):
            return err
    except ValueError:
        pass
    return text[:500] or "(no body)"


def _messages(value: Any) -> tuple[str | None, list[dict]]:
    """Task input -> (system prompt, chat messages).

    A string is one user message. An object may carry ``messages`` (a chat history of
    {role, content}), or ``prompt``/``text`` (one user message), and ``system``. Anything else
    is sent as its JSON text.
    """
    if isinstance(value, str):
        return None, [{"role": "user", "content": value}]
    if isinstance(value, dict):
        system = value.get("system")
        if system is not None and not isinstance(system, str):
            raise AgentError("input 'system' must be a string")
        if "messages" in value:
            msgs = value["messages"]
            if not isinstance(msgs, list) or not msgs or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in msgs):
                raise AgentError("input 'messages' must be a non-empty list of {role, content} strings")
            return system, [{"role": m["role"], "content": m["content"]} for m in msgs]
        for key in ("prompt", "text"):
            if isinstance(value.get(key), str):
                return system, [{"role": "user", "content": value[key]}]
    return None, [{"role": "user", "content": json.dumps(value, ensure_ascii=False)}]


class _HTTPAgent:
    name = "HTTP"

    def __init__(self, model: str, *, base_url: str, api_key_env: str | None, options: dict | None,
                 connect_timeout: float, idle_timeout: float | None, timeout: float | None, retries: int = 4,
                 backoff: float = 1.0):
        if not isinstance(retries, int) or not 0 <= retries <= 20 or not 0 <= backoff <= MAX_RETRY_WAIT:
            raise InvalidArgument(f"retries is 0..20 and backoff 0..{MAX_RETRY_WAIT:g} s")
        self.retries = retries
        self.backoff = backoff
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.options = dict(options or {})
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    def _key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def _scrub(self, text: str, key: str | None) -> str:
        return text.replace(key, "***") if key else text

    async def __call__(self, value: Any, ctx: TaskContext) -> Any:
        key = self._key()
        limit = effective_timeout(self.timeout, ctx.timeout)
        try:
            return await asyncio.wait_for(self._run(value, ctx, key), limit)
        except asyncio.TimeoutError:
            raise AgentError(f"{self.name} did not finish within {limit:g} s") from None
        except AgentError as exc:
            raise AgentError(self._scrub(str(exc), key)) from None

    async def _exchange(self, url: str, headers: dict, payload: dict) -> _Conn:
        """The response to the POST, once its status is 200.

        A connection that fails before a response, and a 429 or 5xx answer (RETRY_STATUS), are tried
        again up to ``retries`` times, waiting what the server's Retry-After (or retry-after-ms)
        asks, else ``backoff`` doubled per attempt with jitter, each wait at most MAX_RETRY_WAIT;
        the task's deadline bounds the whole. Nothing is retried once the body is being read:
        progress has been streamed by then.
        """
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            delay = min(MAX_RETRY_WAIT, self.backoff * 2 ** attempt) * random.uniform(0.5, 1.0)
            try:
                conn = await _post(url, headers, payload, connect_timeout=self.connect_timeout,
                                   idle_timeout=self.idle_timeout)
            except _Transient as exc:
                if last:
                    raise AgentError(f"{exc}" + (f" ({attempt + 1} attempts)" if attempt else "")) from None
                log.info("%s: %s; trying again in %.2f s", self.name, exc, delay)
                await asyncio.sleep(delay)
                continue
            if conn.status == 200:
                return conn
            try:
                message = await _error_text(conn)
            finally:
                conn.close()
            if conn.status not in RETRY_STATUS or last:
                raise AgentError(f"{self.name} answered HTTP {conn.status}: {message}"
                                 + (f" ({attempt + 1} attempts)" if attempt else ""))
            wait = _retry_after(conn.headers)
            delay = delay if wait is None else wait
            log.info("%s answered HTTP %d; trying again in %.2f s", self.name, conn.status, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")


def _retry_after(headers: dict[str, str]) -> float | None:
    """Seconds the server asks to wait (retry-after-ms, or Retry-After in seconds), capped; None if
    it says nothing usable (an HTTP date is not used: clocks differ)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            value = float(headers[name]) * scale
        except (KeyError, ValueError):
            continue
        if value >= 0 and value == value:
            return min(value, MAX_RETRY_WAIT)
    return None


class OpenAIChatAgent(_HTTPAgent):
    """The chat completions API, streamed. ``options`` go into the request (temperature, max_tokens, …)."""

    name = "chat completions API"

    def __init__(self, model: str, *, base_url: str = "https://api.openai.com/v1", api_key_env: str | None = "OPENAI_API_KEY",
                 options: dict | None = None, connect_timeout: float = 10.0, idle_timeout: float | None = 120.0,
                 timeout: float | None = 600.0, retries: int = 4, backoff: float = 1.0):
        super().__init__(model, base_url=base_url, api_key_env=api_key_env, options=options,
                         connect_timeout=connect_timeout, idle_timeout=idle_timeout, timeout=timeout,
                         retries=retries, backoff=backoff)

    async def _run(self, value: Any, ctx: TaskContext, key: str | None) -> dict:
        system, messages = _messages(value)
        if system is not None:
            messages = [{"role": "system", "content": system}, *messages]
        payload = {**self.options, "model": self.model, "messages": messages, "stream": True}
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        conn = await self._exchange(self.base_url + "/chat/completions", headers, payload)
        text: list[str] = []
        size = 0
        result: dict[str, Any] = {"model": self.model, "stop": None}
        done = False
        try:
            async for _, data in _events(conn):
                if data.strip() == "[DONE]":
                    done = True
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise AgentError(f"the server sent a chunk that is not JSON: {data[:80]!r}") from None
                if not isinstance(chunk, dict):
                    continue
                if "error" in chunk:
                    err = chunk["error"]
                    raise AgentError(f"{self.name} error: {err.get('message') if isinstance(err, dict) else err}")
                if isinstance(chunk.get("model"), str):
                    result["model"] = chunk["model"]
                if isinstance(chunk.get("usage"), dict):
                    result["usage"] = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    if not isinstance(choice, dict):
                        continue
                    delta = choice.get("delta")
                    piece = delta.get("content") if isinstance(delta, dict) else None
                    if isinstance(piece, str) and piece:
                        size += len(piece)
                        if size > MAX_TEXT:
                            raise AgentError(f"the model wrote more than {MAX_TEXT} characters")
                        text.append(piece)
                        ctx.progress(piece)
                    if choice.get("finish_reason"):
                        result["stop"] = choice["finish_reason"]
        finally:
            conn.close()
        if not done:
            raise AgentError("the stream ended before data: [DONE]")
        result["text"] = "".join(text)
        return result


class AnthropicAgent(_HTTPAgent):
    """The Messages API, streamed. ``max_tokens`` is required by the API (default 1024)."""

    name = "Messages API"

    def __init__(self, model: str, *, base_url: str = "https://api.anthropic.com", api_key_env: str | None = "ANTHROPIC_API_KEY",
                 max_tokens: int = 1024, options: dict | None = None, version: str = "2023-06-01",
                 connect_timeout: float = 10.0, idle_timeout: float | None = 120.0, timeout: float | None = 600.0,
                 retries: int = 4, backoff: float = 1.0):
        super().__init__(model, base_url=base_url, api_key_env=api_key_env, options=options,
                         connect_timeout=connect_timeout, idle_timeout=idle_timeout, timeout=timeout,
                         retries=retries, backoff=backoff)
        self.max_tokens = max_tokens
        self.version = version

    async def _run(self, value: Any, ctx: TaskContext, key: str | None) -> dict:
        system, messages = _messages(value)
        payload: dict[str, Any] = {"max_tokens": self.max_tokens, **self.options, "model": self.model,
                                   "messages": messages, "stream": True}
        if system is not None:
            payload["system"] = system
        headers = {"anthropic-version": self.version}
        if key:
            headers["x-api-key"] = key
        conn = await self._exchange(self.base_url + "/v1/messages", headers, payload)
        text: list[str] = []
        size = 0
        result: dict[str, Any] = {"model": self.model, "stop": None}
        usage: dict[str, Any] = {}
        done = False
        try:
            async for event, data in _events(conn):
                try:
                    doc = json.loads(data)
                except ValueError:
                    raise AgentError(f"the server sent an event that is not JSON: {data[:80]!r}") from None
                if not isinstance(doc, dict):
                    continue
                kind = doc.get("type", event)
                if kind == "error":
                    err = doc.get("error")
                    raise AgentError(f"{self.name} error: {err.get('message') if isinstance(err, dict) else err}")
                if kind == "message_start" and isinstance(doc.get("message"), dict):
                    msg = doc["message"]
                    if isinstance(msg.get("model"), str):
                        result["model"] = msg["model"]
                    if isinstance(msg.get("usage"), dict):
                        usage.update(msg["usage"])
                elif kind == "content_block_delta":
                    delta = doc.get("delta")
                    piece = delta.get("text") if isinstance(delta, dict) and delta.get("type") == "text_delta" else None
                    if isinstance(piece, str) and piece:
                        size += len(piece)
                        if size > MAX_TEXT:
                            raise AgentError(f"the model wrote more than {MAX_TEXT} characters")
                        text.append(piece)
                        ctx.progress(piece)
                elif kind == "message_delta":
                    delta = doc.get("delta")
                    if isinstance(delta, dict) and delta.get("stop_reason"):
                        result["stop"] = delta["stop_reason"]
                    if isinstance(doc.get("usage"), dict):
                        usage.update(doc["usage"])
                elif kind == "message_stop":
                    done = True
                    break
        finally:
            conn.close()
        if not done:
            raise AgentError("the stream ended before message_stop")
        if usage:
            result["usage"] = usage
        result["text"] = "".join(text)
        return result
