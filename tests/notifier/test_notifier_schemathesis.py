"""Schemathesis over the notifier's API (message log, recipients, opt-outs, bind links) and the routes it
leaves out of /schema (a hand-written schema: the back-office page, the dev inbox, the SMS gateways'
delivery-report webhooks and the Telegram and MAX update webhooks, each with its real credential): no 5xx,
every answer documented and conforming, schema-breaking input refused."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance
from support.fuzz import (
    REDIRECT,
    FuzzReport,
    answers,
    document,
    exercise,
    fetch_schema,
    form_body,
    query,
    sign_in_paths,
    with_examples,
)
from support.harness import running_service
from support.notifier import BEARER, PHONE, Harness, requested
from support.polling import until

from services.common import bus as busmod
from services.common.events import encode_event
from services.common.settings import Settings
from services.notifier.channels.sms_http import receipt_token
from services.notifier.settings import NotifierSettings

API_EXAMPLES = {GenerationMode.POSITIVE: 15, GenerationMode.NEGATIVE: 10}
HIDDEN_EXAMPLES = {GenerationMode.POSITIVE: 15, GenerationMode.NEGATIVE: 6}
HIDDEN_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]
RECEIPT_SECRET = "fuzz-receipt-secret"
TELEGRAM_SECRET = "fuzz-telegram-secret"
MAX_SECRET = "fuzz-max-secret"
# Every channel with a webhook, pointed at a closed port: nothing is delivered, but every route exists.
CHANNELS = {
    "ABONENT_NOTIFY_CHANNELS": "sms_ru,smsc,telegram,max,sandbox",
    "ABONENT_SMS_RU_URL": "http://127.0.0.1:9",
    "ABONENT_SMS_RU_API_ID": "fuzz",
    "ABONENT_SMSC_URL": "http://127.0.0.1:9",
    "ABONENT_SMSC_PASSWORD": "fuzz",
    "ABONENT_SMS_RECEIPT_SECRET": RECEIPT_SECRET,
    "ABONENT_TELEGRAM_API_URL": "http://127.0.0.1:9",
    "ABONENT_TELEGRAM_BOT_TOKEN": "1:fuzz",
    "ABONENT_TELEGRAM_WEBHOOK_SECRET": TELEGRAM_SECRET,
    "ABONENT_MAX_API_URL": "http://127.0.0.1:9",
    "ABONENT_MAX_BOT_TOKEN": "fuzz",
    "ABONENT_MAX_WEBHOOK_SECRET": MAX_SECRET,
}
TEXT = {"text/plain": {"schema": {"type": "string"}}}
JSON_OK = {"application/json": {"schema": {"type": "object"}}}
# Loose shapes of what the platforms post: members are left untyped on purpose, so generated updates carry
# numbers, lists and strings where the platform would put an object.
TELEGRAM_UPDATE = {
    "type": "object",
    "properties": {
        "update_id": {"type": "integer"},
        "message": {
            "properties": {
                "chat": {"properties": {"id": {}}},
                "from": {"properties": {"id": {}}},
                "text": {"type": "string", "maxLength": 60},
                "contact": {"properties": {"user_id": {}, "phone_number": {}}},
            }
        },
        "my_chat_member": {"properties": {"chat": {}, "new_chat_member": {}}},
    },
}
MAX_UPDATE = {
    "type": "object",
    "properties": {
        "update_type": {"enum": ["message_created", "bot_started", "bot_stopped", "other"]},
        "chat_id": {},
        "payload": {},
        "message": {
            "properties": {
                "recipient": {"properties": {"chat_id": {}}},
                "sender": {"properties": {"user_id": {}}},
                "body": {
                    "properties": {
                        "text": {"type": "string", "maxLength": 60},
                        "attachments": {
                            "items": {
                                "properties": {
                                    "type": {"enum": ["contact", "image"]},
                                    "payload": {"properties": {"max_info": {}, "vcf_phone": {}}},
                                }
                            }
                        },
                    }
                },
            }
        },
    },
    "required": ["update_type"],
}
SMS_RU_STATUS = "^sms_status\n[a-z0-9-]{1,12}\n-?[0-9]{1,4}(\n-?[0-9]{1,22})?$"


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def receipt_path(token: str) -> dict[str, Any]:
    """The receipt URL's token: the real one in valid data (so the body reaches the parser), any other
    string in invalid data (401)."""
    return {"name": "token", "in": "path", "required": True, "schema": {"enum": [token]}}


def hidden_routes(recipient_id: str) -> dict[str, Any]:
    """The routes the notifier leaves out of /schema, as they answer (back_office.py, dev_inbox.py,
    channels/sms_http.py receipt_routes, channels/_http.py messenger_webhook, common/auth_pages.py)."""
    sms_ru = receipt_token(RECEIPT_SECRET, "sms_ru")
    smsc = receipt_token(RECEIPT_SECRET, "smsc")
    phone_form = form_body({"phone": {"type": "string", "maxLength": 30}}, ["phone"])
    return document(
        "notifier hidden routes",
        {
            "/back-office/recipients/{recipient_id}": {
                "get": {
                    "parameters": [
                        {
                            "name": "recipient_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "format": "uuid"},
                            "example": recipient_id,
                        },
                        query("tenant", 100),
                    ],
                    "responses": answers(200, 400, 404),
                }
            },
            "/dev/inbox": {"get": {"responses": answers(200, s303=REDIRECT)}},
            "/dev/inbox/receipts": {
                "post": {
                    "requestBody": form_body(
                        {
                            "provider_message_id": {"type": "string", "maxLength": 40},
                            "status": {"enum": ["delivered", "failed"]},
                        },
                        ["provider_message_id", "status"],
                    ),
                    "responses": answers(400, 404, s303=REDIRECT),
                }
            },
            "/dev/inbox/bind": {
                "post": {"requestBody": phone_form, "responses": answers(400, 404, s303=REDIRECT)}
            },
            "/dev/inbox/stop": {
                "post": {"requestBody": phone_form, "responses": answers(400, s303=REDIRECT)}
            },
            "/channels/sms_ru/receipts/{token}": {
                "post": {
                    "parameters": [receipt_path(sms_ru)],
                    "requestBody": form_body(
                        {
                            "data[0]": {"type": "string", "pattern": SMS_RU_STATUS},
                            "data[1]": {"type": "string", "maxLength": 60},
                        }
                    ),
                    "responses": {
                        "200": {"description": "read", "content": TEXT},
                        **answers(400, 401),
                    },
                }
            },
            "/channels/smsc/receipts/{token}": {
                "post": {
                    "parameters": [receipt_path(smsc)],
                    "requestBody": form_body(
                        {
                            "id": {"type": "string", "maxLength": 20},
                            "status": {"type": "string", "pattern": "^-?[0-9]{1,4}$"},
                            "err": {"type": "string", "maxLength": 5},
                            "ts": {"type": "string", "pattern": "^-?[0-9]{1,22}$"},
                        }
                    ),
                    "responses": {
                        "200": {"description": "read", "content": TEXT},
                        **answers(400, 401),
                    },
                }
            },
            "/channels/telegram/webhook": {
                "post": {
                    "requestBody": json_body(TELEGRAM_UPDATE),
                    "responses": {"200": {"description": "read", "content": JSON_OK}, **answers(400, 401)},
                }
            },
            "/channels/max/webhook": {
                "post": {
                    "requestBody": json_body(MAX_UPDATE),
                    "responses": {"200": {"description": "read", "content": JSON_OK}, **answers(400, 401)},
                }
            },
            **sign_in_paths(),
        },
    )


def credentials(path: str) -> dict[str, str]:
    """Each route's own credential: the platforms' webhook secrets, the receipt URL's token (in the path),
    the back-office token elsewhere."""
    if path == "/channels/telegram/webhook":
        return {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}
    if path == "/channels/max/webhook":
        return {"X-Max-Bot-Api-Secret": MAX_SECRET}
    if path.startswith("/channels/"):
        return {}
    return dict(BEARER)


def fuzz(base: str, recipient_id: str) -> FuzzReport:
    report = FuzzReport()
    api = with_examples(fetch_schema(base), {"recipient_id": recipient_id, "category": "callback"})
    exercise(api, base, report, headers=credentials, examples=API_EXAMPLES)
    exercise(
        hidden_routes(recipient_id),
        base,
        report,
        headers=credentials,
        examples=HIDDEN_EXAMPLES,
        checks=HIDDEN_CHECKS,
    )
    return report


@pytest.mark.timeout(300)
async def test_every_notifier_route_answers_as_documented(
    settings: Settings, bus: busmod.Bus, tmp_path: Path
) -> None:
    async with running_service(settings, "notifier", tmp_path, **CHANNELS) as base:
        # One recipient exists (a callback request's notice), so generated requests also reach real rows.
        event = requested(uuid.uuid4())
        await bus.publish(event.SUBJECT, encode_event(event), str(event.event_id))
        async with httpx.AsyncClient(base_url=base, headers=BEARER) as http:

            async def recipient() -> str | None:
                found = await http.post("/v1/recipients/lookup", json={"phone": PHONE})
                return str(found.json()["id"]) if found.status_code == 200 else None

            recipient_id = await until(recipient)
        started = time.monotonic()
        report = await asyncio.to_thread(fuzz, base, recipient_id)
        elapsed = time.monotonic() - started
    print(f"schemathesis: {sum(report.examples.values())} requests in {elapsed:.0f}s", report.examples)
    assert not report.failures, report.summary()
    assert report.positive_ran_everywhere(), report.examples
    for route in ("/channels/telegram/webhook", "/channels/sms_ru/receipts/{token}", "/v1/messages"):
        assert any(route in label for label in report.examples), report.examples


# --- what schemathesis found, pinned (in process, against the same real servers) -----------------------

PINNED = NotifierSettings(
    notify_channels="sms_ru,smsc,telegram,max,sandbox",
    sms_ru_url="http://127.0.0.1:9",
    sms_ru_api_id="fuzz",
    smsc_url="http://127.0.0.1:9",
    smsc_password="fuzz",
    sms_receipt_secret=RECEIPT_SECRET,
    telegram_api_url="http://127.0.0.1:9",
    telegram_bot_token="1:fuzz",
    telegram_webhook_secret=TELEGRAM_SECRET,
    max_api_url="http://127.0.0.1:9",
    max_bot_token="fuzz",
    max_webhook_secret=MAX_SECRET,
)


async def test_a_receipt_url_with_a_non_ascii_token_is_a_401_not_a_500(harness_factory: Any) -> None:
    h: Harness = await harness_factory(own=PINNED)
    for channel in ("sms_ru", "smsc"):
        refused = await h.client.post(f"/channels/{channel}/receipts/%C3%A9t%C3%A9", data={"id": "1"})
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "unauthorized"


async def test_receipt_times_past_time_t_are_ignored_not_a_500(harness_factory: Any) -> None:
    h: Harness = await harness_factory(own=PINNED)
    huge = "99999999999999999999"
    sms_ru = await h.client.post(
        f"/channels/sms_ru/receipts/{receipt_token(RECEIPT_SECRET, 'sms_ru')}",
        data={"data[0]": f"sms_status\nabc\n103\n{huge}"},
    )
    assert (sms_ru.status_code, sms_ru.text) == (200, "100")
    smsc = await h.client.post(
        f"/channels/smsc/receipts/{receipt_token(RECEIPT_SECRET, 'smsc')}",
        data={"id": "abc", "status": "1", "ts": huge},
    )
    assert (smsc.status_code, smsc.text) == (200, "OK")


async def test_messenger_updates_of_odd_shapes_are_read_as_other_and_malformed_json_is_a_400(
    harness_factory: Any,
) -> None:
    h: Harness = await harness_factory(own=PINNED)
    telegram = ("/channels/telegram/webhook", {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET})
    max_bot = ("/channels/max/webhook", {"X-Max-Bot-Api-Secret": MAX_SECRET})
    odd: list[tuple[tuple[str, dict[str, str]], dict[str, Any]]] = [
        (telegram, {"message": {"chat": 5, "text": "/start abc"}}),
        (telegram, {"message": {"from": "x", "chat": {"id": 1}, "contact": {"user_id": 1}}}),
        (telegram, {"my_chat_member": {"chat": [1], "new_chat_member": 3}}),
        (max_bot, {"update_type": "message_created", "message": {"body": [1], "recipient": 1}}),
        (max_bot, {"update_type": "message_created", "message": {"body": {"attachments": 5}}}),
        (
            max_bot,
            {
                "update_type": "message_created",
                "message": {"body": {"attachments": [{"type": "contact", "payload": {"max_info": 4}}]}},
            },
        ),
    ]
    for (path, secret), body in odd:
        answered = await h.client.post(path, json=body, headers=secret)
        assert answered.status_code == 200, (body, answered.text)
    assert await h.conn.fetchval("select count(*) from bindings") == 0
    for path, secret in (telegram, max_bot):
        malformed = await h.client.post(
            path, content=b"\x00", headers={**secret, "Content-Type": "application/json"}
        )
        assert malformed.status_code == 400, malformed.text
        assert malformed.json()["error"]["code"] == "invalid_request"


async def test_a_lookup_of_an_unknown_phone_is_a_documented_404(harness: Harness) -> None:
    schema = (await harness.client.get("/schema/openapi.json")).json()
    answers_of = schema["paths"]["/v1/recipients/lookup"]["post"]["responses"]
    assert answers_of["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    missing = await harness.client.post("/v1/recipients/lookup", json={"phone": ""}, headers=BEARER)
    assert missing.status_code == 404, missing.text
