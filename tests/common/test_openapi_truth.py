"""Every service's OpenAPI schema documents what its routes really answer, in the one error shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest
from litestar import post
from litestar.params import FromPath, JSONBody
from litestar.testing import AsyncTestClient
from support.harness import migrate_service

from services.common.settings import Settings
from services.common.web import ServiceSpec, build_app

Client = AsyncTestClient[Any]
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


class Greeting(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(max_length=20)]
    loud: bool = False
    times: int = 1


@post("/greet/{who:str}", status_code=201)
async def greet(who: FromPath[str], data: JSONBody[Greeting]) -> dict[str, str]:
    return {"who": who, "text": f"hello {data.name}" * data.times}


def probe_spec() -> ServiceSpec:
    """A service shaped like the real ones (the notifier's schema) with one JSON route of its own."""
    return ServiceSpec(
        name="notifier",
        title="probe",
        description="probe",
        route_handlers=[greet],
        migrations_dir=Path(__file__).resolve().parents[2] / "services" / "notifier" / "migrations",
        scopes={"notifier:admin": "everything"},
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    await migrate_service(settings, "notifier")
    async with AsyncTestClient(app=build_app(probe_spec(), settings)) as test_client:
        yield test_client


def responses_of(schema: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    result: dict[str, Any] = schema["paths"][path][method]["responses"]
    return result


async def test_errors_are_documented_in_the_one_shape_where_a_route_can_answer_them(client: Client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    # Litestar's own {status_code, detail, extra} is never documented: no answer of ours has that shape.
    assert "Validation Exception" not in str(schema)
    assert "'detail'" not in str(schema)

    whoami = responses_of(schema, "/auth/whoami", "get")
    assert set(whoami) == {"200", "400", "401", "403", "503"}  # guarded, reads the database
    for status in ("400", "401", "403", "503"):
        assert whoami[status]["content"]["application/json"]["schema"] == ERROR_REF

    greet_answers = responses_of(schema, "/greet/{who}", "post")
    # 201 as declared; 404 for a path naming something; 413 for a body; no guard, so no 401/403.
    assert set(greet_answers) == {"201", "400", "404", "413", "503"}
    # Liveness and metrics touch no dependency: they never answer 503.
    assert set(responses_of(schema, "/health/live", "get")) == {"200", "400"}
    ready = responses_of(schema, "/health/ready", "get")
    assert ready["503"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ReadinessBody"
    }


async def test_a_struct_that_forbids_unknown_fields_says_so_and_refuses_them(client: Client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    assert schema["components"]["schemas"]["Greeting"]["additionalProperties"] is False
    refused = await client.post("/greet/x", json={"name": "Olga", "colour": "red"})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "invalid_request"
    assert refused.json()["error"]["field"] == "colour"
    assert (await client.post("/greet/x", json={"name": "Olga"})).status_code == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Olga", "loud": 0}, "loud"),  # the schema says boolean; 0 used to pass as False
        ({"name": "Olga", "times": "2"}, "times"),  # the schema says integer; "2" used to pass as 2
        ({"name": 5}, "name"),
    ],
)
async def test_json_bodies_are_not_coerced_into_what_the_schema_forbids(
    client: Client, body: dict[str, Any], field: str
) -> None:
    refused = await client.post("/greet/x", json=body)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["field"] == field


async def test_malformed_json_is_a_400_in_the_one_shape(client: Client) -> None:
    refused = await client.post("/greet/x", content=b"{", headers={"content-type": "application/json"})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "invalid_request"
