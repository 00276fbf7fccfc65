"""The `carelens serve` command: load the models once and answer HTTP requests with uvicorn."""
from __future__ import annotations

import copy
import os
import signal
from dataclasses import dataclass
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


def head_deadline_protocol():
    """uvicorn's HTTP/1.1 protocol with a deadline on every request head: a connection that sends no whole request
    line and headers within the idle timeout (uvicorn's keep-alive timeout) is closed. uvicorn times out only a
    connection idle between two requests, and any byte it receives stops that clock, so a client that connects and
    sends nothing, or its headers a byte at a time, would otherwise hold its connection for ever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadDeadlineProtocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.head_clock = self.loop.call_later(self.timeout_keep_alive, self.close_when_waiting)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.head_clock.cancel()
            self.head_clock = self.loop.call_later(self.timeout_keep_alive, self.close_when_waiting)

        def connection_lost(self, exc) -> None:
            self.head_clock.cancel()
            super().connection_lost(exc)

        def close_when_waiting(self) -> None:
            """Close the connection unless a request is being answered (its head came in time)."""
            answering = self.cycle is not None and not self.cycle.response_complete
            if not answering and not self.transport.is_closing():
                self.transport.close()

    return HeadDeadlineProtocol


def serve_until_stopped(app, flags: ServerFlags) -> None:
    """Run uvicorn on the flags' host and port until SIGINT or SIGTERM, then let requests in flight finish (for at
    most `shutdown_timeout` seconds) and return, so that a stop asked for ends with exit code 0. A connection that
    sends no whole request head within `idle_timeout` seconds (after connecting or after its last answer) is closed."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=flags.host, port=flags.port, access_log=False,
                                           log_config=logging_config(), http=head_deadline_protocol(),
                                           timeout_graceful_shutdown=flags.shutdown_timeout,
                                           timeout_keep_alive=flags.idle_timeout))

    # uvicorn, once it has shut down gracefully, raises the signal it caught again under the handler it found; under
    # Python's defaults SIGTERM would then kill the process (exit -15) and SIGINT raise KeyboardInterrupt. This handler
    # asks the server to stop instead, which also covers a signal that comes before uvicorn installs its own.
    def stop(signum, frame) -> None:
        server.should_exit = True

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
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
    from carelens.inference.api import Scorer, parse_versions
    from carelens.inference.service import create_app
    from carelens.models.scoring import ScoringOptions
    with user_errors():
        settings = service.settings()
        scorer = Scorer.load(registry, parse_versions(version), redact=redact,
                             scoring=ScoringOptions(**scoring.given()))
    models = ", ".join(f"{name} {v}" for name, v in scorer.versions.items())
    console.print(f"serving {models}; API key {'required' if settings.api_key else 'not required'}"
                  f"{'; personal data redacted' if redact else ''}")
    serve_until_stopped(create_app(scorer, settings), server)
