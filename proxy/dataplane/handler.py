"""The data plane: every request on the main listener goes through :class:`DataPlane`.

Validated endpoints: read the body (up to the limit), classify, decide by the
effective mode (docs/reference.md#modes), count, log, then forward, rewrite
or reject. Everything else is streamed through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from aiohttp import HttpVersion11, web

from proxy.catalog.canary import is_enforced
from proxy.catalog.stages import Catalog, Endpoint, Mode
from proxy.dataplane import body as bodies
from proxy.dataplane.forwarding import Body, Upstream, UpstreamError, request_headers
from proxy.dataplane.reading import BodyTimeout, ClientGone, read_limited, stream_body
from proxy.dataplane.requestid import accept_request_id, new_request_id
from proxy.dataplane.routing import Route, Router, body_overrides, is_ops, split_target
from proxy.modes.view import ExemptionRule, ModeView
from proxy.shared.clients import Client, ClientResolver, parse_address, within
from proxy.shared.logs import FloodGuard, log_event, safe_text
from proxy.shared.metrics import PASSTHROUGH, Metrics
from proxy.shared.problems import problem

log = logging.getLogger("stagegate.requests")

MAX_ERRORS: Final = 100
MAX_CONSUMER: Final = 128  # characters of a consumer name in a log line
MAX_FORWARDED: Final = 256  # characters of an ignored X-Forwarded-For in a log line
OFF_LOOP_BYTES: Final = 64 * 1024  # bodies from this size are inspected and rewritten in a worker thread
T = TypeVar("T")
Preread = tuple[bytes, bool]  # a body read before routing: (bytes, True if larger than --max-body-bytes)
ALLOW: Final = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
_TITLES: Final = {
    400: "Request body is not readable JSON",
    413: "Request body is too large to validate",
    415: "Unsupported content type or encoding",
    422: "Stage value not allowed by contract v3.4",
}


@dataclass(slots=True)
class Verdict:
    """What the validator decided for one request."""

    endpoint: Endpoint
    mode: Mode
    inspection: bodies.Inspection
    raw: bytes
    rest_pending: bool  # the body was over the limit and its rest is still unread
    exemption: str | None = None  # the exemption that turned enforce into warn for this request

    @property
    def rejected(self) -> bool:
        return self.mode == "enforce" and self.inspection.result in ("unknown", "invalid", "unreadable")


def _error_value(value: object) -> object:
    """The offending value as a problem detail echoes it: strings truncated; numbers only where exact.

    orjson reads integers beyond 64 bits as floats, so a float of 2**53 or more may not be what was sent.
    """
    if isinstance(value, str):
        return safe_text(value)
    if value is None or isinstance(value, bool) or (isinstance(value, int) and abs(value) < 2**63):
        return value
    if isinstance(value, float) and abs(value) < 2**53:
        return value
    return f"<{bodies.type_name(value)}>"


def _rightmost(chain: str | None, limit: int) -> str | None:
    """An X-Forwarded-For chain for a log line: its right end (the hops the audit walks first), at most ``limit``
    characters after an ellipsis."""
    if chain is None:
        return None
    return safe_text(chain if len(chain) <= limit else "…" + chain[-limit:], limit + 1)


@dataclass(frozen=True, slots=True)
class Who:
    """Who sent a request (proxy.shared.clients): the client, the consumer a trusted gateway named, and the raw
    ``X-Forwarded-For`` (logged when it was not believed)."""

    client: Client
    consumer: str | None
    forwarded: str | None


@dataclass(slots=True)
class Call:
    """One request on its way through the data plane: the request, its id (accepted or made here), the catalog
    state it was routed with (a reload never changes one in flight), and the endpoint its duration counts for."""

    request: web.BaseRequest
    request_id: str
    id_header: str
    state: CatalogState
    label: str = PASSTHROUGH
    who: Who | None = None  # who sent it, once asked (DataPlane.who)

    def echo(self, **more: str) -> dict[str, str]:
        """Headers every answer to this request carries: its id (and ``more``)."""
        return {self.id_header: self.request_id, **more}


@dataclass(frozen=True, slots=True)
class CatalogState:
    """Everything the request path derives from one catalog; swapped whole on a reload."""

    catalog: Catalog
    router: Router
    inspectors: dict[str, bodies.Inspector]

    @classmethod
    def of(cls, catalog: Catalog) -> CatalogState:
        return cls(catalog, Router(catalog), {e.name: bodies.Inspector(catalog, e) for e in catalog.endpoints})


class DataPlane:
    """The main listener's single handler."""

    def __init__(self, catalog: Catalog, modes: ModeView, metrics: Metrics, upstream: Upstream, *, id_header: str,
                 max_body_bytes: int, warn_log_per_s: int, body_timeout_s: float = 30.0,
                 canary_key_header: str | None = None, clients: ClientResolver | None = None,
                 consumer_header: str | None = None) -> None:
        self.state = CatalogState.of(catalog)  # read once per request: a reload never changes one in flight
        self.modes = modes
        self.metrics = metrics
        self.upstream = upstream
        self.id_header = id_header
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.canary_key_header = canary_key_header  # buckets by this header's value when present (docs/canary.md)
        self.clients = clients or ClientResolver()  # who sent a request (--trusted-proxies); resolved when needed
        self.consumer_header = consumer_header
        self.flood = FloodGuard(log, warn_log_per_s)
        self.in_flight: set[asyncio.Task[Any]] = set()  # requests being handled: a forced shutdown cancels them
        # Large bodies are inspected here, one at a time: with one busy thread the event loop waits at most one
        # GIL switch interval (5 ms) for its turn; with several it would wait for each of them in turn.
        self.inspect_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stagegate-inspect")

    def use_catalog(self, catalog: Catalog) -> None:
        """Serve ``catalog`` from the next request on (built before the swap: one assignment)."""
        self.use_state(CatalogState.of(catalog))

    def use_state(self, state: CatalogState) -> None:
        """Serve a catalog state built elsewhere (a reload builds it in a thread) from the next request on."""
        self.state = state

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Route one request: ops paths 404, validated endpoints, or pass-through."""
        task = asyncio.current_task()
        if task is not None:
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
        started = time.perf_counter()
        request_id = accept_request_id(request.headers.get(self.id_header)) or new_request_id()
        call = Call(request, request_id, self.id_header, self.state)
        if request.method == "CONNECT" or "Expect" in request.headers:  # a coroutine only for those (~0.3 µs)
            refused = await self._refuse_early(call)  # answered here, never timed: no endpoint, no upstream
            if refused is not None:
                return refused
        path, query = split_target(request.raw_path)
        if is_ops(path):
            return problem(404, "not-found", "Not Found", "/_ops is served on the admin listener only",
                           request_id=request_id, headers=call.echo())
        try:
            return await self._route(call, path, query)
        except UpstreamError as exc:
            return self._upstream_problem(call, exc)
        except ClientGone as exc:
            log_event(log, logging.INFO, "client_disconnected", request_id=request_id, error=str(exc))
            return web.Response(status=400)
        except BodyTimeout as exc:
            return await self._body_timeout(call, str(exc))
        finally:
            self.metrics.request_children[call.label].observe(time.perf_counter() - started)

    async def _route(self, call: Call, path: str, query: str) -> web.StreamResponse:
        """Pass-through or validated, by the route (and a body's ``_method`` where it may override)."""
        route = call.state.router.route(call.request, path, query)
        preread = None
        if route.body_may_override:
            route, preread = await self._body_override(call, path, query, route)
        if route.endpoint is None:
            return await self._pass_through(call, route, preread)
        call.label = route.endpoint.name
        return await self._validated(call, route, route.endpoint, preread)

    async def _refuse_early(self, call: Call) -> web.StreamResponse | None:
        """CONNECT (never forwarded: a tunnel has no framing the upstream would agree on) and Expect."""
        request = call.request
        if request.method == "CONNECT":
            response = problem(405, "method-not-allowed", "Method Not Allowed", "CONNECT is never forwarded",
                               request_id=call.request_id, headers=call.echo(Allow=ALLOW))
            response.force_close()  # what follows on this connection is not a request we could frame
            return response
        expect = request.headers.get("Expect")
        if expect is not None:  # what aiohttp's router would do; the low-level server leaves it to us
            if expect.lower() != "100-continue":
                return problem(417, "expectation-failed", "Expectation Failed", "only 100-continue is supported",
                               request_id=call.request_id, headers=call.echo())
            if request.version >= HttpVersion11:
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    async def _body_override(self, call: Call, path: str, query: str, route: Route) -> tuple[Route, Preread | None]:
        """A POST that ``_method`` in its body could route elsewhere: read the body (up to the limit), then route
        by what it names; a body that cannot be read for it is ``ambiguous_method``."""
        request, router = call.request, call.state.router
        if not request.body_exists:
            return route, None
        raw, too_large = await read_limited(request, self.max_body_bytes, self.body_timeout_s)
        found = await self._off_loop_if_large(raw, body_overrides, request.headers.get("Content-Type"), raw, too_large)
        if found is None:
            route = router.unreadable_override(request, path, query)
        elif found:
            route = router.route(request, path, query, also=found)
        return route, (raw, too_large)

    async def _pass_through(self, call: Call, route: Route, preread: Preread | None = None) -> web.StreamResponse:
        request = call.request
        data: Body
        if preread is None:
            data = stream_body(request, self.body_timeout_s) if request.body_exists else None
        else:
            data = stream_body(request, self.body_timeout_s, preread[0]) if preread[1] else preread[0]
        buffered = preread is not None and not preread[1]
        headers = request_headers(request, self.id_header, call.request_id, buffered=buffered)
        return await self.upstream.forward(request, route.target, headers, data, call.echo())

    async def _validated(self, call: Call, route: Route, endpoint: Endpoint,
                         preread: Preread | None = None) -> web.StreamResponse:
        request = call.request
        verdict = await self._decide(call, endpoint, route.unreadable, preread)
        self._account(call, verdict)
        result = verdict.inspection.result
        exempt = "; exempt" if verdict.exemption is not None else ""
        extra = call.echo(**{"X-Stage-Validation": f"mode={verdict.mode}; result={result}{exempt}"})
        if verdict.rejected:
            return self._reject(call, verdict, extra)
        data: Body
        if verdict.rest_pending:
            data = stream_body(request, self.body_timeout_s, verdict.raw)
        elif verdict.mode == "enforce" and result == "alias":
            data = await self._off_loop_if_large(verdict.raw, bodies.rewrite, verdict.raw, endpoint,
                                                 verdict.inspection)
        else:
            data = verdict.raw
        headers = request_headers(request, self.id_header, call.request_id, buffered=not verdict.rest_pending)
        return await self.upstream.forward(request, route.target, headers, data, extra)

    async def _off_loop_if_large(self, raw: bytes, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` here for small bodies; in the inspection thread for large ones, so that a body of
        --max-body-bytes (tens to hundreds of ms of CPU) never stalls the other requests on this event loop."""
        if len(raw) < OFF_LOOP_BYTES:
            return work(*args)
        return await asyncio.get_running_loop().run_in_executor(self.inspect_pool, functools.partial(work, *args))

    def effective_mode(self, endpoint: str, request_id: str, canary_key: str | None = None) -> Mode:
        """The mode this request is handled in: a canary below 100 % enforces only its share (docs/canary.md)."""
        mode, percent = self.modes.lookup(endpoint)
        if mode != "enforce" or percent >= 100:
            return mode
        return "enforce" if is_enforced(canary_key or request_id, percent) else "warn"

    async def _decide(self, call: Call, endpoint: Endpoint, route_problem: str | None,
                      preread: Preread | None) -> Verdict:
        request = call.request
        key = request.headers.get(self.canary_key_header) if self.canary_key_header else None
        mode = self.effective_mode(endpoint.name, call.request_id, key)
        exemption = None
        if mode == "enforce" and (rules := self.modes.exempt.get(endpoint.name)):
            exemption = self._exemption(call, rules)
            if exemption is not None:
                mode = "warn"  # this consumer has more time: forwarded unchanged, logged, counted
        reason = route_problem or bodies.media_problem(request.headers.get("Content-Type"),
                                                       request.headers.get("Content-Encoding"))
        if reason is not None and mode == "enforce":
            # Nothing to read: the verdict is already known from the headers.
            return Verdict(endpoint, mode, bodies.unreadable(reason), b"", False)
        if preread is None:
            preread = await read_limited(request, self.max_body_bytes, self.body_timeout_s)
        raw, too_large = preread
        started = time.perf_counter()
        if too_large:
            inspection = bodies.unreadable("too_large")
        elif reason is not None:
            inspection = bodies.unreadable(reason)
        else:
            inspection = await self._off_loop_if_large(raw, call.state.inspectors[endpoint.name].inspect, raw)
        self.metrics.validator_children[endpoint.name].observe(time.perf_counter() - started)
        return Verdict(endpoint, mode, inspection, raw, too_large, exemption)

    def _exemption(self, call: Call, rules: tuple[ExemptionRule, ...]) -> str | None:
        """The id of the first live exemption that names this request's consumer or holds its client address."""
        who = self.who(call)
        address = parse_address(who.client.ip) if any(rule.network is not None for rule in rules) else None
        now = time.time()
        for rule in rules:
            if rule.until_s <= now:
                continue  # ended by itself; the next refresh drops it
            if rule.consumer is not None and rule.consumer == who.consumer:
                return rule.id
            if rule.network is not None and address is not None and address in rule.network \
                    and not within(address, self.clients.trusted):  # a trusted hop could have written it
                return rule.id
        return None

    def _account(self, call: Call, verdict: Verdict) -> None:
        name, mode, inspection = verdict.endpoint.name, verdict.mode, verdict.inspection
        self.metrics.validation_children[(name, mode, inspection.result)].inc()
        if verdict.rejected:
            reason = inspection.reason or inspection.result
            self.metrics.rejection_children[(name, reason)].inc()
        if verdict.exemption is not None:
            self.metrics.exempted_children[(name, inspection.result)].inc()
        catalog = call.state.catalog
        if catalog.temporary and inspection.alias_values:  # which temporary aliases are still in use
            for value, times in inspection.alias_values.items():
                if key := catalog.temporary_key(value):
                    self.metrics.temporary_alias_used(key, times)
        if mode == "off" or inspection.result in ("canonical", "absent"):
            return
        if self.flood.allow((name, inspection.result)):
            self._log_verdict(call, verdict)

    def _log_verdict(self, call: Call, verdict: Verdict) -> None:
        request, inspection = call.request, verdict.inspection
        worst = next((f for f in inspection.findings if f.result == inspection.result), None)
        action = "rejected" if verdict.rejected else "normalized" if verdict.mode == "enforce" else "forwarded"
        log_event(
            log, logging.WARNING, "stage_validation",
            request_id=call.request_id, endpoint=verdict.endpoint.name, mode=verdict.mode, result=inspection.result,
            action=action, reason=inspection.reason, pointer=worst.pointer if worst else None,
            value=safe_text(worst.value) if worst and worst.leaf else None,
            normalized=worst.normalized if worst else None,
            offending=inspection.count(inspection.result) or None,
            **self.identity(call), user_agent=safe_text(request.headers.get("User-Agent", "")),
            exemption=verdict.exemption,
        )

    def who(self, call: Call) -> Who:
        """Who sent the request (worked out once per request, and only when asked: a log line, an exemption)."""
        if call.who is None:
            request = call.request
            headers = request.headers
            forwarded = ",".join(headers.getall("X-Forwarded-For")) if "X-Forwarded-For" in headers else None
            consumer = None
            if self.consumer_header and self.consumer_header in headers and self.clients.trusts(request.remote):
                named = headers.getall(self.consumer_header)
                # one line or none: a gateway that appends instead of overwriting leaves the client's line first
                consumer = named[0] if len(named) == 1 else None
            call.who = Who(self.clients.resolve(request.remote, forwarded), consumer, forwarded)
        return call.who

    def identity(self, call: Call) -> dict[str, str | None]:
        """Who sent the request, as log lines carry it: ``client_ip`` (behind trusted proxies, the forwarded
        client), ``consumer`` (the gateway's header, from a trusted peer only) and, when the request carried
        ``X-Forwarded-For`` that was not believed, ``forwarded_for`` (so the consumer audit can say so)."""
        who = self.who(call)
        return {"client_ip": who.client.ip, "consumer": safe_text(who.consumer, MAX_CONSUMER) if who.consumer else None,
                "forwarded_for": _rightmost(who.forwarded, MAX_FORWARDED) if who.client.forwarded_ignored else None}

    def _reject(self, call: Call, verdict: Verdict, headers: dict[str, str]) -> web.Response:
        inspection = verdict.inspection
        status = inspection.status
        bad = [f for f in inspection.findings if f.result in ("unknown", "invalid")]
        total = inspection.count("unknown", "invalid")  # every one, not only those kept with pointers
        errors = [{"pointer": f.pointer, "value": _error_value(f.value), "result": f.result,
                   **({"detail": f.detail} if f.detail else {})} for f in bad[:MAX_ERRORS]]
        if status == 422:
            detail = f"{total} value(s) at {verdict.endpoint.field!r} are not canonical stages"
        else:
            detail = f"the body could not be validated: {inspection.reason}"
        extra: dict[str, object] = {"endpoint": verdict.endpoint.name, "allowed": list(call.state.catalog.canonical),
                                    "errors": errors}
        if total > len(errors):
            extra["errors_truncated"] = total - len(errors)
        if inspection.reason:
            extra["reason"] = inspection.reason
        slug = "stage-not-allowed" if status == 422 else (inspection.reason or "unreadable").replace("_", "-")
        return problem(status, slug, _TITLES[status], detail, request_id=call.request_id, headers=headers, **extra)

    async def _body_timeout(self, call: Call, detail: str) -> web.StreamResponse:
        """408, then close at once: the client stopped sending its body (Slowloris-style).

        The answer is written here and the connection closed after it, so that
        aiohttp does not linger another 10 s reading the rest of a body that
        is not coming. The upstream got nothing whole (its connection aborted).
        """
        request = call.request
        self.metrics.dropped_children[("main", "body_timeout")].inc()
        if self.flood.allow(("-", "body_timeout")):
            log_event(log, logging.WARNING, "client_body_timeout", request_id=call.request_id, endpoint=call.label,
                      detail=detail)
        response = problem(408, "request-timeout", "Request Timeout", detail, request_id=call.request_id,
                           headers=call.echo())
        response.force_close()
        with contextlib.suppress(ConnectionError):
            await response.prepare(request)
            await response.write_eof()
        if request.transport is not None:
            request.transport.close()  # flushes the 408, then closes
        return response

    def _upstream_problem(self, call: Call, exc: UpstreamError) -> web.Response:
        request_id, transport = call.request_id, call.request.transport
        if transport is None or transport.is_closing():
            # The client went away mid-upload and took the upstream request with it: not an upstream fault.
            log_event(log, logging.INFO, "client_disconnected", request_id=request_id, error=exc.detail)
        else:
            self.metrics.upstream_children[exc.reason].inc()
            log_event(log, logging.WARNING, "upstream_error", request_id=request_id, reason=exc.reason,
                      detail=exc.detail)
        title = "Bad Gateway" if exc.status == 502 else "Gateway Timeout"
        return problem(exc.status, f"upstream-{exc.reason}", title, exc.detail, request_id=request_id,
                       headers=call.echo())
