"""The agent console: sign-in, presence, the live call with its client card, and the punctuality dashboard."""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import logging
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from jinja2 import Environment, PackageLoader, select_autoescape
from litestar import Request, Response, get, post, put
from litestar.datastructures import Cookie, State
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.openapi import ResponseSpec
from litestar.params import Body, FromPath, JSONBody, PathParameter
from litestar.response import Redirect

from services.callback.dispatcher import Dispatcher
from services.callback.organisations import OrgQuery, TenancyDependency
from services.callback.store import agents as agent_store
from services.callback.store import history, stats
from services.callback.telephony import SimulatedPbx
from services.callback.usecases.presence import Presence
from services.callback.usecases.sites import SiteAdmin
from services.common.auth_guard import CurrentPrincipal
from services.common.errors import ApiError, error_responses
from services.common.web import runtime_extra

log = logging.getLogger(__name__)

SESSION_COOKIE = "abonent_agent"
SESSION_TTL_S = 12 * 3600
STATIC_DIR = Path(__file__).parent / "static"
# Pages of the console are same-origin only; the CSP keeps injected markup from running anything.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self';"
    " frame-ancestors 'none'",
    "Cache-Control": "no-store",
}

_templates = Environment(
    loader=PackageLoader("services.callback", "templates"), autoescape=select_autoescape()
)

PresenceDependency = NamedDependency[Presence]
SiteAdminDependency = NamedDependency[SiteAdmin]


class AgentSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An agent as the back office registers it."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200, examples=["Olga"])]
    password: Annotated[str, msgspec.Meta(min_length=8, max_length=200)]
    queues: list[Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_\-]{1,40}$")]] = msgspec.field(
        default_factory=lambda: ["default"]
    )
    endpoint: Annotated[str, msgspec.Meta(min_length=1, max_length=200, examples=["PJSIP/101"])] = "sim"


class AgentView(msgspec.Struct, kw_only=True):
    login: str
    org_id: str
    name: str
    queues: list[str]
    endpoint: str


class PresenceChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    status: Literal["ready", "break", "offline"]


class ClientCard(msgspec.Struct, kw_only=True):
    """What the agent sees before the visitor's phone rings."""

    callback_id: uuid.UUID
    phone: str
    site_key: str
    site_name: str
    page_url: str
    referrer: str
    utm: dict[str, str]
    requested_at: dt.datetime
    promised_latest: dt.datetime
    waited_s: float
    attempt: int
    max_attempts: int
    earlier: list[history.HistoryEntry]


class CallView(msgspec.Struct, kw_only=True):
    attempt_id: uuid.UUID
    stage: str
    card: ClientCard


class ConsoleState(msgspec.Struct, kw_only=True):
    login: str
    name: str
    status: str
    online: bool
    call: CallView | None
    can_simulate: bool


# --- sessions -------------------------------------------------------------------------------------------


def _presence(state: State) -> Presence:
    return runtime_extra(state, "presence", Presence)


def _dialer(state: State) -> Dispatcher:
    return runtime_extra(state, "dialer", Dispatcher)


def _session_mac(presence: Presence, agent_id: str, expires: int) -> str:
    mac = presence.protector.sign(f"agent-session|{agent_id}|{expires}".encode())[:18]
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def session_cookie(presence: Presence, agent_id: uuid.UUID) -> Cookie:
    expires = int(time.time()) + SESSION_TTL_S
    value = f"{agent_id}.{expires}.{_session_mac(presence, str(agent_id), expires)}"
    return Cookie(
        key=SESSION_COOKIE,
        value=value,
        httponly=True,
        samesite="strict",
        path="/agent",
        max_age=SESSION_TTL_S,
    )


def session_agent_id(request: Request[Any, Any, Any]) -> uuid.UUID | None:
    raw = request.cookies.get(SESSION_COOKIE, "")
    try:
        agent_id, expires, mac = raw.split(".")
        if int(expires) < time.time():
            return None
        if not hmac.compare_digest(mac, _session_mac(_presence(request.app.state), agent_id, int(expires))):
            return None
        return uuid.UUID(agent_id)
    except ValueError:
        return None


async def signed_in_agent(request: Request[Any, Any, Any]) -> agent_store.AgentRow:
    agent_id = session_agent_id(request)
    agent = None
    if agent_id is not None:
        agent = await _presence(request.app.state).agent(agent_id)
    if agent is None:
        raise ApiError(401, "unauthorized", "Sign in to the agent console first")
    return agent


