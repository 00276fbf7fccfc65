"""The worker processes of `carelens serve --workers N`: each listens on its own socket of one port, replaced if it dies."""
from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
from typing import Callable

from carelens.data.errors import UsageError

logger = logging.getLogger("carelens.service")

#: The exit code of a worker that could not start serving (uvicorn's own for a failed startup): every replacement would
#: fail the same way, so the others are stopped instead.
STARTUP_FAILURE = 3


def port_socket(host: str, port: int, listening: bool = True) -> socket.socket:
    """A TCP socket on host:port that other sockets of this user may share (SO_REUSEPORT): the kernel then hands each
    new connection to one of the listening ones, so that no worker takes every connection of a burst (with one
    shared socket, the first to wake accepted all eight clients' connections and the other worker idled)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({error.strerror}); expected an address "
                         f"of this machine and a port no other program listens on") from None
    if listening:
        sock.listen(2048)
    return sock


def supervise(target: Callable, args: tuple, workers: int) -> int:
    """Run `workers` processes of `target(*args)` until SIGINT or SIGTERM, then stop each with SIGTERM (each finishes
    its requests in flight) and wait for them: 0. A worker that dies is replaced; one that exits with STARTUP_FAILURE
    stops them all: 1."""
    spawn = multiprocessing.get_context("spawn")
    stopping, failed = threading.Event(), False

    def start() -> multiprocessing.Process:
        process = spawn.Process(target=target, args=args, daemon=False)
        process.start()
        return process

    def stop(signum, frame) -> None:
        stopping.set()

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        processes = [start() for _ in range(workers)]
        while not stopping.wait(0.5):
            for index, process in enumerate(processes):
                if process.is_alive():
                    continue
                if process.exitcode == STARTUP_FAILURE:
                    logger.error(f"worker process {process.pid} could not start serving; stopping the others")
                    failed = True
                    stopping.set()
                    break
                logger.warning(f"worker process {process.pid} ended (exit code {process.exitcode}); starting another")
                processes[index] = start()
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 1 if failed else 0
