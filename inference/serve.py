"""The `carelens serve` command: load the models once and answer HTTP requests with uvicorn."""
from __future__ import annotations

import copy
import gc
import logging.config
import os
import signal
import sys
from dataclasses import asdict, dataclass
from typing import Annotated, Optional

import typer

from carelens.data.errors import UsageError
from carelens.data.options import RegistryOption, ScoringFlags, VersionsOption, flag, with_option_groups


def api_key_from(variable: Optional[str]) -> Optional[str]:
    """The API key held in the named environment variable; None when no variable is named."""
    if variable is None:
        return None
    key = os.environ.get(variable, "")
    if not key:
        raise UsageError(f"--api-key-env {variable}: that environment variable is unset or empty; expected it to hold "
                         f"the API key clients must send in the X-API-Key header")
    return key


def logging_config() -> dict:
    """uvicorn's logging, plus the service's: the JSON access lines alone on stdout (uvicorn's own access log is off),
    failed requests with their traceback on stderr."""
    from uvicorn.config import LOGGING_CONFIG
    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["line"] = {"format": "%(message)s"}
    config["handlers"]["access_lines"] = {"class": "logging.StreamHandler", "formatter": "line",
                                          "stream": "ext://sys.stdout"}
    config["loggers"]["carelens.access"] = {"handlers": ["access_lines"], "level": "INFO", "propagate": False}
    config["loggers"]["carelens.service"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def serve_until_stopped(app, flags: ServerFlags, sockets: Optional[list] = None) -> None:
    """Run uvicorn on the flags' host and port (or on `sockets`, a worker's own) until SIGINT or SIGTERM, then let
    requests in flight finish (for at most `shutdown_timeout` seconds) and return, so that a stop asked for ends with
    exit code 0. A connection that sends no whole request head within `idle_timeout` seconds (after connecting or
    after its last answer) is closed."""
    import uvicorn

    from carelens.inference.service.protocol import HeadDeadlineProtocol

    server = uvicorn.Server(uvicorn.Config(app, host=flags.host, port=flags.port, access_log=False,
                                           log_config=logging_config(), http=HeadDeadlineProtocol,
                                           timeout_graceful_shutdown=flags.shutdown_timeout,
                                           timeout_keep_alive=flags.idle_timeout))

    # uvicorn, once it has shut down gracefully, raises the signal it caught again under the handler it found; under
    # Python's defaults SIGTERM would then kill the process (exit -15) and SIGINT raise KeyboardInterrupt. This handler
    # asks the server to stop instead, which also covers a signal that comes before uvicorn installs its own.
    def stop(signum, frame) -> None:
        server.should_exit = True

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=sockets)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass(frozen=True)
class ServiceFlags:
    """What guards the service: the API key, the request limits and timeouts, and what the access log holds."""

    api_key_env: Annotated[Optional[str], typer.Option(
        help="Name of the environment variable holding the API key clients must send in X-API-Key (the key itself "
             "never goes on the command line, where other users could read it). Default: no authentication.")] = None
    max_body_bytes: Annotated[int, typer.Option(min=1, help="Largest request body accepted, in bytes; larger ones "
                                                            "get 413.")] = 10_000_000
    max_batch: Annotated[int, typer.Option(min=1, help="Most conversations, interactions or transcripts in one "
                                                       "request; more get 413.")] = 1_000
    request_timeout: Annotated[float, typer.Option(min=0.001, help="Seconds a request may wait for and run scoring; "
                                                                   "longer ones get 503.")] = 30.0
    body_timeout: Annotated[float, typer.Option(min=0.001, help="Seconds a client may take to send a request body; "
                                                                "slower ones get 408.")] = 10.0
    log_text: Annotated[bool, flag("--log-text", help="Add each request's transcript texts to its access-log line "
                                                      "(off by default: they are customers' words).")] = False

    def settings(self):
        """The service's settings (`ServiceSettings`), the API key read from its variable."""
        from carelens.inference.service import ServiceSettings
        return ServiceSettings(api_key=api_key_from(self.api_key_env), max_body_bytes=self.max_body_bytes,
                               max_batch=self.max_batch, request_timeout_s=self.request_timeout,
                               body_timeout_s=self.body_timeout, log_text=self.log_text)


@dataclass(frozen=True)
class ServerFlags:
    """Where the server listens, how long an idle connection is kept, and how long a stop waits for requests."""

    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 listens on every interface.")] = "127.0.0.1"
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8000
    idle_timeout: Annotated[int, typer.Option(min=1, help="Seconds a connection may take to send a request's line and "
                                                          "headers, after connecting or after its last answer; "
                                                          "slower ones are closed.")] = 5
    shutdown_timeout: Annotated[int, typer.Option(min=0, help="On SIGTERM or SIGINT, seconds given to requests in "
                                                              "flight to finish before they are cancelled.")] = 30
    workers: Annotated[int, typer.Option(min=1, help="Processes answering requests, each with its own copy of the "
                                                     "models (that much more memory). One process flags one request "
                                                     "at a time (pandas holds the GIL), so more serve more clients at "
                                                     "once, up to the cores; each encoder then runs on its share of "
                                                     "the cores unless --threads is given.")] = 1


