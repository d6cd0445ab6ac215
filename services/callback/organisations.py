"""Back-office routes for organisations (tenants), and the `tenancy` dependency every admin route uses."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, put
from litestar.di import NamedDependency
from litestar.handlers.http_handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.types import Guard

from services.callback.store.orgs import Organisation
from services.callback.usecases.orgs import Organisations, Tenancy
from services.common.auth_guard import provide_principal
from services.common.errors import error_responses
from services.common.web import runtime_extra

ORG_PATTERN = r"^[a-z0-9][a-z0-9_\-]{1,39}$"
OrgId = Annotated[str, msgspec.Meta(pattern=ORG_PATTERN, examples=["acme"])]
# Where a platform admin creates a site or an agent; an organisation's admin may omit it (their own).
OrgQuery = Annotated[
    str | None,
    QueryParameter(
        name="org",
        required=False,
        pattern=ORG_PATTERN,
        description="The organisation (platform admins; default: 'default'). Organisation admins: their own.",
    ),
]
TenancyDependency = NamedDependency[Tenancy]
OrganisationsDependency = NamedDependency[Organisations]


class OrganisationSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200, examples=["Acme shops"])]


def _organisations(request: Request[Any, Any, Any]) -> Organisations:
    return runtime_extra(request.app.state, "organisations", Organisations)


async def provide_tenancy(request: Request[Any, Any, Any]) -> Tenancy:
    """Dependency `tenancy`: the organisation(s) the caller who passed the admin guard may act in."""
    return await _organisations(request).tenancy(provide_principal(request).id)


def organisation_routes(guard: Guard) -> list[HTTPRouteHandler]:
    """The back-office routes behind `guard` (the admin guard, passed in: app.py imports this module)."""

    @put(
        "/v1/admin/organisations/{org_id:str}",
        guards=[guard],
        tags=["admin"],
        summary="Create or rename an organisation (platform admins)",
        responses={201: ResponseSpec(Organisation, description="Created")},
    )
    async def put_organisation(
        org_id: FromPath[OrgId],
        data: JSONBody[OrganisationSettings],
        organisations: OrganisationsDependency,
        tenancy: TenancyDependency,
    ) -> Response[Organisation]:
        org, created = await organisations.put(tenancy, org_id, data.name)
        return Response(org, status_code=201 if created else 200)

    @get("/v1/admin/organisations", guards=[guard], tags=["admin"], summary="Organisations you administer")
    async def list_organisations(
        organisations: OrganisationsDependency, tenancy: TenancyDependency
    ) -> list[Organisation]:
        return await organisations.list_orgs(tenancy)

    @get(
        "/v1/admin/organisations/{org_id:str}", guards=[guard], tags=["admin"], summary="Read an organisation"
    )
    async def get_organisation(
        org_id: FromPath[str], organisations: OrganisationsDependency, tenancy: TenancyDependency
    ) -> Organisation:
        return await organisations.get(tenancy, org_id)

    @put(
        "/v1/admin/organisations/{org_id:str}/admins/{principal_id:uuid}",
        guards=[guard],
        tags=["admin"],
        summary="Make a token or staff account (by id) an admin of this organisation only (platform admins)",
        description="There is no unbinding: an identity without an organisation is a platform admin, so"
        " an organisation admin is removed by revoking the token or removing the staff account.",
        status_code=204,
        # 404: no such organisation, or no such token/staff account.
        responses=error_responses(404),
    )
    async def bind_admin(
        org_id: FromPath[str],
        principal_id: FromPath[uuid.UUID],
        organisations: OrganisationsDependency,
        tenancy: TenancyDependency,
    ) -> None:
        await organisations.bind_admin(tenancy, org_id, principal_id)

    return [put_organisation, list_organisations, get_organisation, bind_admin]
