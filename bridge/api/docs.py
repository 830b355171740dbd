"""`/docs`: Swagger UI over the daemon's own OpenAPI schema, served from this package.

Everything the page loads comes from the daemon: Swagger UI's dist files are vendored under
`static/swagger/` (swagger-ui-dist, Apache-2.0, its LICENSE and NOTICE beside them; the version is
`SWAGGER_UI_VERSION`), and `static/docs.js` starts it. So the page works on a host with no way
out, and its Content-Security-Policy holds it to that: the page may load and call nothing but its
own origin. The bearer scheme is in the schema (`app.py`), so the page has an Authorize button;
the token typed there stays in the page's memory (`persistAuthorization` is off).

To update Swagger UI: `npm pack swagger-ui-dist@VERSION`, copy `swagger-ui-bundle.js`,
`swagger-ui-bundle.js.LICENSE.txt`, `swagger-ui.css`, `favicon-32x32.png`, `LICENSE` and `NOTICE`
from its `package/` into `static/swagger/`, and set `SWAGGER_UI_VERSION`.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

SWAGGER_UI_VERSION = "5.35.0"
STATIC = Path(__file__).parent / "static"
STATIC_PATH = "/docs/static"

# What the page may load and call: its own origin only. Swagger UI sets inline styles.
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="{static}/swagger/swagger-ui.css">
<link rel="icon" type="image/png" href="{static}/swagger/favicon-32x32.png">
</head>
<body>
<noscript>This page needs JavaScript. The schema is at <a href="{openapi}">{openapi}</a>.</noscript>
<div id="swagger-ui" data-openapi-url="{openapi}"></div>
<script src="{static}/swagger/swagger-ui-bundle.js"></script>
<script src="{static}/docs.js"></script>
</body>
</html>
"""


def install(app: FastAPI, openapi_url: str) -> None:
    """Serve the docs page at `/docs` and its assets under `/docs/static/` (neither in the schema)."""
    # check_dir off: an install without the assets answers 404 for them rather than not starting.
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC, check_dir=False), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        # Behind a proxy that mounts the daemon under a prefix, every URL carries it (as FastAPI's own).
        root = str(request.scope.get("root_path", "")).rstrip("/")
        page = PAGE.format(
            title=html.escape(f"{app.title} API"),
            static=html.escape(root + STATIC_PATH),
            openapi=html.escape(root + openapi_url),
        )
        return HTMLResponse(page, headers={"Content-Security-Policy": CSP})
