"""The OpenAPI schema tells the truth: the error answers each route can give, and strict JSON bodies."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Litestar, Request
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.enums import RequestEncodingType
from litestar.exceptions import ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import Schema
from litestar.params import BodyKwarg, QueryParameter
from litestar.routes import HTTPRoute
from litestar.typing import FieldDefinition

from services.common.errors import error_responses
from services.common.middleware import RATE_LIMITED

__all__ = [
    "MAX_OFFSET",
    "STATELESS",
    "PageOffset",
    "StrictStructSchema",
    "decode_json_body_strictly",
    "document_error_answers",
    "error_statuses",
]

# Paging deeper than this is no use to anyone, and a number past SQL's bigint made the driver fail (a 500
# schemathesis found): the bound makes it a 400 naming the parameter.
MAX_OFFSET = 2**31 - 1
PageOffset = Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET, description="Rows to skip")]

# A route that touches neither PostgreSQL nor NATS: it never answers 503, and its schema says so.
STATELESS = "stateless"


def error_statuses(route: HTTPRoute, handler: HTTPRouteHandler) -> list[int]:
    """The error statuses any route of ours can answer, from how it is built (a route declares the rest).

    400: a malformed value or control characters (services.common.text_guard), possible on every route.
    401/403: a guard. 404: a path parameter names something that may not exist (a PUT creates what it
    names). 413: a body. 429: the per-IP limiter.
    503: a pool acquire that times out, on every route that is not STATELESS.
    """
    statuses = [400]
    if handler.resolve_guards():
        statuses += [401, 403]
    if route.path_parameters and handler.http_methods != {"PUT"}:
        statuses.append(404)
    if handler.http_methods & {"POST", "PUT", "PATCH"}:
        statuses.append(413)
    if RATE_LIMITED in handler.opt:
        statuses.append(429)
    if not handler.opt.get(STATELESS):
        statuses.append(503)
    return statuses


def document_error_answers(app: Litestar) -> None:
    """Every operation documents the one error shape for the statuses it can answer.

    Litestar would document only a 400 with its own `{status_code, detail, extra}`, which we never send.
    A route's own `responses=` win (a specific example or description). The handlers here are the app's
    own copies (Litestar copies each handler it registers), so other apps built from the same handlers
    are not touched.
    """
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if handler.resolve_include_in_schema():
                derived = error_responses(*error_statuses(route, handler))
                handler.responses = {**derived, **(handler.responses or {})}


class StrictStructSchema(StructSchemaPlugin):
    """msgspec Structs as Litestar documents them, plus `additionalProperties: false` where the Struct
    forbids unknown fields: otherwise the schema invites fields the API then refuses.

    Litestar exports its Struct plugin only from a private module; tests/common/test_openapi_truth.py
    fails if an upgrade moves or changes it."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        if field_definition.type_.__struct_config__.forbid_unknown_fields:
            schema.additional_properties = False
        return schema


async def decode_json_body_strictly(request: Request[Any, Any, Any]) -> None:
    """Refuse a JSON body whose values only fit the schema after coercion (`0` for a bool, `"5"` for an int).

    Litestar converts request data leniently (fine for query strings, where everything is text); for a
    JSON body that accepts what the schema says is invalid. Runs after the guards, before the handler's
    own decoding, which then reads the same cached body.
    """
    data = request.route_handler.parsed_fn_signature.parameters.get("data")
    if data is None:
        return
    kwarg = data.kwarg_definition
    if isinstance(kwarg, BodyKwarg) and kwarg.media_type != RequestEncodingType.JSON:
        return  # forms and the like: their values are text, converted like query strings
    body = await request.body()
    try:
        msgspec.json.decode(body, type=data.annotation, strict=True)
    except msgspec.ValidationError as exc:
        raise ValidationException(extra=[{"message": str(exc), "key": "data", "source": "body"}]) from None
    except msgspec.DecodeError as exc:
        message = f"The body is not JSON: {exc}"
        raise ValidationException(extra=[{"message": message, "key": "data"}]) from None
