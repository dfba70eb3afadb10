"""Serving the dashboard: the bind rules, the access token, and uvicorn.

Loopback by default. A token is made for each run (as Jupyter does) and
printed in the address; `token=""` turns it off, which only a loopback bind
may do: anyone who can reach a wider address could otherwise act on the queue.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import socket
from collections.abc import Callable
from typing import Any

from walq.errors import ArgumentError, MissingDependency

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8700


def require_extra() -> None:
    """MissingDependency naming the extra, before any work, if Starlette or uvicorn is absent."""
    try:
        import starlette  # noqa: F401, PLC0415 - an optional extra
        import uvicorn  # noqa: F401, PLC0415
    except ImportError:
        raise MissingDependency(
            "walq ui needs Starlette and uvicorn: pip install 'walq[ui]'"
        ) from None


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) binds only to this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def choose_token(host: str, token: str | None) -> str | None:
    """The access token to use: `token`, a new one if None; "" means none (loopback only)."""
    if token is None:
        return secrets.token_urlsafe(24)
    if token == "":
        if not is_loopback(host):
            raise ArgumentError(
                f"{host}: a dashboard bound beyond loopback needs an access token; "
                "leave --token out to get one"
            )
        return None
    if len(token) < 16:
        raise ArgumentError("--token must be at least 16 characters")
    return token


def address(host: str, port: int, token: str | None) -> str:
    """The address to open (with the token, once)."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def serve(
    target: str,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    read_only: bool = False,
    token: str | None = None,
    echo: Callable[[str], None] = print,
    interval: float = 1.0,
) -> None:
    """Serve the dashboard of the queue at `target` until interrupted."""
    require_extra()
    import uvicorn  # noqa: PLC0415 - an optional extra

    from walq.ui.actions import Ledger, make_actions  # noqa: PLC0415
    from walq.ui.app import create_app  # noqa: PLC0415
    from walq.ui.source import Sampler, open_source  # noqa: PLC0415

    chosen = choose_token(host, token)
    _log_actions()
    source = open_source(target)
    sampler = Sampler(source, min_interval=interval)
    ledger = Ledger(make_actions(target), read_only=read_only)
    app = create_app(sampler, ledger, token=chosen, port=port, read_only=read_only)
    config: dict[str, Any] = {"host": host, "port": port, "log_level": "warning"}
    server = uvicorn.Server(uvicorn.Config(app, **config))
    sock = _bind(host, port)
    sampler.start()
    mode = " (read-only)" if read_only else ""
    echo(f"walq ui{mode}: {source.target}")
    echo(f"open {address(host, sock.getsockname()[1], chosen)}")
    try:
        server.run(sockets=[sock])
    finally:
        sampler.stop()
        source.close()
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket (bound here so that port 0 picks one and the error names it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ArgumentError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _log_actions() -> None:
    """Every action (and a failed read) on stderr, with the time, unless logging is set up."""
    log = logging.getLogger("walq.ui")
    if log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
