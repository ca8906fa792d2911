"""``/docs``: Swagger UI served from files shipped in the package, so the API docs work with no network
(FastAPI's default page loads Swagger UI from a CDN and is blank offline)."""

from __future__ import annotations

import gzip
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import Response

ASSETS = Path(__file__).parent / "docs_assets"
FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon-32x32.png": "image/png"}


def mount_docs(app: FastAPI) -> None:
    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    @app.get("/docs-assets/{name}", include_in_schema=False)
    def asset(name: str, request: Request):
        if name not in FILES:
            return Response(status_code=404)
        headers = {"Cache-Control": "public, max-age=86400"}
        packed = ASSETS / (name + ".gz")
        if not packed.is_file():
            return Response((ASSETS / name).read_bytes(), media_type=FILES[name], headers=headers)
        data = packed.read_bytes()
        if "gzip" in request.headers.get("accept-encoding", ""):  # stored gzipped: sent as it is
            return Response(data, media_type=FILES[name], headers={**headers, "Content-Encoding": "gzip",
                                                                    "Vary": "Accept-Encoding"})
        return Response(gzip.decompress(data), media_type=FILES[name], headers={**headers, "Vary": "Accept-Encoding"})
