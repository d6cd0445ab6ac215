"""When the token-signing key rotates: a pure plan over the keys' times, so replicas and tests agree.

A key is published in the JWKS from the moment it exists and signs from `not_before`, which is at least
one JWKS cache lifetime later (a resource server that cached the JWKS has fetched it again by then). A
replaced key is retired when its successor starts signing and stays published until every token it
signed has expired; then it is dropped.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec


class KeyTimes(msgspec.Struct, frozen=True, kw_only=True):
    kid: str
    created_at: dt.datetime
    not_before: dt.datetime
    retired_at: dt.datetime | None = None


class KeyPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What to do now: which key signs, whether to add one (signing at once or later), which to retire."""

    signer: str | None
    create: Literal["active", "pending"] | None = None
    create_not_before: dt.datetime | None = None
    retire: tuple[str, ...] = ()
    drop_retired_before: dt.datetime | None = None

    @property
    def changes(self) -> bool:
        return self.create is not None or bool(self.retire)


def plan_keys(
    keys: list[KeyTimes],
    now: dt.datetime,
    *,
    rotation: dt.timedelta,
    lead: dt.timedelta,
    keep_after_retire: dt.timedelta,
) -> KeyPlan:
    live = [k for k in keys if k.retired_at is None]
    usable = sorted((k for k in live if k.not_before <= now), key=lambda k: (k.not_before, k.created_at))
    pending = [k for k in live if k.not_before > now]
    drop = now - keep_after_retire
    if not usable:
        if pending:
            # Nothing signs yet (the very first key was made pending): nobody can hold an older key, so
            # the pending one may sign at once.
            first = min(pending, key=lambda k: (k.not_before, k.created_at))
            return KeyPlan(signer=first.kid, drop_retired_before=drop)
        return KeyPlan(signer=None, create="active", create_not_before=now, drop_retired_before=drop)
    signer = usable[-1]
    retire = tuple(k.kid for k in usable[:-1])
    due = signer.not_before + rotation
    if not pending and now >= due - lead:
        return KeyPlan(
            signer=signer.kid,
            create="pending",
            create_not_before=max(now + lead, due),
            retire=retire,
            drop_retired_before=drop,
        )
    return KeyPlan(signer=signer.kid, retire=retire, drop_retired_before=drop)


def published(keys: list[KeyTimes], now: dt.datetime, keep_after_retire: dt.timedelta) -> list[str]:
    """The kids the JWKS lists: every live key (pending ones too) and the recently retired."""
    return [k.kid for k in keys if k.retired_at is None or k.retired_at + keep_after_retire > now]
