"""The admin listener: health, readiness, modes and metrics (docs/ops-plane.md).

Mutations need ``Authorization: Bearer <token>`` (compared in constant time);
with no token configured every mutation answers 403.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST

from proxy.catalog.compare import ReloadOutcome
from proxy.catalog.stages import MODES, Catalog, Mode
from proxy.modes.changes import ModeChanges, TooManyExemptions
from proxy.modes.records import Block, Exemption, Lease, utc_now
from proxy.modes.store import HISTORY_LIMIT, StoreUnavailable
from proxy.modes.view import ModeView
from proxy.ops import alerts, exemptions, leases
from proxy.shared.clients import Network
from proxy.shared.logs import log_event, safe_text
from proxy.shared.metrics import Metrics
from proxy.shared.problems import problem
from proxy.shared.secrets import Secret
from proxy.wire import catalogs as wire_catalogs
from proxy.wire import exemptions as wire_exemptions
from proxy.wire import leases as wire_leases
from proxy.wire import modes as wire

log = logging.getLogger(__name__)
T = TypeVar("T")

PUT_FIELDS: Final = frozenset({"endpoint", "mode", "percent", "reason", "actor", "force"})
MAX_REASON: Final = 500
MAX_ACTOR: Final = 100
ADMIN_MAX_BODY: Final = 8 * 1024 * 1024  # Alertmanager can batch thousands of alerts in one notification


UpstreamHealth = Callable[[], Awaitable[dict[str, Any]]]  # {"ok": True, "status": 200} or {"ok": False, "error": …}


class CatalogReloads(Protocol):
    """The running catalog's version and a way to re-read it (proxy.app.reload.Reloader)."""

    version: str
    path: Path | None

    async def reload(self, trigger: str) -> ReloadOutcome: ...

    def reload_all_workers(self) -> None: ...


@dataclass(frozen=True, slots=True)
class OpsContext:
    """What the admin handlers read and change; built by the app before the listeners start. The running
    catalog is ``view.catalog`` (a reload swaps it there)."""

    view: ModeView
    changes: ModeChanges
    metrics: Metrics
    token: Secret | None
    upstream_health: UpstreamHealth
    catalogs: CatalogReloads
    consumer_header: str | None = None  # --consumer-header: without it no consumer exemption can match
    trusted_proxies: tuple[Network, ...] = ()  # --trusted-proxies: a client network may not overlap them


OPS: Final = web.AppKey("ops", OpsContext)


class BadRequest(Exception):
    """A client mistake in an _ops body: answered 400 with this text."""


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data) + b"\n", content_type="application/json")


def _store_unavailable(detail: str = "the mode store could not be reached") -> web.Response:
    return problem(503, "store-unavailable", "Mode store unavailable", detail)


def _authorize(request: web.Request, token: Secret | None) -> web.Response | None:
    if token is None:
        return problem(403, "ops-disabled", "Forbidden", "no ops token is configured: mutations are disabled")
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.matches(presented.strip()):
        return problem(401, "unauthorized", "Unauthorized", "a valid bearer token is required",
                       headers={"WWW-Authenticate": 'Bearer realm="stagegate-ops"'})
    return None


def _block(block: Block) -> wire.BlockItem:
    return wire.BlockItem(block.fingerprint, block.alertname, block.endpoint, block.since, block.group_key)


def mode_view(ctx: OpsContext, persisted: bool | None = None) -> wire.ModeState:
    """The body of GET /_ops/mode: every endpoint with the alerts blocking its enforce (``blocked_by``), its
    rollout driver, and the downgrades waiting for the store."""
    view = ctx.view
    endpoints = {
        name: wire.EndpointMode(
            r.mode, r.percent, r.updated_at, r.updated_by, r.reason,
            tuple(wire.BlockRef(b.alertname, b.fingerprint, b.since, b.endpoint is None)
                  for b in view.blocked_by(name)),
            _live_lease(ctx, name))
        for name, r in view.records.items()
    }
    pending = tuple(wire.PendingWrite(name, r.mode, r.percent, r.updated_at, r.updated_by)
                    for name, r in sorted(ctx.changes.pending.records.items()))
    return wire.ModeState(view.source, view.enforce_blocked, endpoints, pending, persisted)


def _live_lease(ctx: OpsContext, endpoint: str) -> wire.RolloutHold | None:
    lease = ctx.view.leases.get(endpoint)
    if lease is None or not lease.live(utc_now()):
        return None
    return _lease(lease).hold


