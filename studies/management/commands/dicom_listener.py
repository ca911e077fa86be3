"""`manage.py dicom_listener`: the DICOM listener (C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE) in the foreground until
SIGTERM or SIGINT.

With `--processes N` (N > 1) this process starts N listener processes that share the port (SO_REUSEPORT: the
kernel spreads incoming associations over them, so every core receives), forwards SIGTERM and SIGINT to them, and
waits for them. A listener process that ends by itself is not restarted behind anyone's back: the others are
stopped and the command fails, so that the service manager (or `make run`) sees it and decides.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper

from portal.web.runtime import process_settle
from studies.net.scp import STOP_GRACE_SECONDS, start_listener, stop_listener

logger = logging.getLogger(__name__)

READY_SECONDS = 60.0
READY_LINE = "DICOM listener on "


class Command(BaseCommand):
    help = "Run the DICOM listener (C-ECHO and C-STORE into the tenants' archives) until SIGTERM or SIGINT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=None, help=f"address to listen on (default {settings.DICOM_HOST})")
        parser.add_argument("--port", type=int, default=None, help=f"TCP port (default {settings.DICOM_PORT})")
        parser.add_argument(
            "--processes",
            type=int,
            default=settings.DICOM_LISTENER_PROCESSES,
            help="listener processes sharing the port (SO_REUSEPORT); default DICOM_LISTENER_PROCESSES "
            f"({settings.DICOM_LISTENER_PROCESSES}); `make run` starts one per core",
        )
        # Set by the parent of `--processes N` on each of its children: bind with SO_REUSEPORT.
        parser.add_argument("--reuse-port", action="store_true", help="share the port with other listeners")

    def handle(self, *args: Any, **options: Any) -> None:
        processes = options["processes"]
        if processes < 1:
            raise CommandError("--processes must be at least 1.")
        if processes == 1:
            self._serve(options["host"], options["port"], reuse_port=options["reuse_port"])
        else:
            self._supervise(options["host"], options["port"], processes)

    # One listener, in this process
    # --------------------------------------------------------------------------

    def _serve(self, host: str | None, port: int | None, *, reuse_port: bool) -> None:
        stop = threading.Event()

        def request_stop(signum: int, frame: Any) -> None:
            stop.set()

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            try:
                server = start_listener(host, port, reuse_port=reuse_port)
            except OSError as exc:
                raise CommandError(f"Cannot listen for DICOM: {exc}") from exc
            # Loaded and listening: start-up objects out of the cycle collector's reach, large buffers kept.
            process_settle(what=f"DICOM listener process {os.getpid()}")
            bound_host, bound_port = server.server_address[:2]
            message = f"{READY_LINE}{bound_host}:{bound_port}" + (" (DICOM TLS)" if server.ssl_context else "")
            if reuse_port:
                message += f" (process {os.getpid()})"
            logger.info(message)
            self.stdout.write(message)
            self.stdout.flush()
            # Event.wait in short slices: the signal handler runs between them, in this (the main) thread.
            while not stop.wait(0.5):
                pass
            self.stdout.write("DICOM listener stopping")
            stop_listener(server)
            logger.info("DICOM listener stopped")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # N listeners on one port, each its own process
    # --------------------------------------------------------------------------

    def _supervise(self, host: str | None, port: int | None, processes: int) -> None:
        host = settings.DICOM_HOST if host is None else host
        port = settings.DICOM_PORT if port is None else port
        # Port 0 asks for a free port: it is chosen here, once, by a socket that binds it with SO_REUSEPORT but
        # never listens (the kernel gives connections to listening sockets only), held until the children listen.
        placeholder = None
        if port == 0:
            placeholder = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            placeholder.bind((host, 0))
            port = int(placeholder.getsockname()[1])
        stop = threading.Event()

        def request_stop(signum: int, frame: Any) -> None:
            stop.set()

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        children: list[subprocess.Popen[str]] = []
        ready = threading.Semaphore(0)
        try:
            for _ in range(processes):
                child = subprocess.Popen(  # noqa: S603 -- this interpreter and this command, no shell
                    [sys.executable, "-m", "django", "dicom_listener", "--host", host, "--port", str(port),
                     "--processes", "1", "--reuse-port"],
                    cwd=settings.BASE_DIR, env=_child_environment(), stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                children.append(child)
                assert child.stdout is not None
                threading.Thread(
                    target=_forward, args=(child.stdout, self.stdout, ready), daemon=True,
                    name=f"listener-{child.pid}-output",
                ).start()  # fmt: skip
            deadline = time.monotonic() + READY_SECONDS
            for n in range(processes):
                while not ready.acquire(timeout=0.2):
                    ended = [c for c in children if c.poll() is not None]
                    if ended:
                        raise CommandError(f"A DICOM listener process ended with {ended[0].returncode} at start.")
                    if stop.is_set():
                        return
                    if time.monotonic() > deadline:
                        raise CommandError(f"Only {n} of {processes} DICOM listener processes started in time.")
            pids = ", ".join(str(c.pid) for c in children)
            message = f"{READY_LINE}{host}:{port} ({processes} processes: {pids})"
            logger.info(message)
            self.stdout.write(message)
            self.stdout.flush()
            if placeholder is not None:
                placeholder.close()
                placeholder = None
            while not stop.wait(0.5):
                ended = [c for c in children if c.poll() is not None]
                if ended:
                    logger.error(
                        "DICOM listener process %d ended by itself with %s: stopping the others",
                        ended[0].pid, ended[0].returncode,
                    )  # fmt: skip
                    raise CommandError(f"A DICOM listener process ended by itself ({ended[0].returncode}).")
            self.stdout.write("DICOM listener stopping")
        finally:
            if placeholder is not None:
                placeholder.close()
            _stop_children(children)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        logger.info("DICOM listener stopped")


def _child_environment() -> dict[str, str]:
    """This process's environment (DJANGO_SETTINGS_MODULE and the rest), with the project importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(settings.BASE_DIR), env.get("PYTHONPATH", "")) if p)
    return env


def _forward(source: IO[str], target: OutputWrapper, ready: threading.Semaphore) -> None:
    """Copy a child's standard output to ours, line by line; its first "listening" line counts it as ready."""
    counted = False
    for line in source:
        target.write(line.rstrip("\n"))
        target.flush()
        if not counted and line.startswith(READY_LINE):
            counted = True
            ready.release()


def _stop_children(children: list[subprocess.Popen[str]]) -> None:
    """SIGTERM to every child still running; each gets the listener's grace (open associations finish) and a little
    more, then is killed."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS + 10
    for child in children:
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            logger.error("DICOM listener process %d did not stop in time: killed", child.pid)
            child.kill()
            child.wait(timeout=10)
