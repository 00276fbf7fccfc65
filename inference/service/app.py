"""The application factory: the routers, error answers and middleware around an already loaded Scorer."""
from __future__ import annotations

from importlib.metadata import version as package_version

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from carelens.data.errors import CareLensError
from carelens.inference.api import Scorer
from carelens.inference.service.dependencies import Service
from carelens.inference.service.docs import add_docs
from carelens.inference.service.errors import contract_broken, invalid_request, model_missing
from carelens.inference.service.middleware import AccessLog, Authentication, BodyLimit, InternalErrors
from carelens.inference.service.routes import guarded, public
from carelens.inference.service.settings import ServiceSettings
from carelens.models.registry import RegistryError


def create_app(scorer: Scorer, settings: ServiceSettings) -> FastAPI:
    """The service around an already loaded Scorer: /v1/health, /v1/models, /v1/score and /v1/flag, and the
    documentation at /docs and /redoc."""
    # The documentation pages are the service's own (add_docs), not FastAPI's, which load their files from a CDN.
    app = FastAPI(title="CareLens", version=package_version("carelens"),
                  description="Which contact-centre customers are we about to lose or anger, and why.",
                  docs_url=None, redoc_url=None)
    app.state.service = Service(scorer, settings)
    # The last added runs first: each request gets its id and log line, then the catch-all, then the key is checked
    # from the headers, and only then is the body read, within its size and time limits.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(Authentication, api_key=settings.api_key,
                       guarded_paths=frozenset(route.path for route in guarded.routes))
    app.add_middleware(InternalErrors)
    app.add_middleware(AccessLog)
    app.include_router(public)
    app.include_router(guarded)
    add_docs(app)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(CareLensError, contract_broken)
    app.add_exception_handler(RegistryError, model_missing)
    return app
