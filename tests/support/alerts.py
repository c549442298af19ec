"""Alertmanager webhook payloads (version 4), as Alertmanager sends them, and posting them to a proxy."""

from __future__ import annotations

import io
from typing import Any

import aiohttp
import orjson

from proxy.app.server import Running
from tests.support.proxies import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def alert(labels: dict[str, str], status: str = "firing", fingerprint: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"status": status, "labels": labels, "annotations": {},
                            "startsAt": "2026-11-25T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                            "generatorURL": "http://prometheus/graph"}
    if fingerprint is not None:
        body["fingerprint"] = fingerprint
    return body


def payload(*alerts: dict[str, Any], status: str = "firing", version: str = "4") -> dict[str, Any]:
    return {"version": version, "groupKey": '{}:{alertname="X"}', "truncatedAlerts": 0, "status": status,
            "receiver": "stagegate-ops", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093", "alerts": list(alerts)}


async def post_webhook(http: aiohttp.ClientSession, run: Running, body: bytes | dict[str, Any],
                       headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(f"{run.admin_url}/_ops/alertmanager", data=io.BytesIO(data),
                         headers=AUTH if headers is None else headers) as response:
        return response.status, orjson.loads(await response.read())


async def block_enforce(http: aiohttp.ClientSession, run: Running, endpoint: str | None = None,
                        alertname: str = "StageUnknownHighInWarn", status: str = "firing") -> dict[str, Any]:
    """Fire (or resolve) a block_enforce alert through the webhook, as Alertmanager would."""
    labels = {"alertname": alertname, "stage_action": "block_enforce", **({"endpoint": endpoint} if endpoint else {})}
    code, answer = await post_webhook(http, run, payload(alert(labels, status, fingerprint=f"fp-{alertname}")))
    assert code == 200, answer
    return answer