@with_option_groups
def serve_command(
    registry: RegistryOption = None,
    version: VersionsOption = "latest",
    server: ServerFlags = ServerFlags(),
    service: ServiceFlags = ServiceFlags(),
    redact: Annotated[bool, flag(help="Mask e-mail addresses, phone numbers, card and order/account numbers "
                                      "in transcript text before scoring and in the access log ([EMAIL], "
                                      "[PHONE], [CARD], [ORDER]).")] = False,
    scoring: ScoringFlags = ScoringFlags(),
) -> None:
    """Serve POST /v1/score (transcript features), POST /v1/flag (customers at risk, with reasons and actions),
    GET /v1/models and GET /v1/health; the OpenAPI documentation is at /docs and /redoc (offline too: the service
    serves their scripts itself). Each request is logged as one JSON line on stdout."""
    from carelens.data.terminal import console, user_errors
    with user_errors():
        spec = WorkerSpec(None if registry is None else str(registry), version, redact,
                          scoring_with_share(scoring.given(), server.workers), asdict(service))
        # Loaded here even for worker processes: a registry that does not load stops the command before any worker
        # starts, and `auto` measures the runtime once, for the workers to find in its cache.
        app = spec.app()
    models = ", ".join(f"{name} {v}" for name, v in app.state.service.scorer.versions.items())
    console.print(f"serving {models}; API key {'required' if app.state.service.settings.api_key else 'not required'}"
                  f"{'; personal data redacted' if redact else ''}"
                  f"{f'; {server.workers} worker processes' if server.workers > 1 else ''}")
    if server.workers == 1:
        serve_until_stopped(app, server)
        return
    from carelens.inference.service.workers import port_socket, supervise
    del app
    gc.collect()
    logging.config.dictConfig(logging_config())
    # Bound, not listening, while the workers run: the port is checked before any worker starts, and the kernel hands
    # connections only to the workers' listening sockets.
    with user_errors():
        reserved = port_socket(server.host, server.port, listening=False)
    with reserved:
        code = supervise(run_worker, (asdict(spec), asdict(server)), server.workers)
    if code:
        raise typer.Exit(code)


def scoring_with_share(given: dict, workers: int) -> dict:
    """The scoring options given, with each of `workers` processes' encoder threads an equal share of the cores this
    process may use when there are several and --threads was not given: two processes each running every core's
    worth of threads would fight over the cores."""
    if workers == 1 or "threads" in given:
        return given
    return {**given, "threads": max(1, len(os.sched_getaffinity(0)) // workers)}


@dataclass(frozen=True)
class WorkerSpec:
    """What `carelens serve` loads, as plain values a worker process reads back: the registry, the versions, whether
    to redact, the scoring options and the service flags (the API key itself stays in its environment variable)."""

    registry: Optional[str]
    version: str
    redact: bool
    scoring: dict
    service: dict

    def app(self):
        """The service (`create_app`) around the models, loaded and checked, with the settings read."""
        from carelens.inference.api import Scorer, parse_versions
        from carelens.inference.service import create_app
        from carelens.models.scoring import ScoringOptions
        store_text_as_python_objects()
        settings = ServiceFlags(**self.service).settings()
        scorer = Scorer.load(self.registry, parse_versions(self.version), redact=self.redact,
                             scoring=ScoringOptions(**self.scoring))
        # Before the first request: compiling a large booster takes seconds, once per model and machine.
        scorer.compile_trees()
        return create_app(scorer, settings)


def store_text_as_python_objects() -> None:
    """Keep this serving process's pandas text columns in Python objects rather than Arrow arrays: a request's tables
    hold a few rows, on which each Arrow call costs more than the work (a request flagged in batches of 8: 44 → 32 ms,
    answers byte for byte alike), while a batch job's large tables keep pandas' Arrow default."""
    import pandas as pd
    pd.options.mode.string_storage = "python"


def run_worker(spec: dict, server: dict) -> None:
    """One `--workers` process: the models loaded as the command loaded its own, served on the worker's own socket of
    the port until SIGTERM; exit code STARTUP_FAILURE when it cannot start serving."""
    from carelens.inference.service.workers import STARTUP_FAILURE, port_socket
    flags = ServerFlags(**server)
    try:
        app, sockets = WorkerSpec(**spec).app(), [port_socket(flags.host, flags.port)]
    except Exception:  # a process boundary: what went wrong goes to the log, the supervisor reads the exit code
        logging.getLogger("carelens.service").exception("a worker process could not start serving")
        sys.exit(STARTUP_FAILURE)
    serve_until_stopped(app, flags, sockets)
