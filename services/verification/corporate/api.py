"""Corporate SIM routes: the token endpoint and JWKS, the company's SIM API, and the back office's."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal, get_args

import msgspec
from litestar import MediaType, Request, Response, delete, get, post, put
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.enums import RequestEncodingType
from litestar.exceptions import ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body, FromPath, JSONBody, Parameter, QueryParameter

from services.common.auth_guard import CurrentPrincipal, requires
from services.common.domain_errors import Invalid
from services.common.errors import ErrorResponse
from services.common.openapi import PageOffset
from services.common.web import runtime_extra
from services.verification.corporate.domain.sim import SimStatus
from services.verification.corporate.oauth import JWKS_MAX_AGE_S, REALM, SCOPE_READ, SCOPE_WRITE, Caller
from services.verification.corporate.schemas import (
    DEVICE_EXAMPLE,
    DEVICE_FROM_EXAMPLE,
    EMPLOYEE_EXAMPLE,
    SIM_EXAMPLE,
    Binding,
    BindingRequest,
    ClientCreate,
    ClientCreated,
    ClientView,
    CompanyCreate,
    CompanyView,
    KnownNumbersAdd,
    KnownNumbersAdded,
    NumbersAdd,
    NumbersAdded,
    PersonOverLimitView,
    SimPage,
    SimView,
)
from services.verification.corporate.usecases import SIM_NOT_FOUND, CorporateSims

COMPANIES_SCOPE = "verification:companies"
companies_guard = requires(COMPANIES_SCOPE)
EXTRA = "corporate"

Corporate = NamedDependency[CorporateSims]
CurrentCaller = NamedDependency[Caller]


def corporate_of(state: State) -> CorporateSims:
    return runtime_extra(state, EXTRA, CorporateSims)


def company_scope(scope: str) -> Any:
    """A guard for the company's API: a valid access token carrying `scope` (RFC 6750 401/403 otherwise);
    the caller (its company) is then the `caller` dependency."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        corporate = corporate_of(connection.app.state)
        connection.state.caller = await corporate.auth.authenticate(
            connection.headers.get("authorization"), scope
        )

    return guard


def provide_caller(request: Request[Any, Any, Any]) -> Caller:
    caller = request.state.get("caller")
    if not isinstance(caller, Caller):
        raise RuntimeError("a corporate route without its company_scope guard")
    return caller


DEPENDENCIES = {
    "corporate": Provide(corporate_of, sync_to_thread=False),
    "caller": Provide(provide_caller, sync_to_thread=False),
}
read_guard = company_scope(SCOPE_READ)
write_guard = company_scope(SCOPE_WRITE)

NOT_FOUND = ResponseSpec(
    ErrorResponse,
    description="Not a number on your contract (another company's number answers exactly the same)",
    examples=[
        Example(value={"error": {"code": "sim_not_found", "message": SIM_NOT_FOUND, "field": "number"}})
    ],
)
BIND_ERRORS = ResponseSpec(
    ErrorResponse,
    description="A field is invalid: INN/OGRN, IMEI Luhn, MAC format, device type, missing address, ...",
    examples=[
        Example(
            summary="IMEI check digit",
            value={
                "error": {
                    "code": "imei_check_digit",
                    "message": "IMEI check digit (Luhn) does not match",
                    "field": "device.imei",
                }
            },
        )
    ],
)
CONFLICT = ResponseSpec(
    ErrorResponse,
    description="The SIM's status does not allow it, it changed meanwhile, or the person holds 20 numbers",
    examples=[
        Example(
            summary="The 20-number limit",
            value={
                "error": {
                    "code": "number_limit_reached",
                    "message": "This person already holds 20 numbers across all operators; the limit is 20",
                    "field": "employee.passport_number",
                }
            },
        )
    ],
)
Number = Annotated[str, Parameter(description="The SIM's number, E.164 (+79161234567)", max_length=32)]

# --- OAuth 2.0 ------------------------------------------------------------------------------------------