def page(template: str, **context: Any) -> Response[str]:
    html = _templates.get_template(template).render(**context)
    return Response(html, media_type="text/html", headers=PAGE_HEADERS)


# --- back office -------------------------------------------------------------------------------------------


class AgentReleased(msgspec.Struct, kw_only=True):
    login: str
    attempt_id: uuid.UUID | None  # the call the agent was held by, now closed


def admin_routes(guard: Any) -> list[Any]:
    @put(
        "/v1/admin/agents/{login:str}",
        guards=[guard],
        tags=["admin"],
        summary="Create or replace an agent",
        # 404: `?org=` names no organisation (or not the caller's); 409: the login is another one's.
        responses={201: ResponseSpec(AgentView, description="Created"), **error_responses(404, 409)},
    )
    async def put_agent(
        login: Annotated[str, PathParameter(pattern=r"^[a-z0-9._\-]{2,64}$")],
        data: JSONBody[AgentSettings],
        presence: PresenceDependency,
        tenancy: TenancyDependency,
        org: OrgQuery = None,
    ) -> Response[AgentView]:
        """The agent works for the caller's organisation (a platform admin names it with `?org=`): only
        its requests are ever given to them."""
        agent, created = await presence.put_agent(
            login,
            name=data.name,
            password=data.password,
            queues=data.queues,
            endpoint=data.endpoint,
            tenancy=tenancy,
            org=org,
        )
        view = AgentView(
            login=login, org_id=agent.org_id, name=data.name, queues=data.queues, endpoint=data.endpoint
        )
        return Response(view, status_code=201 if created else 200)

    @get(
        "/v1/admin/sites/{site_key:str}/punctuality",
        guards=[guard],
        tags=["admin"],
        summary="Promises kept and time to dial (last 30 days)",
    )
    async def site_punctuality(
        site_key: FromPath[str], site_admin: SiteAdminDependency, tenancy: TenancyDependency
    ) -> stats.Punctuality:
        return await site_admin.punctuality(site_key, dt.datetime.now(dt.UTC), tenancy)

    @post(
        "/v1/admin/agents/{login:str}/release",
        guards=[guard],
        tags=["admin"],
        summary="Free an agent stuck with a call (hangs it up and closes its attempt)",
        status_code=200,
    )
    async def release_agent(
        login: FromPath[str],
        request: Request[Any, Any, Any],
        principal: CurrentPrincipal,
        tenancy: TenancyDependency,
    ) -> AgentReleased:
        dialer = _dialer(request.app.state)
        attempt_id = await _presence(request.app.state).release_agent(
            login, dialer.attempts.force_end, tenancy
        )
        log.warning(
            "agent released by an operator",
            extra={"agent": login, "attempt": attempt_id.hex if attempt_id else None, "by": principal.who},
        )
        dialer.wake()
        return AgentReleased(login=login, attempt_id=attempt_id)

    return [put_agent, site_punctuality, release_agent]


# --- pages ---------------------------------------------------------------------------------------------


@get("/agent", include_in_schema=False)
async def console_page(request: Request[Any, Any, Any]) -> Response[str] | Redirect:
    if session_agent_id(request) is None:
        return Redirect("/agent/login")
    return page("agent_console.html")


@get("/agent/login", include_in_schema=False)
async def login_page() -> Response[str]:
    return page("agent_login.html", error=None)


class LoginForm(msgspec.Struct, kw_only=True):
    login: str = ""
    password: str = ""


@post("/agent/login", include_in_schema=False, status_code=303)
async def login(
    data: Annotated[LoginForm, Body(media_type=RequestEncodingType.URL_ENCODED)], presence: PresenceDependency
) -> Response[str] | Redirect:
    agent = await presence.sign_in(data.login, data.password)
    if agent is None:
        response = page("agent_login.html", error="Wrong login or password")
        response.status_code = 401
        return response
    redirect = Redirect("/agent", status_code=303)
    redirect.cookies.append(session_cookie(presence, agent.id))
    return redirect


@get("/agent/dashboard", include_in_schema=False)
async def dashboard(
    request: Request[Any, Any, Any], site_admin: SiteAdminDependency
) -> Response[str] | Redirect:
    agent_id = session_agent_id(request)
    agent = None if agent_id is None else await _presence(request.app.state).agent(agent_id)
    if agent is None:
        return Redirect("/agent/login")
    # Only the agent's own organisation's sites: another's are not theirs to see.
    rows = await site_admin.punctuality_of_org(agent.org_id, dt.datetime.now(dt.UTC))
    return page("agent_dashboard.html", rows=rows)


