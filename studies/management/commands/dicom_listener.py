"""`manage.py dicom_listener`: the DICOM listener (C-ECHO, C-STORE) in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.net.scp import start_listener, stop_listener

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run the DICOM listener (C-ECHO and C-STORE into the tenants' archives) until SIGTERM or SIGINT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=None, help=f"address to listen on (default {settings.DICOM_HOST})")
        parser.add_argument("--port", type=int, default=None, help=f"TCP port (default {settings.DICOM_PORT})")

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()

        def request_stop(signum: int, frame: Any) -> None:
            stop.set()

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            try:
                server = start_listener(options["host"], options["port"])
            except OSError as exc:
                raise CommandError(f"Cannot listen for DICOM: {exc}") from exc
            host, port = server.server_address[:2]
            message = f"DICOM listener on {host}:{port}" + (" (DICOM TLS)" if server.ssl_context else "")
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
