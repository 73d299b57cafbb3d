"""The console's HTTP server: login, the single-page app, and the JSON API behind it.

    GET  /login              the login form (server-rendered: it works without script, and it
                             says why logging in cannot work when no credential exists)
    POST /login              user, password, csrf (double-submit cookie) → session cookie
    POST /logout             needs the session and its CSRF token
    GET  /                   the app (static/console.html, console.js, console.css)
    GET  /static/<file>      its assets, packaged with meshpilot: nothing is loaded from a CDN
    GET  /api/session        user, expiry and the CSRF token the app sends with POSTs
    GET  /api/overview       counts, analysis summary, stats collector state
    GET  /api/graph          ?aggregate=auto|workload|service|namespace&namespace=&q=&focus=
                             &depth=1&limit=300 (see console/graph.py)
    GET  /api/services       every service with its inbound traffic
    GET  /api/services/{namespace}/{host}   endpoints per registry, config with analysis, traffic
    GET  /api/proxies        every connected proxy with its sync status per type
    GET  /api/proxies/{id}   sync status, push history (ACK/NACK, time to apply), traffic
    GET  /api/config         every config with its analysis messages, rejected documents
    GET  /api/dashboards     Prometheus/Grafana/Zipkin links the server was given

Everything but `/login` and `/static/` needs a live session: pages redirect to the login form,
the API answers 401 with the reason (expired, logged out). Every response carries a strict
Content-Security-Policy (scripts and styles from this server only) and is never cached.
Building the graph can take a moment on a large mesh: it runs in a worker thread, on inputs
captured on the event loop.
"""

from __future__ import annotations

import asyncio
import html
import importlib.resources
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from meshpilot.console import api, smi
from meshpilot.console.auth import (
    Credentials,
    LoginLimiter,
    Session,
    Sessions,
    check_login,
    load_credentials,
)
from meshpilot.console.graph import DEFAULT_LIMIT, build, render
from meshpilot.console.metrics import MeshTrafficMetrics
from meshpilot.console.settings import ConsoleSettings
from meshpilot.console.stats import StatsCollector
from meshpilot.xds.discovery import DiscoveryServer

log = logging.getLogger("meshpilot.console")

