"""Schemathesis runs shared by the fuzz tests: every operation of a schema in both generation modes, with
credentials, bounded and derandomized, failures collected per operation; and the hand-written schema of
the routes a service leaves out of its OpenAPI document (pages, provider webhooks)."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

# As in the callback and corporate fuzz tests: no 5xx, every answer documented and conforming, and data
# that breaks the schema refused (not positive_data_acceptance: some schema-valid data is refused by
# design — control characters, numbers libphonenumber rejects, rules across fields).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# ABONENT_SCHEMATHESIS_HUNT=<examples> runs that many random (not derandomized) examples per operation and
# mode instead of the bounded, repeatable CI run.
HUNT = int(os.environ.get("ABONENT_SCHEMATHESIS_HUNT", "0"))


@dataclass
class FuzzReport:
    examples: dict[str, int] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return "\n\n".join(f"{op}:\n{text}" for op, text in self.failures.items())

    def positive_ran_everywhere(self) -> bool:
        return all(n > 0 for label, n in self.examples.items() if "(positive)" in label)


def with_examples(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of an OpenAPI document whose parameters named in `values` carry that value as their
    example: schemathesis' explicit phase then reaches real rows (a case, a recipient) before the
    generated, mostly nonexistent, ones."""
    document = copy.deepcopy(raw)
    for item in document.get("paths", {}).values():
        for operation in [item, *(op for op in item.values() if isinstance(op, dict))]:
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                if isinstance(parameter, dict) and parameter.get("name") in values:
                    parameter["example"] = values[parameter["name"]]
                    parameter.pop("examples", None)
    return document


def fetch_schema(base: str) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{base}/schema/openapi.json", timeout=30).json()
    return document


def run_operation(
    operation: Any, mode: GenerationMode, count: int, base: str, *, headers: dict[str, str], checks: list[Any]
) -> int:
    """`count` examples of one operation in one mode; how many ran (failing checks raise, grouped)."""
    seen = 0

    @hypothesis_settings(
        max_examples=HUNT or count,
        deadline=None,
        derandomize=not HUNT,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        nonlocal seen
        seen += 1
        case.call_and_validate(base_url=base, headers=dict(headers), checks=checks, timeout=30)

    run()
    return seen


def exercise(
    document: dict[str, Any],
    base: str,
    report: FuzzReport,
    *,
    headers: Callable[[str], dict[str, str]],
    include: Callable[[str], bool] = lambda path: True,
    examples: dict[GenerationMode, int] | None = None,
    checks: list[Any] | None = None,
) -> None:
    """Every operation of `document` whose path `include` accepts, in both modes, one at a time, with
    `headers(path)` on every request; failures go to `report` (all operations run)."""
    counts = examples or {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 12}
    schema = schemathesis.openapi.from_dict(document)
    for result in schema.get_all_operations():
        operation = result.ok()
        if not include(operation.path):
            continue
        for mode, count in counts.items():
            label = f"{operation.method.upper()} {operation.path} ({mode.value})"
            try:
                report.examples[label] = run_operation(
                    operation, mode, count, base, headers=headers(operation.path), checks=checks or CHECKS
                )
            except BaseExceptionGroup as exc:
                report.failures[label] = f"{type(exc).__name__}: {exc}"
                report.examples[label] = -1
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE, label  # nothing to break: no parameters, no body
                report.examples[label] = 0


# --- pieces of the hand-written documents of hidden routes ---------------------------------------------

HTML = {"text/html": {"schema": {"type": "string"}}}
ERROR_JSON = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"]},
            },
        }
    },
}


def answers(*statuses: int, **by_status: dict[str, Any]) -> dict[str, Any]:
    """Responses: each of `statuses` as a page (text/html) or, for 4xx, also the JSON error; `by_status`
    ("s303": {...}) overrides one."""
    documented: dict[str, Any] = {}
    for status in statuses:
        content = dict(HTML)
        if 400 <= status < 500:
            content.update(ERROR_JSON)
        documented[str(status)] = {"description": str(status), "content": content}
    for key, value in by_status.items():
        documented[key.removeprefix("s")] = value
    return documented


REDIRECT = {"description": "a redirect", "headers": {"Location": {"schema": {"type": "string"}}}}


def query(name: str, max_length: int, *, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": {"type": "string", "maxLength": max_length},
    }


def path_text(name: str, example: str | None = None) -> dict[str, Any]:
    parameter: dict[str, Any] = {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
    }
    if example is not None:
        parameter["example"] = example
    return parameter


def form_body(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "properties": properties, "required": required or []}
            }
        },
    }


def sign_in_paths() -> dict[str, Any]:
    """The sign-in page every service serves (services/common/auth_pages.py)."""
    return {
        "/auth/sign-in": {
            "get": {"parameters": [query("next", 300)], "responses": answers(200, 400)},
            "post": {
                "requestBody": form_body(
                    {
                        "login": {"type": "string", "maxLength": 80},
                        "password": {"type": "string", "maxLength": 80},
                        "next": {"type": "string", "maxLength": 200},
                    }
                ),
                "responses": answers(400, 401, 403, 413, 415, 429, s303=REDIRECT),
            },
        },
        "/auth/sign-out": {
            "post": {
                "requestBody": form_body({"csrf_token": {"type": "string", "maxLength": 100}}),
                "responses": answers(400, 403, 413, 415, s303=REDIRECT),
            }
        },
    }


def document(title: str, paths: dict[str, Any]) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1"},
        "paths": paths,
        "components": {"schemas": {"ErrorResponse": ERROR_SCHEMA}},
    }
