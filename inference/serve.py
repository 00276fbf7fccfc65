"""The `carelens serve` command: load the models once and answer HTTP requests with uvicorn."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from carelens.data.errors import UsageError


def api_key_from(variable: Optional[str]) -> Optional[str]:
    """The API key held in the named environment variable; None when no variable is named."""
    if variable is None:
        return None
    key = os.environ.get(variable, "")
    if not key:
        raise UsageError(f"--api-key-env {variable}: that environment variable is unset or empty; expected it to hold "
                         f"the API key clients must send in the X-API-Key header")
    return key


def serve_command(
    registry: Annotated[Optional[Path], typer.Option(help="Registry directory (default $CARELENS_REGISTRY or "
                                                          "./registry).")] = None,
    version: Annotated[str, typer.Option(help="Model version for all three models, e.g. v2, or latest.")] = "latest",
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 listens on every interface.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8000,
    api_key_env: Annotated[Optional[str], typer.Option(
        help="Name of the environment variable holding the API key clients must send in X-API-Key (the key itself "
             "never goes on the command line, where other users could read it). Default: no authentication.")] = None,
    max_body_bytes: Annotated[int, typer.Option(min=1, help="Largest request body accepted, in bytes; larger ones "
                                                            "get 413.")] = 10_000_000,
    max_batch: Annotated[int, typer.Option(min=1, help="Most conversations, interactions or transcripts in one "
                                                       "request; more get 413.")] = 1_000,
) -> None:
    """Serve POST /v1/score (transcript features), POST /v1/flag (customers at risk, with reasons and actions),
    GET /v1/models and GET /v1/health; the OpenAPI documentation is at /docs."""
    import uvicorn

    from carelens.inference.api import Scorer
    from carelens.inference.service import ServiceSettings, create_app
    from carelens.data.terminal import console, user_errors
    with user_errors():
        settings = ServiceSettings(api_key=api_key_from(api_key_env), max_body_bytes=max_body_bytes,
                                   max_batch=max_batch)
        scorer = Scorer.load(registry, version)
    models = ", ".join(f"{name} {v}" for name, v in scorer.versions.items())
    console.print(f"serving {models}; API key {'required' if settings.api_key else 'not required'}")
    uvicorn.run(create_app(scorer, settings), host=host, port=port)
