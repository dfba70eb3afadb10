"""The dashboard's web layer: a Starlette app over a Sampler, a Source and a Ledger.

Every request needs the access token: `?token=` once (it becomes a cookie and
the address is cleaned), the cookie after that, or `Authorization: token T`.
A state-changing request also carries the token in the X-Walq-Token header,
which only the page's own script can send (no cross-site form can).
"""

from __future__ import annotations

import hmac
import importlib.resources
import json
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from walq.errors import ArgumentError, UnknownJobError, WalqError
from walq.ops.dump import parse_position
from walq.ui.actions import Ledger
from walq.ui.history import reported_steps, with_reports
from walq.ui.source import HISTORY_PAGE, PAGE, Sampler

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LIST_STATES = ("pending", "scheduled", "running", "dead", "waiting")
TOKEN_HEADER = "x-walq-token"


def cookie_name(port: int) -> str:
    """The token's cookie; cookies ignore ports, so each port's dashboard has its own."""
    return f"walq_ui_{port}"


class TokenGate:
    """ASGI middleware: refuse any request without the access token (403)."""

    def __init__(self, app: ASGIApp, token: str | None, cookie: str) -> None:
        self.app = app
        self.token = token
        self.cookie = cookie

    def _is(self, given: str | None) -> bool:
        return (
            given is not None
            and self.token is not None
            and hmac.compare_digest(given.encode(), self.token.encode())
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        given = dict(query).get("token")
        if self._is(given) and scope["method"] == "GET":
            # Swap the token in the address for a cookie, and drop it from the address.
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            response = RedirectResponse(scope["path"] + (f"?{rest}" if rest else ""), 303)
            response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict")
            await response(scope, receive, send)
            return
        jar: SimpleCookie = SimpleCookie()
        jar.load(headers.get("cookie", ""))
        morsel = jar.get(self.cookie)
        auth = headers.get("authorization", "")
        ok = self._is(morsel.value if morsel else None) or (
            auth.startswith("token ") and self._is(auth[6:])
        )
        if ok and scope["method"] not in ("GET", "HEAD"):
            ok = self._is(headers.get(TOKEN_HEADER))
        if not ok:
            refused = PlainTextResponse(
                "403: this dashboard needs its access token: open the address `walq ui` printed\n",
                status_code=403,
            )
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _static_dir() -> str:
    return str(importlib.resources.files("walq.ui") / "static")


def _page(token: str | None, read_only: bool, where: str) -> str:
    """The page: its frame is rendered here, its numbers by the script (static/ui.js)."""
    template = (importlib.resources.files("walq.ui") / "static" / "index.html").read_text("utf-8")
    settings = json.dumps({"token": token or "", "readOnly": read_only, "where": where})
    return template.replace("{{settings}}", _html(settings)).replace("{{where}}", _html(where))


def _html(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def _int(request: Request, name: str, default: int, lo: int = 0, hi: int = 10**12) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ArgumentError(f"{name} must be a whole number, not {raw[:40]!r}") from None
    return max(lo, min(hi, value))


def _error(exc: WalqError) -> JSONResponse:
    code = 404 if isinstance(exc, UnknownJobError) else 400
    return JSONResponse({"error": str(exc)}, status_code=code)


def create_app(
    sampler: Sampler,
    ledger: Ledger,
    *,
    token: str | None,
    port: int,
    read_only: bool,
) -> ASGIApp:
    """The dashboard app for one queue (behind the token gate)."""
    source = sampler.source

    def index(request: Request) -> HTMLResponse:
        return HTMLResponse(
            _page(token, read_only, source.target),
            headers={"Cache-Control": "no-store", "Content-Security-Policy": _CSP},
        )

    def snapshot(request: Request) -> JSONResponse:
        snap = dict(sampler.latest())
        snap["actions"] = ledger.recent()
        snap["read_only"] = read_only
        snap["can_pause"] = ledger.actions.can_pause and not read_only
        return JSONResponse(snap)

    def jobs(request: Request) -> JSONResponse:
        state = request.query_params.get("state", "dead")
        try:
            if state not in LIST_STATES:
                raise ArgumentError(f"state must be one of {', '.join(LIST_STATES)}")
            page = source.jobs(
                state, _int(request, "after", 0), _int(request, "limit", PAGE, 1, 500)
            )
        except WalqError as exc:
            return _error(exc)
        out = page.as_dict()
        if state == "running":  # each one's worker, process and time, as the workers report
            for row in out["rows"]:
                info = sampler.running(row["id"]) or {}
                row.update({k: v for k, v in info.items() if v is not None})
        return JSONResponse(out)

    def job(request: Request) -> JSONResponse:
        try:
            out = source.job(int(request.path_params["jid"]))
        except WalqError as exc:
            return _error(exc)
        info = sampler.running(out["id"])
        if info is not None:  # the running attempt's worker, as its worker reports
            out["running"] = info
        return JSONResponse(out)

    def history(request: Request) -> JSONResponse:
        after = request.query_params.get("after")
        try:
            start = parse_position(after) if after else None
            limit = _int(request, "limit", HISTORY_PAGE, 1, 1000)
            jid = int(request.path_params["jid"])
            out = source.history(jid, start, limit)
        except WalqError as exc:
            return _error(exc)
        # Which worker process ran each attempt and for how long: the log does not say; the
        # workers' reports do, for the attempts that ended since the dashboard started.
        reports = sampler.reports(jid)
        if "note" in out:  # no log to read: the attempts its workers reported, if any
            out["attempts"] = reported_steps(reports)
        else:
            with_reports(out["attempts"], reports)
        return JSONResponse(out)

    def find(request: Request) -> JSONResponse:
        """A job by id ("123") or by the idempotency key an unfinished job holds."""
        q = request.query_params.get("q", "").strip()
        if q.isdigit():
            return JSONResponse({"id": int(q)})
        jid = source.find_key(q) if q else None
        if jid is None:
            why = f"no unfinished job holds the key {q[:80]!r}" if q else "give a job id or key"
            return _error(UnknownJobError(why))
        return JSONResponse({"id": jid})

    async def action(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(ArgumentError("the request body must be JSON"))
        if not isinstance(body, dict):
            return _error(ArgumentError("the request body must be a JSON object"))
        name = str(body.get("action", ""))
        from starlette.concurrency import run_in_threadpool  # noqa: PLC0415

        done = await run_in_threadpool(ledger.run, "ui", name, body)
        await run_in_threadpool(sampler.sample)  # the page's next look shows the result
        status = 200 if done.ok else (403 if read_only else 409)
        return JSONResponse(
            {"ok": done.ok, "result": done.result, "action": name, "target": done.target},
            status_code=status,
        )

    routes = [
        Route("/", index),
        Route("/api/snapshot", snapshot),
        Route("/api/jobs", jobs),
        Route("/api/job/{jid:int}", job),
        Route("/api/job/{jid:int}/history", history),
        Route("/api/find", find),
        Route("/api/action", action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=_static_dir()), name="static"),
    ]
    app = Starlette(routes=routes)
    return TokenGate(app, token, cookie_name(port))


# Only this origin's own script and styles; no inline script runs, nothing is fetched elsewhere.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
