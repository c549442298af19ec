"""``POST /_ops/alertmanager``: Alertmanager's webhook (payload version 4) turned into mode actions.

By the alert's labels (docs/ops-plane.md):

* ``stage_action="downgrade"`` firing: every enforcing endpoint named by label
  ``endpoint`` (all, if absent) goes to ``warn``. Latched: a resolved alert
  re-enables nothing; only an explicit ``PUT /_ops/mode`` does.
* ``stage_action="block_enforce"`` firing: enforce is blocked (PUT enforce answers
  409) until every such alert has resolved. Blocks are keyed by the alert's
  fingerprint, so two alerts for two endpoints each hold the block.

Re-sent notifications (``repeat_interval``, HA pairs) change nothing the second
time. Alerts without ``stage_action`` are ignored with 200; malformed payloads
are 400. Label values are input: an alert name or group key is cut to
``MAX_LABEL`` characters and an over-long fingerprint replaced by its hash
before it reaches a log line, a block, the history or an answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from proxy.catalog.stages import Catalog
from proxy.modes.changes import ModeChanges
from proxy.modes.records import Block, utc_now
from proxy.modes.store import StoreUnavailable
from proxy.modes.view import ModeView
from proxy.shared.logs import log_event, safe_text
from proxy.shared.problems import problem

log = logging.getLogger(__name__)
ACTIONS = ("downgrade", "block_enforce")
MAX_LABEL = 200  # characters kept of an alert name or group key (real ones are a few dozen)
MAX_FINGERPRINT = 64  # Alertmanager's are 16 hex digits; a longer one is hashed, so distinct ones stay distinct


def _short(value: str, limit: int = MAX_LABEL) -> str:
    return value if len(value) <= limit else value[:limit] + "…"


class PayloadError(ValueError):
    """The webhook body is not an Alertmanager v4 notification."""


@dataclass
class Plan:
    """What one notification asks for, deduplicated across its alerts."""

    downgrade_all: bool = False
    downgrade: dict[str, str] = field(default_factory=dict)  # endpoint -> alertname
    downgrade_alert: str = ""
    firing_blocks: dict[str, Block] = field(default_factory=dict)
    resolved_blocks: list[str] = field(default_factory=list)
    unknown_endpoints: set[str] = field(default_factory=set)
    ignored: int = 0


def _fingerprint(alert: dict[str, Any], labels: dict[str, str]) -> str:
    value = alert.get("fingerprint")
    if isinstance(value, str) and value:
        if len(value) <= MAX_FINGERPRINT:
            return value
        return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return hashlib.sha256(orjson.dumps(labels, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _labels(alert: object, index: int) -> tuple[dict[str, Any], dict[str, str]]:
    if not isinstance(alert, dict):
        raise PayloadError(f"alerts[{index}] must be an object")
    labels = alert.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise PayloadError(f"alerts[{index}].labels must map names to strings")
    if alert.get("status") not in ("firing", "resolved"):
        raise PayloadError(f"alerts[{index}].status must be 'firing' or 'resolved'")
    return alert, labels


def parse(raw: bytes) -> tuple[dict[str, Any], list[tuple[dict[str, Any], dict[str, str]]]]:
    """Validate the envelope (version 4) and every alert's shape."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise PayloadError("body is not JSON") from None
    if not isinstance(body, dict):
        raise PayloadError("body must be a JSON object")
    if body.get("version") != "4":
        raise PayloadError(f"unsupported payload version {safe_text(body.get('version'), 20)!r} (expected \"4\")")
    alerts = body.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("'alerts' must be a list")
    if not isinstance(body.get("groupKey", ""), str):
        raise PayloadError("'groupKey' must be a string")
    return body, [_labels(alert, i) for i, alert in enumerate(alerts)]


def plan(raw: bytes, catalog: Catalog) -> tuple[Plan, str]:
    """The actions a notification asks for, and its groupKey."""
    body, alerts = parse(raw)
    group_key = _short(body.get("groupKey") or "")
    result = Plan()
    for alert, labels in alerts:
        action, name = labels.get("stage_action"), _short(labels.get("alertname", "unnamed"))
        endpoint = labels.get("endpoint")
        if action not in ACTIONS:
            result.ignored += 1
        elif endpoint is not None and catalog.endpoint(endpoint) is None:
            result.unknown_endpoints.add(safe_text(endpoint, 100))
        elif action == "downgrade":
            if alert["status"] == "firing":
                result.downgrade_alert = result.downgrade_alert or name
                if endpoint is None:
                    result.downgrade_all = True
                else:
                    result.downgrade.setdefault(endpoint, name)
        elif alert["status"] == "firing":
            fingerprint = _fingerprint(alert, labels)
            result.firing_blocks[fingerprint] = Block(fingerprint, name, endpoint, group_key, utc_now())
        else:
            result.resolved_blocks.append(_fingerprint(alert, labels))
    return result, group_key


async def apply(plan_: Plan, group_key: str, view: ModeView, changes: ModeChanges) -> dict[str, Any]:
    """Carry the plan out; returns the webhook's answer."""
    downgraded: list[str] = []
    persisted = True
    if plan_.downgrade_all or plan_.downgrade:
        targets = None if plan_.downgrade_all else list(plan_.downgrade)
        downgraded, persisted = await changes.downgrade(targets, plan_.downgrade_alert, group_key)
    added: list[str] = []
    removed: list[str] = []
    if plan_.firing_blocks or plan_.resolved_blocks:
        added, removed = await changes.update_blocks(list(plan_.firing_blocks.values()), plan_.resolved_blocks)
    if plan_.unknown_endpoints:
        log_event(log, logging.WARNING, "alert_unknown_endpoint", endpoints=capped(sorted(plan_.unknown_endpoints)),
                  group_key=safe_text(group_key))
    return {"downgraded": downgraded, "persisted": persisted, "blocks_added": len(added),
            "blocks_removed": len(removed),
            "enforce_blocked": view.enforce_blocked, "ignored": plan_.ignored,
            "unknown_endpoints": capped(sorted(plan_.unknown_endpoints))}


def capped(names: list[str], limit: int = 20) -> list[str]:
    """At most ``limit`` names, then one saying how many more: what goes into one log line or one answer."""
    return names if len(names) <= limit else [*names[:limit], f"... and {len(names) - limit} more"]


async def webhook(request: web.Request, catalog: Catalog, view: ModeView, changes: ModeChanges) -> web.Response:
    """The handler body (auth is checked by the caller)."""
    try:
        raw = await request.read()
        # Parsing and planning thousands of alerts is CPU work: off the event loop, so the data plane keeps going.
        plan_, group_key = await asyncio.to_thread(plan, raw, catalog) if len(raw) > 64 * 1024 else plan(raw, catalog)
    except PayloadError as exc:
        return problem(400, "bad-alertmanager-payload", "Bad Request", str(exc))
    except web.HTTPRequestEntityTooLarge:
        return problem(413, "too-large", "Payload Too Large", f"the body exceeds {request.client_max_size} bytes")
    try:
        answer = await apply(plan_, group_key, view, changes)
    except StoreUnavailable as exc:
        log_event(log, logging.WARNING, "alert_action_failed", error=str(exc)[:200])
        return problem(503, "store-unavailable", "Mode store unavailable", "retry: the mode store is unreachable")
    log_event(log, logging.INFO, "alertmanager_notification", group_key=safe_text(group_key), **answer)
    return web.Response(status=200 if answer["persisted"] else 202, body=orjson.dumps(answer) + b"\n",
                        content_type="application/json")
