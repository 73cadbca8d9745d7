"""OpenAPI v2 and v3 documents of the served kinds (checkpoint stub: empty documents)."""

from __future__ import annotations

import json

from aiohttp import web


async def _v3_index(request: web.Request) -> web.Response:
    return web.Response(text=json.dumps({"paths": {}}), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi/v3", _v3_index)
