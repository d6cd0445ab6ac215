"""Suspend/restore commands to billing: the webhook channel, its body and where it goes."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

import msgspec

from services.common import db
from services.common.webhooks import Endpoint, Resolver, WebhookChannel
from services.verification.settings import VerificationSettings

# Suspend/restore commands to billing: signed, retried ≈24 h until acknowledged; the body's command_id
# (and the Idempotency-Key, the delivery id) let billing apply each once.
BILLING = WebhookChannel(
    name="billing", disabled_reason="no billing endpoint configured (ABONENT_BILLING_WEBHOOK_URL)"
)
BILLING_SUBSCRIBER = "billing"


class BillingCommand(msgspec.Struct, frozen=True, kw_only=True):
    """The webhook body billing receives (it must know the number: it is the operator's own system)."""

    command_id: uuid.UUID
    command: Literal["suspend", "restore"]
    case_id: uuid.UUID
    msisdn: str
    reason: str
    occurred_at: dt.datetime


def billing_endpoint(own: VerificationSettings) -> Resolver:
    async def resolve(_conn: db.Connection, _subscriber: str) -> Endpoint | None:
        if not own.billing_webhook_url:
            return None
        return Endpoint(url=own.billing_webhook_url, secret=own.billing_webhook_secret)

    return resolve
