"""uvicorn's HTTP/1.1 protocol with a deadline on every request head."""
from __future__ import annotations

from uvicorn.protocols.http.h11_impl import H11Protocol


class HeadDeadlineProtocol(H11Protocol):
    """A connection that sends no whole request line and headers within the idle timeout (uvicorn's keep-alive
    timeout) is closed. uvicorn times out only a connection idle between two requests, and any byte it receives stops
    that clock, so a client that connects and sends nothing, or its headers a byte at a time, would otherwise hold its
    connection for ever."""

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