SESSION = web.RequestKey("session", Session)
SESSION_COOKIE = "meshpilot_session"
LOGIN_CSRF_COOKIE = "meshpilot_login_csrf"
STATIC_FILES = {
    "console.js": "application/javascript",
    "console.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: browsers then send `Origin: null` on POSTs, which the origin check refuses.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _asset(name: str) -> bytes:
    return (importlib.resources.files("meshpilot.console") / "static" / name).read_bytes()


def _dumps(data: Any) -> str:
    return json.dumps(data, default=str)


@dataclass
class Console:
    """A running console: its server, its stats collector and their task."""

    runner: web.AppRunner
    port: int
    stats: StatsCollector
    credentials: Credentials
    sessions: Sessions
    limiter: LoginLimiter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    metrics: MeshTrafficMetrics | None = None

    async def stop(self) -> None:
        if self.metrics is not None:
            self.metrics.unregister()
            smi.detach(self.metrics.server)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.runner.cleanup()


@dataclass
class _State:
    server: DiscoveryServer
    settings: ConsoleSettings
    stats: StatsCollector
    credentials: Credentials
    sessions: Sessions
    limiter: LoginLimiter
    shell: str


# Pages -----------------------------------------------------------------------------------------


def _login_page(state: _State, message: str = "", csrf: str = "", next_url: str = "/") -> str:
    problem = state.credentials.problem
    notice = (f'<p class="notice" id="message" role="alert">{html.escape(message)}</p>'
              if message else "")
    if problem:
        body = (
            '<div class="problem" id="problem" role="alert"><h2>Login is not possible yet'
            f"</h2><p>{html.escape(problem)}</p></div>"
        )
    else:
        body = f"""{notice}
<form method="post" action="/login" id="login">
  <input type="hidden" name="csrf" value="{html.escape(csrf)}">
  <input type="hidden" name="next" value="{html.escape(next_url)}">
  <label>User <input name="user" id="user" autocomplete="username" required autofocus></label>
  <label>Password <input name="password" id="password" type="password"
    autocomplete="current-password" required></label>
  <button type="submit" id="login-button">Log in</button>
</form>
<p class="hint" id="hint">{html.escape(state.credentials.hint)}</p>"""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>meshpilot console: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="/static/favicon.svg"><link rel="stylesheet" href="/static/console.css">
</head><body class="login"><main><h1>meshpilot console</h1>{body}</main></body></html>
"""


def _safe_next(value: str) -> str:
    """Only a path on this server: never `//host` or `https://…` (no open redirect)."""
    parts = urlsplit(value)
    if not value.startswith("/") or value.startswith("//") or parts.scheme or parts.netloc:
        return "/"
    return value


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html")


def _json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _client(request: web.Request) -> str:
    return request.remote or "unknown"


def _set_session_cookie(response: web.StreamResponse, value: str, ttl: float) -> None:
    response.set_cookie(
        SESSION_COOKIE, value, max_age=int(ttl), path="/", httponly=True, samesite="Strict"
    )


# The app ---------------------------------------------------------------------------------------


def make_app(state: _State) -> web.Application:
    sessions, limiter = state.sessions, state.limiter

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        public = path in ("/login", "/favicon.ico") or path.startswith("/static/")
        if request.method == "POST" and not _same_origin(request):
            response: web.StreamResponse = _json_error(403, "cross-origin request refused")
        elif public:
            response = await handler(request)
        else:
            session, why = sessions.inspect(request.cookies.get(SESSION_COOKIE))
            if session is None:
                response = _unauthenticated(request, why)
            elif request.method == "POST" and not sessions.check_csrf(
                session, request.headers.get("X-CSRF-Token", "") or await _form_csrf(request)
            ):
                response = _json_error(403, "missing or wrong CSRF token: reload the page")
            else:
                request[SESSION] = session
                response = await handler(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    def _unauthenticated(request: web.Request, why: str) -> web.Response:
        reason = {"expired": "your session expired", "logged out": "you logged out",
                  "invalid": "your session is not valid (the server may have restarted)"}.get(
                      why, "log in first")
        if request.path.startswith("/api/"):
            return _json_error(401, f"login required: {reason}", login="/login", reason=why)
        target = request.path_qs if request.method == "GET" else "/"
        location = f"/login?next={quote(target, safe='')}"
        if why in ("expired", "logged out", "invalid"):
            location += f"&reason={quote(why)}"
        raise web.HTTPSeeOther(location)

    async def login_form(request: web.Request) -> web.Response:
        session = sessions.check(request.cookies.get(SESSION_COOKIE))
        next_url = _safe_next(request.query.get("next", "/"))
        if session is not None and not state.credentials.problem:
            raise web.HTTPSeeOther(next_url)
        reason = request.query.get("reason", "")
        message = {"expired": "Your session expired: log in again.",
                   "logged out": "You are logged out.",
                   "invalid": "Your session is no longer valid: log in again."}.get(reason, "")
        token = secrets.token_urlsafe(24)
        status = 503 if state.credentials.problem else 200
        response = _html(_login_page(state, message, token, next_url), status)
        response.set_cookie(LOGIN_CSRF_COOKIE, token, path="/login", httponly=True,
                            samesite="Strict", max_age=3600)
        return response

    async def login(request: web.Request) -> web.Response:
        form = await request.post()
        next_url = _safe_next(str(form.get("next", "/")))
        token = secrets.token_urlsafe(24)

        def page(message: str, status: int) -> web.Response:
            response = _html(_login_page(state, message, token, next_url), status)
            response.set_cookie(LOGIN_CSRF_COOKIE, token, path="/login", httponly=True,
                                samesite="Strict", max_age=3600)
            return response

        if state.credentials.problem:
            return page("", 503)
        sent = str(form.get("csrf", ""))
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not sent or not expected or not secrets.compare_digest(sent, expected):
            return page("The login form expired or came from elsewhere: try again.", 403)
        user = str(form.get("user", ""))
        password = str(form.get("password", ""))
        keys = (f"client:{_client(request)}", f"user:{user}")
        wait = limiter.retry_after(keys)
        if wait > 0:
            return page(f"Too many failed logins: try again in {int(wait) + 1} s.", 429)
        # scrypt takes ~0.1 s by design: never on the event loop.
        if not await asyncio.to_thread(check_login, state.credentials, user, password):
            limiter.failed(keys)
            log.warning("console: failed login for user %r from %s", user, _client(request))
            return page("Wrong user name or password.", 401)
        limiter.succeeded(keys)
        _, cookie = sessions.issue(user)
        log.info("console: %s logged in from %s", user, _client(request))
        response = web.HTTPSeeOther(next_url)
        _set_session_cookie(response, cookie, state.settings.session_ttl)
        response.del_cookie(LOGIN_CSRF_COOKIE, path="/login")
        raise response

    async def logout(request: web.Request) -> web.Response:
        session = request[SESSION]
        sessions.revoke(session)
        response = web.HTTPSeeOther("/login?reason=logged%20out")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    async def shell(request: web.Request) -> web.Response:
        session = request[SESSION]
        return _html(state.shell.replace("{{csrf}}", html.escape(sessions.csrf_token(session)))
                     .replace("{{user}}", html.escape(session.user)))

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound()
        return web.Response(body=_asset(name), content_type=STATIC_FILES[name])

    async def favicon(_: web.Request) -> web.Response:
        return web.Response(body=_asset("favicon.svg"), content_type="image/svg+xml")

    def json_route(build_answer: Callable[[web.Request], Any]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                data = build_answer(request)
                if asyncio.iscoroutine(data):
                    data = await data
            except api.NotFound as error:
                return _json_error(404, str(error))
            except ValueError as error:
                return _json_error(400, str(error))
            return web.json_response(data, dumps=_dumps)

        return handler

    server, stats = state.server, state.stats

    def session_info(request: web.Request) -> Any:
        session = request[SESSION]
        return {"user": session.user, "expires": session.expires,
                "csrf": sessions.csrf_token(session)}

    async def graph(request: web.Request) -> Any:
        query = request.query
        try:
            depth = int(query.get("depth", "1"))
            limit = int(query.get("limit", str(DEFAULT_LIMIT)))
        except ValueError as error:
            raise ValueError(f"depth and limit must be numbers: {error}") from error
        snapshot, views = server.snapshot, api.proxy_views(server, stats)

        def compute() -> dict[str, Any]:
            return render(build(snapshot, views), level=query.get("aggregate", "auto"),
                          namespace=query.get("namespace", ""), query=query.get("q", ""),
                          focus=query.get("focus", ""), depth=depth, max_nodes=limit)

        answer = await asyncio.to_thread(compute)
        answer["version"] = snapshot.version if snapshot is not None else ""
        answer["stats"] = stats.status()
        return answer

    app = web.Application(middlewares=[guard])
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/", shell)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/favicon.ico", favicon)
    routes: Mapping[str, Callable[[web.Request], Any]] = {
        "/api/session": session_info,
        "/api/overview": lambda _: api.overview(server, stats),
        "/api/graph": graph,
        "/api/services": lambda _: api.services(server, stats),
        "/api/services/{namespace}/{host}": lambda r: api.service(
            server, stats, r.match_info["namespace"], r.match_info["host"]),
        "/api/proxies": lambda _: api.proxies(server, stats),
        "/api/proxies/{id}": lambda r: api.proxy(server, stats, r.match_info["id"]),
        "/api/config": lambda _: api.config(server),
        "/api/dashboards": lambda _: api.dashboards(state.settings.dashboards),
    }
    for path, answer in routes.items():
        app.router.add_get(path, json_route(answer))
    return app


def _same_origin(request: web.Request) -> bool:
    """A browser names the page a POST came from in Origin; it must be this server."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser, or an old one: the CSRF token still has to match
    return origin != "null" and urlsplit(origin).netloc == request.host


async def _form_csrf(request: web.Request) -> str:
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return str((await request.post()).get("csrf", ""))
    return ""


async def start_console(
    server: DiscoveryServer,
    settings: ConsoleSettings,
    *,
    stats: StatsCollector | None = None,
    credentials: Credentials | None = None,
    sessions: Sessions | None = None,
    limiter: LoginLimiter | None = None,
    collect: bool = True,
) -> Console:
    """Serve the console on `settings.address` and start polling the proxies' stats.

    Tests pass their own collector (fed synthetic samples, `collect=False`), credentials and
    clocks."""
    if credentials is None:
        credentials = await asyncio.to_thread(load_credentials, settings)
    if credentials.problem:
        log.error("console: %s", credentials.problem)
    else:
        log.info("console credentials: %s", credentials.origin)
    stats = stats or StatsCollector(server, settings)
    state = _State(
        server, settings, stats, credentials,
        sessions or Sessions(settings.session_ttl),
        limiter or LoginLimiter(),
        _asset("console.html").decode(),
    )
    runner = web.AppRunner(make_app(state), access_log=None)
    await runner.setup()
    host, _, port = settings.address.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]"), int(port))
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    bound = int(port)
    for addr in runner.addresses:
        bound = int(addr[1])
    console = Console(runner, bound, stats, credentials, state.sessions, state.limiter)
    console.metrics = MeshTrafficMetrics(server, stats)
    console.metrics.register()
    smi.attach(server, stats)  # the SMI Traffic Metrics API on the debug address reads it
    if collect:
        console.tasks.append(asyncio.create_task(stats.run(), name="console-stats"))
    return console
