"""The deals API as a Flask (Werkzeug) service would write it: ``request.get_json()``, ``<id>`` routes for PATCH and
PUT. Answers {"app":"flask","handler":...,"stages":[...]}: what it would store. Used by tests/test_differential.py;
run: python flask_app.py PORT"""

from __future__ import annotations

import sys
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.serving import run_simple

app = Flask(__name__)


def answer(handler: str, deals: list[Any]) -> Any:
    stages = [deal["stage"] for deal in deals if isinstance(deal, dict) and "stage" in deal]
    return jsonify(app="flask", handler=handler, stages=stages)


@app.get("/")
def health() -> str:
    return "ok"


@app.post("/api/v1/deals")
def create() -> Any:
    return answer("create", [request.get_json()])


@app.post("/api/v1/deals/import")
def import_deals() -> Any:
    body = request.get_json()
    return answer("import", body.get("deals", []) if isinstance(body, dict) else [])


@app.route("/api/v1/deals/<deal_id>", methods=["PATCH", "PUT"])
def update(deal_id: str) -> Any:
    return answer("update", [request.get_json()])


if __name__ == "__main__":
    run_simple("127.0.0.1", int(sys.argv[1]), app, threaded=True)