def _lease(lease: Lease) -> wire_leases.Lease:
    return wire_leases.Lease(wire.RolloutHold(lease.holder, lease.since, lease.expires, lease.step, lease.percent),
                             lease.credited_s)


async def put_rollout(request: web.Request) -> web.Response:
    """Take or renew a rollout driver's lease on one endpoint: 200 with it, 409 naming the live holder."""
    ctx = request.app[OPS]
    denied = _authorize(request, ctx.token)
    if denied is not None:
        return denied
    endpoint = request.match_info["endpoint"]
    if ctx.view.catalog.endpoint(endpoint) is None:
        return problem(404, "no-such-endpoint", "Not Found", f"no endpoint {safe_text(endpoint, 80)!r}")
    try:
        body = leases.parse_take(await request.read())
    except leases.LeaseBodyError as exc:
        return problem(400, "bad-request", "Bad Request", str(exc))
    try:
        held, replaced, taken = await ctx.changes.take_lease(
            endpoint, body.lease, body.holder, body.ttl_s, (body.step, body.percent, body.credited_s), body.reason)
    except StoreUnavailable:
        return _store_unavailable("the mode store could not be reached: a lease the other replicas cannot see is "
                                  "no lease")
    if not taken:
        return problem(409, "rollout-held", "Rollout in progress",
                       f"{held.holder} has driven {endpoint} since {held.since} (lease until {held.expires})",
                       rollout=held.public())
    return _json(wire_leases.LeaseTaken(endpoint, _lease(held),
                                        None if replaced is None else _lease(replaced)).to_json())


async def delete_rollout(request: web.Request) -> web.Response:
    """End a driver's lease (its own id only)."""
    ctx = request.app[OPS]
    denied = _authorize(request, ctx.token)
    if denied is not None:
        return denied
    endpoint = request.match_info["endpoint"]
    try:
        lease_id, reason, credited = leases.parse_release(await request.read())
        released = await ctx.changes.release_lease(endpoint, lease_id, reason, credited)
    except leases.LeaseBodyError as exc:
        return problem(400, "bad-request", "Bad Request", str(exc))
    except StoreUnavailable:
        return _store_unavailable()
    return _json(wire_leases.LeaseReleased(endpoint, released).to_json())


async def get_mode(request: web.Request) -> web.Response:
    return _json(mode_view(request.app[OPS]).to_json())


def _text(body: dict[str, Any], key: str, limit: int, *, required: bool) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{key!r} must be a non-empty string")
    if len(value) > limit:
        raise BadRequest(f"{key!r} is longer than {limit} characters")
    return value.strip()


def _percent(body: dict[str, Any], mode: str) -> float:
    value = body.get("percent")
    if mode != "enforce":
        if value is not None and (isinstance(value, bool) or value != 0):  # False == 0 in Python
            raise BadRequest("'percent' applies only to mode 'enforce'")
        return 0.0
    if value is None:
        return 100.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest("'percent' must be a number from 0 to 100")
    if not 0 <= value <= 100 or round(value, 2) != value:
        raise BadRequest("'percent' must be from 0 to 100 with at most two decimals")
    return float(value)


