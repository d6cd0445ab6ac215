"""Messenger bindings: deep links, /start tokens, shared contacts, unbinding."""

from __future__ import annotations

import datetime as dt
import uuid

import phonenumbers

from services.common import db
from services.notifier import store
from services.notifier.channels.base import InboundUpdate
from services.notifier.domain import binding
from services.notifier.engine.core import BIND_CONTACT_WITHIN, NotifierCore


class Bindings(NotifierCore):
    """A chat bound to a recipient once it shares the recipient's own phone number."""

    def binding_token(self, recipient_id: uuid.UUID, channel: str) -> str:
        expires = self.clock.now() + dt.timedelta(hours=self.settings.notify_bind_token_hours)
        return binding.issue_token(self.protector.sign, recipient_id, channel, expires)

    def binding_link(self, recipient_id: uuid.UUID, channel: str) -> str:
        bot = {"telegram": self.settings.notify_telegram_bot, "max": self.settings.notify_max_bot}.get(
            channel, ""
        )
        return binding.deep_link(channel, bot, self.binding_token(recipient_id, channel))

    async def _unbind(
        self, conn: db.Connection, channel: str, chat_id: str, action: str, now: dt.datetime
    ) -> None:
        recipient_id = await store.unbind_chat(conn, channel, chat_id)
        if recipient_id is not None:
            await store.log_binding(conn, recipient_id, channel, chat_id, action=action, at=now)

    async def on_update(self, conn: db.Connection, update: InboundUpdate) -> str:
        """/start <token> → await the contact; a matching contact → bound; stop or blocked → unbound."""
        now = self.clock.now()
        if update.kind == "start":
            try:
                recipient_id = binding.read_token(self.protector.sign, update.token, update.channel, now)
            except binding.BadToken as exc:
                await store.log_binding(
                    conn, None, update.channel, update.chat_id, action=f"bad_token: {exc}", at=now
                )
                return "bad_token"
            if await store.get_recipient(conn, recipient_id) is None:
                return "bad_token"
            await store.start_bind(conn, update.channel, update.chat_id, recipient_id, now)
            await store.log_binding(
                conn, recipient_id, update.channel, update.chat_id, action="started", at=now
            )
            return "awaiting_contact"
        if update.kind == "contact":
            pending = await store.take_pending_bind(
                conn, update.channel, update.chat_id, now - BIND_CONTACT_WITHIN
            )
            if pending is None:
                return "no_pending_bind"
            recipient_id = pending
            expected = await store.phone_hash_of(conn, recipient_id)
            try:
                shared = phonenumbers.format_number(
                    phonenumbers.parse(update.phone), phonenumbers.PhoneNumberFormat.E164
                )
            except phonenumbers.NumberParseException:
                shared = ""
            if not shared or expected != self.phone_hash(shared):
                await store.log_binding(
                    conn, recipient_id, update.channel, update.chat_id, action="contact_mismatch", at=now
                )
                return "contact_mismatch"
            await store.bind(conn, recipient_id, update.channel, update.chat_id, now)
            await store.log_binding(
                conn, recipient_id, update.channel, update.chat_id, action="bound", at=now
            )
            return "bound"
        if update.kind in ("stop", "blocked"):
            await self._unbind(conn, update.channel, update.chat_id, f"unbound_{update.kind}", now)
            return "unbound"
        return "ignored"