@get("/agent/static/{name:str}", include_in_schema=False)
async def static_file(name: FromPath[str]) -> Response[bytes]:
    if name not in ("console.js", "console.css"):
        raise ApiError(404, "not_found", "No such file")
    media = "text/javascript" if name.endswith(".js") else "text/css"
    return Response(
        (STATIC_DIR / name).read_bytes(), media_type=media, headers={"Cache-Control": "public, max-age=300"}
    )


# --- console API ---------------------------------------------------------------------------------------

# The console API answers only the agent's own session cookie (not a back-office token): 401 without it.
SIGNED_IN = error_responses(401)


async def console_state(request: Request[Any, Any, Any], agent: agent_store.AgentRow) -> ConsoleState:
    dialer = _dialer(request.app.state)
    presence, live = await _presence(request.app.state).heartbeat(agent)
    call = None
    if live is not None:
        row = live.callback
        call = CallView(
            attempt_id=live.attempt.id,
            stage=live.attempt.state,
            card=ClientCard(
                callback_id=row.id,
                phone=live.phone,
                site_key=row.site_key,
                site_name=live.site_name,
                page_url=row.page_url,
                referrer=row.referrer,
                utm=row.utm,
                requested_at=row.requested_at,
                promised_latest=row.promised_latest,
                waited_s=round((dt.datetime.now(dt.UTC) - row.requested_at).total_seconds(), 1),
                attempt=live.attempt.attempt_no,
                max_attempts=row.max_attempts,
                earlier=live.earlier,
            ),
        )
    return ConsoleState(
        login=agent.login,
        name=agent.name,
        status=presence.status if presence else "offline",
        online=presence is not None,
        call=call,
        # Answer buttons only where people answer by hand: an automatic simulated call would refuse them.
        can_simulate=isinstance(dialer.adapter, SimulatedPbx) and dialer.adapter.config.manual,
    )


@post(
    "/agent/api/heartbeat",
    tags=["agent"],
    summary="Keep presence alive; returns the console state",
    status_code=200,
    responses=SIGNED_IN,
)
async def heartbeat(request: Request[Any, Any, Any]) -> ConsoleState:
    agent = await signed_in_agent(request)
    return await console_state(request, agent)


@post(
    "/agent/api/presence",
    tags=["agent"],
    summary="Ready, break or offline",
    status_code=200,
    responses=SIGNED_IN,
)
async def change_presence(request: Request[Any, Any, Any], data: JSONBody[PresenceChange]) -> ConsoleState:
    agent = await signed_in_agent(request)
    await _presence(request.app.state).set_presence(agent.id, data.status)
    if data.status == "ready":
        _dialer(request.app.state).wake()
    return await console_state(request, agent)


@post(
    "/agent/api/offline",
    tags=["agent"],
    summary="The console tab is closing (sendBeacon)",
    status_code=204,
    responses=SIGNED_IN,
)
async def going_offline(request: Request[Any, Any, Any]) -> None:
    agent = await signed_in_agent(request)
    await _presence(request.app.state).set_presence(agent.id, "offline")


@post(
    "/agent/api/call/{action:str}",
    tags=["agent"],
    summary="Answer (simulated PBX) or hang up",
    status_code=200,
    # 409: no call to act on, or (simulated PBX) nothing is ringing.
    responses=error_responses(401, 409),
)
async def call_action(request: Request[Any, Any, Any], action: FromPath[str]) -> ConsoleState:
    agent = await signed_in_agent(request)
    state = await console_state(request, agent)
    if state.call is None:
        raise ApiError(409, "no_call", "There is no call to act on")
    adapter = _dialer(request.app.state).adapter
    attempt = state.call.attempt_id.hex
    if action == "hangup":
        # Also when the call died with another process: the attempt is closed and the agent freed.
        await _dialer(request.app.state).attempts.end_call(state.call.attempt_id)
    elif action in ("answer", "visitor-answer") and isinstance(adapter, SimulatedPbx):
        try:
            await adapter.answer(attempt, "agent" if action == "answer" else "visitor")
        except ValueError as exc:
            raise ApiError(409, "not_ringing", str(exc)) from None
    else:
        raise ApiError(404, "not_found", f"Unknown call action {action!r}")
    return await console_state(request, agent)


CONSOLE_ROUTES = [
    console_page,
    login_page,
    login,
    dashboard,
    static_file,
    heartbeat,
    change_presence,
    going_offline,
    call_action,
]