def parse_put(raw: bytes, catalog: Catalog) -> tuple[list[str], Mode, float, str, str, bool]:
    """Validate a PUT /_ops/mode body: (endpoints, mode, percent, reason, actor, force)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    unknown = set(body) - PUT_FIELDS
    if unknown:
        raise BadRequest(f"unknown field(s): {sorted(safe_text(k, 40) for k in unknown)}")
    endpoint = body.get("endpoint")
    if endpoint == "*":
        endpoints = list(catalog.endpoint_names)
    elif isinstance(endpoint, str) and catalog.endpoint(endpoint) is not None:
        endpoints = [endpoint]
    else:
        raise BadRequest(f"'endpoint' must be '*' or one of {list(catalog.endpoint_names)}")
    mode = body.get("mode")
    if mode not in MODES:
        raise BadRequest(f"'mode' must be one of {list(MODES)}")
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise BadRequest("'force' must be true or false")
    reason = _text(body, "reason", MAX_REASON, required=True) or ""
    actor = _text(body, "actor", MAX_ACTOR, required=False) or "api"
    return endpoints, mode, _percent(body, mode), reason, actor, force


async def put_mode(request: web.Request) -> web.Response:
    ctx = request.app[OPS]
    denied = _authorize(request, ctx.token)
    if denied is not None:
        return denied
    try:
        endpoints, mode, percent, reason, actor, force = parse_put(await request.read(), ctx.view.catalog)
    except BadRequest as exc:
        return problem(400, "bad-request", "Bad Request", str(exc))
    except web.HTTPRequestEntityTooLarge:
        return problem(413, "too-large", "Payload Too Large", f"the body exceeds {request.client_max_size} bytes")
    holding = {b.fingerprint: b for name in endpoints for b in ctx.view.blocked_by(name)} if mode == "enforce" else {}
    if holding and not force:
        names = alerts.capped(sorted({b.alertname + f" ({b.endpoint or 'all endpoints'})" for b in holding.values()}))
        return problem(409, "enforce-blocked", "Enforce is blocked",
                       f"enforce is blocked for {', '.join(endpoints)} while these alerts fire: {', '.join(names)}; "
                       "wait for them to resolve, clear a stale block (DELETE /_ops/blocks/{fingerprint}), or "
                       "override with \"force\": true (stagectl mode set --force)",
                       blocked_by=names, fingerprints=sorted(holding)[:20])
    try:
        persisted = await ctx.changes.change(endpoints, mode, percent, actor, reason, forced=force and bool(holding))
    except StoreUnavailable as exc:
        log_event(log, logging.WARNING, "mode_change_failed", error=str(exc)[:200])
        return _store_unavailable("the mode store could not be reached: only a change towards safety (a lower mode "
                                  "or enforce share) is applied without it")
    # 202: a downgrade applied on this replica only, written to the store (and so to the others) when it answers
    return _json(mode_view(ctx, persisted).to_json(), 200 if persisted else 202)


async def get_history(request: web.Request) -> web.Response:
    """Newest first; ``endpoint`` keeps the entries about that endpoint (and those about all of them)."""
    ctx = request.app[OPS]
    text = request.query.get("limit", "100")
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= HISTORY_LIMIT:  # "²".isdigit() is True
        return problem(400, "bad-request", "Bad Request", f"'limit' must be an integer from 1 to {HISTORY_LIMIT}")
    endpoint = request.query.get("endpoint")
    if endpoint is not None and ctx.view.catalog.endpoint(endpoint) is None:
        return problem(400, "bad-request", "Bad Request",
                       f"'endpoint' must be one of {list(ctx.view.catalog.endpoint_names)}")
    try:
        entries = await ctx.changes.history(HISTORY_LIMIT if endpoint else int(text))
    except StoreUnavailable:
        return _store_unavailable()
    if endpoint is not None:
        entries = [e for e in entries if e.endpoint in (None, endpoint)][:int(text)]
    return _json(wire.History(tuple(wire.HistoryItem(
        e.at, e.action, e.actor, e.source, e.reason, e.endpoint, e.from_mode, e.to_mode, e.percent, e.forced,
        e.alertname, e.group_key) for e in entries)).to_json())


async def get_blocks(request: web.Request) -> web.Response:
    """Every enforce block: which alert, for which endpoint (null: all), since when."""
    ctx = request.app[OPS]
    blocks = sorted(ctx.view.blocks.values(), key=lambda b: (b.since, b.fingerprint))
    return _json(wire.Blocks(ctx.view.enforce_blocked, tuple(_block(b) for b in blocks)).to_json())


async def delete_block(request: web.Request) -> web.Response:
    """Clear one block by fingerprint (a resolve Alertmanager lost); ``reason`` required, written to history."""
    ctx = request.app[OPS]
    fingerprint = request.match_info["fingerprint"]
    cleared = await _reasoned(request, ctx, lambda actor, reason: ctx.changes.clear_block(fingerprint, actor, reason))
    if isinstance(cleared, web.Response):
        return cleared
    if cleared is None:
        return problem(404, "no-such-block", "Not Found",
                       f"no enforce block has fingerprint {safe_text(fingerprint, 80)!r}")
    return _json(wire.BlockCleared(_block(cleared), ctx.view.enforce_blocked).to_json())


def _exemption(exemption: Exemption) -> wire_exemptions.Exemption:
    return wire_exemptions.Exemption(exemption.id, exemption.endpoint, exemption.consumer, exemption.client_cidr,
                                     exemption.until, exemption.reason, exemption.created_at, exemption.created_by)


def _live_exemptions(view: ModeView) -> list[Exemption]:
    now = utc_now()
    return sorted((e for e in view.exemptions.values() if e.live(now)), key=lambda e: (e.until, e.id))


async def get_exemptions(request: web.Request) -> web.Response:
    """The live exemptions (expired ones are gone, whether or not the store has dropped them yet)."""
    live = _live_exemptions(request.app[OPS].view)
    return _json(wire_exemptions.Exemptions(tuple(_exemption(e) for e in live)).to_json())


async def put_exemption(request: web.Request) -> web.Response:
    """Give one consumer or client network more time in warn: 201 with the exemption (its id ends it early)."""
    ctx = request.app[OPS]
    denied = _authorize(request, ctx.token)
    if denied is not None:
        return denied
    try:
        body = exemptions.parse_put(await request.read(), ctx.view.catalog.endpoint_names)
    except exemptions.ExemptionBodyError as exc:
        return problem(400, "bad-request", "Bad Request", str(exc))
    except web.HTTPRequestEntityTooLarge:
        return problem(413, "too-large", "Payload Too Large", f"the body exceeds {request.client_max_size} bytes")
    if body.consumer is not None and ctx.consumer_header is None:
        return problem(400, "bad-request", "Bad Request",
                       "this proxy names no consumers (start it with --consumer-header and --trusted-proxies), so "
                       "a consumer exemption would never apply; exempt a 'client_cidr' instead")
    if body.client_cidr is not None and exemptions.overlaps(body.client_cidr, ctx.trusted_proxies):
        return problem(400, "bad-request", "Bad Request",
                       f"'client_cidr' {body.client_cidr} overlaps --trusted-proxies: a trusted peer writes the "
                       "client address it forwards, so any of them could claim this exemption; name the consumer")
    exemption = Exemption(exemptions.new_id(), body.endpoint, body.consumer, body.client_cidr, body.until,
                          body.reason, utc_now(), body.actor)
    try:
        await ctx.changes.add_exemption(exemption, exemptions.MAX_LIVE)
    except TooManyExemptions:
        return problem(409, "too-many-exemptions", "Conflict",
                       f"{exemptions.MAX_LIVE} exemptions are live: remove one first (each is checked on every "
                       "enforced request)")
    except StoreUnavailable:
        return _store_unavailable("the mode store could not be reached: an exemption the other replicas cannot see "
                                  "would apply on this one only")
    return _json(_exemption(exemption).to_json(), 201)


async def delete_exemption(request: web.Request) -> web.Response:
    """End an exemption before its time; ``reason`` required, written to the history."""
    ctx = request.app[OPS]
    exemption_id = request.match_info["id"]
    removed = await _reasoned(request, ctx,
                              lambda actor, reason: ctx.changes.remove_exemption(exemption_id, actor, reason))
    if isinstance(removed, web.Response):
        return removed
    if removed is None:
        return problem(404, "no-such-exemption", "Not Found", f"no exemption has id {safe_text(exemption_id, 80)!r}")
    return _json(wire_exemptions.ExemptionRemoved(_exemption(removed)).to_json())


async def _reasoned(request: web.Request, ctx: OpsContext,
                    change: Callable[[str, str], Awaitable[T]]) -> T | web.Response:
    """A mutation that takes only a reason: the caller authorized and its reason read, then ``change(actor,
    reason)``; the answer instead when either fails or the store is down."""
    given = await _authorized_reason(request, ctx)
    if isinstance(given, web.Response):
        return given
    reason, actor = given
    try:
        return await change(actor, reason)
    except StoreUnavailable:
        return _store_unavailable()


async def _authorized_reason(request: web.Request, ctx: OpsContext) -> tuple[str, str] | web.Response:
    """A mutation that takes only ``{"reason", "actor"}``: (reason, actor), or the 401/403/400/413 answer."""
    denied = _authorize(request, ctx.token)
    if denied is not None:
        return denied
    try:
        return _reason_and_actor(await request.read())
    except BadRequest as exc:
        return problem(400, "bad-request", "Bad Request", str(exc))
    except web.HTTPRequestEntityTooLarge:
        return problem(413, "too-large", "Payload Too Large", f"the body exceeds {request.client_max_size} bytes")


def _reason_and_actor(raw: bytes, *, required: bool = True) -> tuple[str, str]:
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise BadRequest("body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    unknown = set(body) - {"reason", "actor"}
    if unknown:
        raise BadRequest(f"unknown field(s): {sorted(safe_text(k, 40) for k in unknown)}")
    return _text(body, "reason", MAX_REASON, required=required) or "", _text(body, "actor", MAX_ACTOR,
                                                                              required=False) or "api"


async def post_reload(request: web.Request) -> web.Response:
    """Re-read --config: 200 with the version and what changed, or 400 naming every problem (nothing changed)."""
    ctx = request.app[OPS]
    denied = _authorize(request, ctx.token)
    if denied is not None:
        return denied
    try:
        reason, actor = _reason_and_actor(await request.read(), required=False)
    except BadRequest as exc:
        return problem(400, "bad-request", "Bad Request", str(exc))
    except web.HTTPRequestEntityTooLarge:
        return problem(413, "too-large", "Payload Too Large", f"the body exceeds {request.client_max_size} bytes")
    outcome = await ctx.catalogs.reload("api")
    if outcome.ok:
        try:
            await ctx.changes.note_reload(actor, reason or "catalog reload", outcome.version, outcome.previous)
        except StoreUnavailable:  # applied here all the same: the history is the record, not the switch
            log_event(log, logging.WARNING, "catalog_reload_not_in_history", version=outcome.version)
    if not outcome.ok:
        return problem(400, "catalog-refused", "Catalog refused",
                       f"the catalog was not reloaded: {outcome.problems[0]}", problems=list(outcome.problems),
                       version=outcome.version)
    ctx.catalogs.reload_all_workers()
    return _json(wire_catalogs.Reloaded.of(outcome).to_json())


async def get_catalog(request: web.Request) -> web.Response:
    """The catalog this process serves: version, file, stages, aliases, endpoints."""
    ctx = request.app[OPS]
    path = ctx.catalogs.path
    return _json(wire_catalogs.CatalogServed(ctx.catalogs.version, str(path) if path else None,
                                             ctx.view.catalog).to_json())


async def post_alertmanager(request: web.Request) -> web.Response:
    ctx = request.app[OPS]
    denied = _authorize(request, ctx.token)
    if denied is not None:
        return denied
    return await alerts.webhook(request, ctx.view.catalog, ctx.view, ctx.changes)


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


class UpstreamProbe:
    """Readiness of the upstream, probed at most once a second."""

    def __init__(self) -> None:
        self._checked_at = 0.0
        self._result: dict[str, Any] = {"ok": False, "error": "not checked yet"}

    async def check(self, ctx: OpsContext) -> dict[str, Any]:
        if time.monotonic() - self._checked_at < 1.0:
            return self._result
        self._result = await ctx.upstream_health()
        self._checked_at = time.monotonic()
        return self._result


PROBE: Final = web.AppKey("probe", UpstreamProbe)


async def readyz(request: web.Request) -> web.Response:
    ctx = request.app[OPS]
    upstream = await request.app[PROBE].check(ctx)
    modes = {"resolved": ctx.view.resolved, "source": ctx.view.source, "degraded": ctx.view.degraded}
    ready = ctx.view.resolved and upstream["ok"]
    return _json({"ready": ready, "modes": modes, "upstream": upstream}, 200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    ctx = request.app[OPS]
    return web.Response(body=ctx.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


OPENAPI: Final = web.AppKey("openapi", bytes)


def openapi_document() -> bytes:
    """The OpenAPI document of the deal contract and this API (docs/openapi.yaml), shipped as package data."""
    return resources.files("proxy.ops").joinpath("openapi.yaml").read_bytes()


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/yaml", charset="utf-8")


def create_admin_app(ctx: OpsContext, *, max_body_bytes: int = ADMIN_MAX_BODY,
                     middlewares: Sequence[Middleware] = ()) -> web.Application:
    """The admin listener's application (no I/O here but reading the packaged OpenAPI document, once); bodies
    over ``max_body_bytes`` answer 413."""
    app = web.Application(client_max_size=max_body_bytes, middlewares=middlewares)
    app[OPS] = ctx
    app[PROBE] = UpstreamProbe()
    app[OPENAPI] = openapi_document()
    app.router.add_get("/_ops/healthz", healthz)
    app.router.add_get("/_ops/readyz", readyz)
    app.router.add_get("/_ops/mode", get_mode)
    app.router.add_put("/_ops/mode", put_mode)
    app.router.add_get("/_ops/mode/history", get_history)
    app.router.add_post("/_ops/alertmanager", post_alertmanager)
    app.router.add_put("/_ops/rollout/{endpoint}", put_rollout)
    app.router.add_delete("/_ops/rollout/{endpoint}", delete_rollout)
    app.router.add_get("/_ops/exemptions", get_exemptions)
    app.router.add_put("/_ops/exemptions", put_exemption)
    app.router.add_delete("/_ops/exemptions/{id}", delete_exemption)
    app.router.add_get("/_ops/blocks", get_blocks)
    app.router.add_delete("/_ops/blocks/{fingerprint}", delete_block)
    app.router.add_post("/_ops/reload", post_reload)
    app.router.add_get("/_ops/catalog", get_catalog)
    app.router.add_get("/_ops/openapi.yaml", openapi)
    app.router.add_get("/metrics", metrics)
    return app
