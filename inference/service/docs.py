"""The documentation pages, /docs (Swagger UI) and /redoc, with their scripts, styles and icon served by the service."""
from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from openapi_ui_bundles import redoc, swagger_ui

# FastAPI's own pages load these files from a CDN, which leaves /docs blank on a network without internet access.
ASSETS = "/docs-assets"
SWAGGER_ASSETS, REDOC_ASSETS = f"{ASSETS}/swagger-ui", f"{ASSETS}/redoc"
OAUTH2_REDIRECT = "/docs/oauth2-redirect"

docs = APIRouter(include_in_schema=False)


def _root(request: Request) -> str:
    """The prefix a proxy serves the service under (the ASGI root_path), which the pages' links must carry."""
    return request.scope.get("root_path", "").rstrip("/")


# Each page answers HEAD as well as GET, as FastAPI's own pages do.
@docs.api_route("/", methods=["GET", "HEAD"])
async def front_page(request: Request) -> RedirectResponse:
    """The service's address opened in a browser: its API docs, not a bare 404."""
    return RedirectResponse(f"{_root(request)}/docs")


@docs.api_route("/docs", methods=["GET", "HEAD"])
async def swagger_ui_page(request: Request) -> HTMLResponse:
    """Swagger UI over the service's OpenAPI schema."""
    root = _root(request)
    return get_swagger_ui_html(openapi_url=root + request.app.openapi_url, title=f"{request.app.title} - Swagger UI",
                               swagger_js_url=f"{root}{SWAGGER_ASSETS}/swagger-ui-bundle.js",
                               swagger_css_url=f"{root}{SWAGGER_ASSETS}/swagger-ui.css",
                               swagger_favicon_url=f"{root}{SWAGGER_ASSETS}/favicon-32x32.png",
                               oauth2_redirect_url=root + OAUTH2_REDIRECT,
                               # No validator badge: it would fetch validator.swagger.io, absent offline.
                               swagger_ui_parameters={"validatorUrl": None})


@docs.api_route(OAUTH2_REDIRECT, methods=["GET", "HEAD"])
async def swagger_ui_oauth2_redirect() -> HTMLResponse:
    """The page an OAuth2 provider sends Swagger UI's "Authorize" back to."""
    return get_swagger_ui_oauth2_redirect_html()


@docs.api_route("/redoc", methods=["GET", "HEAD"])
async def redoc_page(request: Request) -> HTMLResponse:
    """ReDoc over the service's OpenAPI schema, in the browser's own fonts (FastAPI's page fetches Google's)."""
    root = _root(request)
    return get_redoc_html(openapi_url=root + request.app.openapi_url, title=f"{request.app.title} - ReDoc",
                          redoc_js_url=f"{root}{REDOC_ASSETS}/redoc.standalone.js",
                          redoc_favicon_url=f"{root}{SWAGGER_ASSETS}/favicon-32x32.png", with_google_fonts=False)


def add_docs(app: FastAPI) -> None:
    """The documentation pages and their files, on an app made with docs_url=None and redoc_url=None."""
    app.mount(SWAGGER_ASSETS, StaticFiles(directory=swagger_ui.static_path), name="swagger-ui-assets")
    app.mount(REDOC_ASSETS, StaticFiles(directory=redoc.static_path), name="redoc-assets")
    app.include_router(docs)