class TokenForm(msgspec.Struct, kw_only=True):
    """RFC 6749 §4.4.2; the client authenticates by HTTP Basic or with client_id/client_secret here."""

    grant_type: str = ""
    scope: str | None = None
    client_id: str | None = None
    client_secret: str | None = None


class TokenResponse(msgspec.Struct, kw_only=True):
    access_token: str
    token_type: str
    expires_in: int
    scope: str


TokenErrorCode = Literal[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
]
TOKEN_ERROR_CODES: frozenset[str] = frozenset(get_args(TokenErrorCode))


class TokenError(msgspec.Struct, kw_only=True):
    """RFC 6749 §5.2: the one place this API does not use its own error shape, because OAuth client
    libraries parse exactly this one."""

    error: TokenErrorCode
    error_description: str = ""


# No cache may keep a token or an answer about credentials (RFC 6749 §5.1).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
INVALID_CLIENT = (
    "Unknown client, wrong secret or revoked client: send client_id and client_secret by HTTP Basic "
    "or in the form"
)
# RFC 6749 §5.2: a client that failed to authenticate is challenged for HTTP Basic.
BASIC_CHALLENGE = f'Basic realm="{REALM}", charset="UTF-8"'


def token_error(error: str, description: str) -> Response[Any]:
    """An RFC 6749 §5.2 answer: invalid_client is 401, everything else 400, as §5.2 says."""
    code = error if error in TOKEN_ERROR_CODES else "invalid_request"
    headers = dict(NO_STORE)
    status = 400
    if code == "invalid_client":
        # 401 whichever way the client sent its secret, so a client library can retry with Basic.
        status = 401
        headers["WWW-Authenticate"] = BASIC_CHALLENGE
    return Response(
        TokenError(error=code, error_description=description),  # type: ignore[arg-type]  # checked above
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def _token_form_refused(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    """A form Litestar could not read (wrong types, not a form) is an OAuth invalid_request here."""
    extra = exc.extra
    message = "The request is not a valid token request"
    if isinstance(extra, list) and extra and isinstance(extra[0], dict) and extra[0].get("message"):
        message = str(extra[0]["message"]).split(" - at ")[0]
    return token_error("invalid_request", message)


TOKEN_ERRORS = ResponseSpec(
    TokenError,
    description='RFC 6749 §5.2 (not the API\'s `{"error": {...}}` shape): `unsupported_grant_type`, '
    "`invalid_scope`, `invalid_request`, `unauthorized_client`, `invalid_grant`",
    examples=[
        Example(
            summary="invalid_scope",
            value={"error": "invalid_scope", "error_description": "The requested scope is invalid"},
        )
    ],
)
TOKEN_CLIENT_ERROR = ResponseSpec(
    TokenError,
    description="RFC 6749 §5.2 `invalid_client`: unknown client, wrong secret or revoked client; with "
    "`WWW-Authenticate: Basic`",
    examples=[
        Example(value={"error": "invalid_client", "error_description": "The client cannot authenticate"})
    ],
)


@post(
    "/oauth/token",
    tags=["corporate-auth"],
    summary="Get an access token (OAuth 2.0 client credentials)",
    description="`grant_type=client_credentials`, the client authenticated by HTTP Basic "
    "(`client_secret_basic`) or by `client_id` and `client_secret` in the form (`client_secret_post`). "
    "`scope` is optional (default: all the client's scopes): `corporate-sims:read`, `corporate-sims:write`. "
    "The token is a JWT (RFC 9068, ES256) checked against `/.well-known/jwks.json`.\n\n"
    "**Errors here are OAuth's, not this API's usual shape**: RFC 6749 §5.2 "
    '`{"error": "invalid_client", "error_description": "..."}`, so OAuth client libraries understand '
    "them: `invalid_client` is 401 with `WWW-Authenticate: Basic`; `invalid_request`, "
    "`unsupported_grant_type`, `invalid_scope`, `unauthorized_client` and `invalid_grant` are 400. The "
    "SIM API itself answers a bad token with the usual shape and `WWW-Authenticate: Bearer "
    'error="invalid_token"` (401) or `error="insufficient_scope"` (403), as RFC 6750 says.',
    status_code=200,
    exception_handlers={ValidationException: _token_form_refused},
    responses={
        200: ResponseSpec(
            TokenResponse,
            examples=[
                Example(
                    value={
                        "access_token": "eyJhbGciOiJFUzI1NiIsImtpZCI6IjIwMjYxMTMwLTFhMmIzYzRkIn0...",
                        "token_type": "Bearer",
                        "expires_in": 600,
                        "scope": "corporate-sims:read corporate-sims:write",
                    }
                )
            ],
        ),
        400: TOKEN_ERRORS,
        401: TOKEN_CLIENT_ERROR,
    },
)
async def token(
    request: Request[Any, Any, Any],
    data: Annotated[TokenForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    corporate: Corporate,
) -> Response[Any]:
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != RequestEncodingType.URL_ENCODED:
        return token_error("invalid_request", f"Send the form as {RequestEncodingType.URL_ENCODED.value}")
    if not data.grant_type:
        # authlib would call a missing grant_type unsupported; RFC 6749 §5.2 calls it invalid_request.
        return token_error("invalid_request", "grant_type is required: client_credentials")
    form = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not None}
    headers = {k.lower(): v for k, v in request.headers.items()}
    answer = await corporate.auth.issue_token(str(request.url), headers, form)
    if answer.token is not None:
        return Response(answer.token, status_code=200, headers=NO_STORE)
    if answer.error == "invalid_client":
        # authlib's description lists its methods; say what to fix instead.
        return token_error("invalid_client", INVALID_CLIENT)
    return token_error(answer.error, answer.description or answer.error)


@get(
    "/.well-known/jwks.json",
    tags=["corporate-auth"],
    summary="The keys that sign access tokens (the next key appears before it signs)",
)
async def jwks(corporate: Corporate) -> Response[dict[str, list[dict[str, Any]]]]:
    return Response(
        await corporate.auth.jwks(), headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE_S}"}
    )


# --- the company's SIM API ------------------------------------------------------------------------------


# An ISO 8601 instant. Litestar would also read a bare number as a Unix time; the schema says date-time.
Instant = QueryParameter(
    required=False,
    max_length=40,
    pattern=r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$",
    description="ISO 8601, e.g. 2026-12-15T21:00:00Z (UTC when no offset is given)",
)


def _instant(value: str | None, field: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise Invalid("invalid_datetime", f"{field}: not an ISO 8601 date-time", field=field) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


@get(
    "/v1/corporate/sims",
    guards=[read_guard],
    tags=["corporate-sims"],
    summary="List your SIMs, filtered by status, binding, deadline or number",
    responses={
        200: ResponseSpec(
            SimPage,
            examples=[
                Example(value={"items": [SIM_EXAMPLE], "page": 1, "page_size": 100, "next_page": None})
            ],
        )
    },
)
async def list_sims(
    *,
    corporate: Corporate,
    caller: CurrentCaller,
    status: Annotated[SimStatus | None, QueryParameter(required=False)] = None,
    binding: Annotated[Binding | None, QueryParameter(required=False)] = None,
    deadline_before: Annotated[str | None, Instant] = None,
    deadline_after: Annotated[str | None, Instant] = None,
    number: Annotated[str | None, QueryParameter(required=False, max_length=32)] = None,
    page: Annotated[int, QueryParameter(ge=1, le=100_000)] = 1,
    page_size: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> SimPage:
    return await corporate.list_sims(
        caller,
        status=status,
        binding=binding,
        deadline_before=_instant(deadline_before, "deadline_before"),
        deadline_after=_instant(deadline_after, "deadline_after"),
        number=number,
        page=page,
        page_size=page_size,
    )


@get(
    "/v1/corporate/sims/{number:str}",
    guards=[read_guard],
    tags=["corporate-sims"],
    summary="One SIM: its status, binding (masked) and registration record",
    responses={200: ResponseSpec(SimView, examples=[Example(value=SIM_EXAMPLE)]), 404: NOT_FOUND},
)
async def get_sim(number: Number, corporate: Corporate, caller: CurrentCaller) -> SimView:
    return await corporate.get_sim(caller, number)


_BIND_BODY = Body(
    examples=[
        Example(summary="A device", value=DEVICE_EXAMPLE),
        Example(summary="A device that starts service on a given day", value=DEVICE_FROM_EXAMPLE),
        Example(summary="An employee (they confirm through Gosuslugi)", value=EMPLOYEE_EXAMPLE),
    ]
)


@post(
    "/v1/corporate/sims/{number:str}/binding",
    guards=[write_guard],
    tags=["corporate-sims"],
    summary="Bind an unbound SIM to an employee or a device",
    description="An employee moves the SIM to `pending_employee_confirmation`: they get a link (SMS to "
    "the number; also `confirmation_link` here) and confirm through Gosuslugi; a match moves it to "
    "`pending_submission`, a mismatch rejects it with the fields that differ. A device goes to "
    "`pending_submission` at once; with `device.use_from` (the day it starts service) its `deadline` is "
    "the end of the 3rd working day before it (Russian production calendar), if that is earlier. Each "
    "change is a `corpsim.*` event. A bound SIM answers 409: use PUT.",
    status_code=200,
    responses={
        200: ResponseSpec(SimView, examples=[Example(value=SIM_EXAMPLE)]),
        400: BIND_ERRORS,
        404: NOT_FOUND,
        409: CONFLICT,
    },
)
async def bind_sim(
    number: Number, data: Annotated[BindingRequest, _BIND_BODY], corporate: Corporate, caller: CurrentCaller
) -> SimView:
    view, _ = await corporate.bind(caller, number, data, replace=False)
    return view


@put(
    "/v1/corporate/sims/{number:str}/binding",
    guards=[write_guard],
    tags=["corporate-sims"],
    summary="Set the SIM's binding (bind, or rebind replacing the current one; idempotent)",
    description="Sending the binding the SIM already has changes nothing (no event). A different one "
    "replaces it: an employee's pending confirmation is cancelled, and the new binding starts over.",
    status_code=200,
    responses={
        200: ResponseSpec(SimView, examples=[Example(value=SIM_EXAMPLE)]),
        400: BIND_ERRORS,
        404: NOT_FOUND,
        409: CONFLICT,
    },
)
async def rebind_sim(
    number: Number, data: Annotated[BindingRequest, _BIND_BODY], corporate: Corporate, caller: CurrentCaller
) -> SimView:
    view, _ = await corporate.bind(caller, number, data, replace=True)
    return view


@delete(
    "/v1/corporate/sims/{number:str}/binding",
    guards=[write_guard],
    tags=["corporate-sims"],
    summary="Unbind the SIM (it is unregistered again and heads toward its deadline)",
    status_code=200,
    responses={200: ResponseSpec(SimView), 404: NOT_FOUND, 409: CONFLICT},
)
async def unbind_sim(number: Number, corporate: Corporate, caller: CurrentCaller) -> SimView:
    return await corporate.unbind(caller, number)


# --- back office ----------------------------------------------------------------------------------------


@post(
    "/v1/companies",
    guards=[companies_guard],
    tags=["companies"],
    summary="Onboard a company (INN and OGRN/OGRNIP checked by their control digits)",
    status_code=201,
    responses={
        400: ResponseSpec(
            ErrorResponse,
            examples=[
                Example(
                    value={
                        "error": {
                            "code": "inn_control_digit",
                            "message": "INN control digit does not match",
                            "field": "inn",
                        }
                    }
                )
            ],
        ),
        409: ResponseSpec(ErrorResponse, description="A company with this INN or OGRN exists"),
    },
)
async def create_company(
    data: Annotated[
        CompanyCreate,
        Body(
            examples=[Example(value={"name": "ПАО Сбербанк", "inn": "7707083893", "ogrn": "1027700132195"})]
        ),
    ],
    corporate: Corporate,
    principal: CurrentPrincipal,
) -> CompanyView:
    return await corporate.create_company(data, principal.who)


@get("/v1/companies", guards=[companies_guard], tags=["companies"], summary="List companies")
async def list_companies(
    corporate: Corporate,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    offset: PageOffset = 0,
) -> list[CompanyView]:
    return await corporate.list_companies(limit=limit, offset=offset)


@get("/v1/companies/{company_id:uuid}", guards=[companies_guard], tags=["companies"], summary="One company")
async def get_company(company_id: FromPath[uuid.UUID], corporate: Corporate) -> CompanyView:
    return await corporate.get_company(company_id)


@post(
    "/v1/companies/{company_id:uuid}/numbers",
    guards=[companies_guard],
    tags=["companies"],
    summary="Put numbers on the company's contract (each an unregistered SIM); per-number outcomes",
    status_code=200,
)
async def add_numbers(
    company_id: FromPath[uuid.UUID],
    data: Annotated[NumbersAdd, Body(examples=[Example(value={"numbers": ["+79161234567", "89161234568"]})])],
    corporate: Corporate,
    principal: CurrentPrincipal,
) -> NumbersAdded:
    return await corporate.add_numbers(company_id, data, principal.who)


@post(
    "/v1/companies/{company_id:uuid}/clients",
    guards=[companies_guard],
    tags=["companies"],
    summary="Create an API client: its secret is shown in this answer only (stored hashed)",
    status_code=201,
)
async def create_client(
    company_id: FromPath[uuid.UUID],
    data: Annotated[
        ClientCreate,
        Body(
            examples=[
                Example(
                    value={"name": "HR system", "scopes": ["corporate-sims:read", "corporate-sims:write"]}
                )
            ]
        ),
    ],
    corporate: Corporate,
    principal: CurrentPrincipal,
) -> ClientCreated:
    return await corporate.create_client(company_id, data, principal.who)


@get(
    "/v1/companies/{company_id:uuid}/clients",
    guards=[companies_guard],
    tags=["companies"],
    summary="The company's API clients (never their secrets)",
)
async def list_clients(company_id: FromPath[uuid.UUID], corporate: Corporate) -> list[ClientView]:
    return await corporate.list_clients(company_id)


@delete(
    "/v1/companies/{company_id:uuid}/clients/{client_id:str}",
    guards=[companies_guard],
    tags=["companies"],
    summary="Revoke an API client (its tokens stop working at once)",
    status_code=204,
)
async def revoke_client(
    company_id: FromPath[uuid.UUID],
    client_id: Annotated[str, Parameter(max_length=100)],
    corporate: Corporate,
) -> None:
    await corporate.revoke_client(company_id, client_id)


@post(
    "/v1/corporate/known-numbers",
    guards=[companies_guard],
    tags=["companies"],
    summary="Numbers other operators hold for a person (they count toward the 20-number limit)",
    status_code=200,
)
async def add_known_numbers(
    data: JSONBody[KnownNumbersAdd], corporate: Corporate, principal: CurrentPrincipal
) -> KnownNumbersAdded:
    return await corporate.add_known_numbers(data, principal.who)


@get(
    "/v1/corporate/people-over-limit",
    guards=[companies_guard],
    tags=["companies"],
    summary="People holding more than 20 numbers across companies and operators (masked)",
)
async def people_over_limit(
    corporate: Corporate,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    offset: PageOffset = 0,
) -> list[PersonOverLimitView]:
    return await corporate.people_over_limit(limit=limit, offset=offset)


ROUTES = [
    token,
    jwks,
    list_sims,
    get_sim,
    bind_sim,
    rebind_sim,
    unbind_sim,
    create_company,
    list_companies,
    get_company,
    add_numbers,
    create_client,
    list_clients,
    revoke_client,
    add_known_numbers,
    people_over_limit,
]
SCOPES = {COMPANIES_SCOPE: "onboard companies, their numbers and API clients; the 20-number report"}
