"""A real `carelens serve` process on a free loopback port, for the tests and benchmarks that need the server as users
run it."""
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import httpx

CARELENS = Path(sys.executable).with_name("carelens")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.poll() is None, "the server exited before answering"
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"no answer from {url}/v1/health within {seconds} s")


def stopped(server: subprocess.Popen, signum: int = signal.SIGINT, seconds: float = 30) -> int:
    """The exit code of the server once `signum` has stopped it (killed when it takes over `seconds`)."""
    if server.poll() is None:
        server.send_signal(signum)
    try:
        return server.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        server.kill()
        return server.wait()


@contextmanager
def serving(registry: Path, log: Path, *options: str, env: Optional[dict] = None
            ) -> Iterator[tuple[str, subprocess.Popen]]:
    """(base URL, process) of `carelens serve` on the registry, answering health; stdout and stderr go to `log`. The
    process is stopped with SIGINT on the way out unless the caller stopped it."""
    port = free_port()
    command = [str(CARELENS), "serve", "--registry", str(registry), "--port", str(port), *options]
    with log.open("w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, server)
        yield url, server
    finally:
        stopped(server)


def worker_pids(server: subprocess.Popen) -> list[int]:
    """The processes `carelens serve --workers N` started to answer requests (multiprocessing's spawned children)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rpartition(")")[2].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # ended while being read
        if parent == server.pid and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return sorted(found)
