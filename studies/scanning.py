"""Malware scanning of incoming objects: clamd over its INSTREAM protocol, or a built-in EICAR-only scanner.

The built-in scanner exists so the pipeline (and its malware path) runs on a machine without clamd; it knows only
the EICAR test file. Production sets CLAMD_ADDRESS. A scanner failure raises ScanError and never counts as clean.
"""

from __future__ import annotations

import base64
import socket
import struct
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit

__all__ = ["ScanError", "ScanResult", "builtin_scan", "clamd_scan", "eicar_test_bytes", "scan"]

BUILTIN_EICAR_SIGNATURE = "Enclave.Builtin.EICAR"
_CHUNK = 64 * 1024
# EICAR is decoded at run time so that no scanner flags this repository itself.
_EICAR_B64 = b"WDVPIVAlQEFQWzRcUFpYNTQoUF4pN0NDKTd9JEVJQ0FSLVNUQU5EQVJELUFOVElWSVJVUy1URVNULUZJTEUhJEgrSCo="


@dataclass(frozen=True)
class ScanResult:
    clean: bool
    signature: str = ""


class ScanError(RuntimeError):
    """The scanner could not give a verdict (unreachable, timed out, answered with an error)."""


@cache
def eicar_test_bytes() -> bytes:
    """The 68-byte EICAR anti-virus test file."""
    return base64.b64decode(_EICAR_B64)


def builtin_scan(data: bytes) -> ScanResult:
    """Find the EICAR test string anywhere in `data`."""
    if eicar_test_bytes() in data:
        return ScanResult(clean=False, signature=BUILTIN_EICAR_SIGNATURE)
    return ScanResult(clean=True)


def scan(data: bytes, *, address: str | None) -> ScanResult:
    """clamd when an address is configured, else the built-in scanner."""
    if address:
        return clamd_scan(data, address=address)
    return builtin_scan(data)


def clamd_scan(data: bytes, *, address: str, timeout: float = 30) -> ScanResult:
    """Scan `data` with clamd at `address` ("unix:///run/clamd.sock" or "tcp://127.0.0.1:3310")."""
    family, target = _parse_address(address)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(target)
            reply = _instream(sock, data)
    except OSError as exc:
        raise ScanError(f"clamd at {address} failed: {exc.__class__.__name__}: {exc}") from exc
    return _verdict(reply)


def _parse_address(address: str) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
    parts = urlsplit(address)
    if parts.scheme == "unix" and parts.path:
        return socket.AF_UNIX, parts.path
    if parts.scheme == "tcp" and parts.hostname and parts.port:
        family = socket.AF_INET6 if ":" in parts.hostname else socket.AF_INET
        return family, (parts.hostname, parts.port)
    raise ValueError(f"clamd address must be unix:///path or tcp://host:port, not {address!r}")


def _instream(sock: socket.socket, data: bytes) -> str:
    view = memoryview(data)
    try:
        sock.sendall(b"zINSTREAM\0")
        for start in range(0, len(view), _CHUNK):
            chunk = view[start : start + _CHUNK]
            sock.sendall(struct.pack("!L", len(chunk)))
            sock.sendall(chunk)
        sock.sendall(struct.pack("!L", 0))
    except (BrokenPipeError, ConnectionResetError) as exc:
        # clamd hangs up mid-stream when the object exceeds StreamMaxLength; its reason is waiting to be read.
        reply = _read_reply(sock)
        if reply:
            return reply
        raise ScanError(f"clamd closed the connection during the scan: {exc.__class__.__name__}") from exc
    return _read_reply(sock)


def _read_reply(sock: socket.socket) -> str:
    reply = b""
    try:
        while not reply.endswith(b"\0"):
            part = sock.recv(4096)
            if not part:
                break
            reply += part
    except (ConnectionResetError, BrokenPipeError):
        pass
    return reply.rstrip(b"\0").decode("utf-8", errors="replace").strip()


def _verdict(reply: str) -> ScanResult:
    if not reply:
        raise ScanError("clamd gave no answer")
    body = reply.split(":", 1)[1].strip() if reply.startswith("stream:") else reply
    if body == "OK":
        return ScanResult(clean=True)
    if body.endswith(" FOUND"):
        return ScanResult(clean=False, signature=body.removesuffix(" FOUND").strip())
    raise ScanError(f"clamd answered with an error: {reply}")
