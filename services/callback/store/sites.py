"""SQL of sites: settings, the encrypted CRM webhook secret and where a site's webhooks go."""

from __future__ import annotations

import msgspec

from services.callback.schemas import Site, SiteSettings
from services.callback.store.orgs import DEFAULT_ORG
from services.common.crypto import DataProtector
from services.common.db import Connection
from services.common.webhooks import Endpoint

# Context (associated data) of the encrypted CRM webhook secret; its row id is the site key.
WEBHOOK_SECRET_CONTEXT = "callback.sites.crm_webhook_secret"  # noqa: S105 (a label, not a secret)


class SiteInAnotherOrg(Exception):
    """The site key is taken by another organisation's site (sites never move between organisations)."""


_SITE_COLUMNS = (
    "site_key, org_id, settings - 'crm_webhook_secret' as settings, updated_at,"
    " (crm_webhook_secret_enc is not null or coalesce(settings->>'crm_webhook_secret', '') <> '')"
    " as crm_webhook_secret_set"
)


async def upsert_site(
    conn: Connection,
    site_key: str,
    settings: SiteSettings,
    *,
    webhook_secret_enc: bytes | msgspec.UnsetType | None = msgspec.UNSET,
    org_id: str = DEFAULT_ORG,
) -> tuple[Site, bool]:
    """Create or replace a site of `org_id`. The webhook secret is kept unless `webhook_secret_enc` is
    given (None clears it): it never travels inside `settings`, which responses show.

    Raises SiteInAnotherOrg when the key belongs to another organisation's site."""
    stored = msgspec.to_builtins(msgspec.structs.replace(settings, crm_webhook_secret=msgspec.UNSET))
    keep = webhook_secret_enc is msgspec.UNSET
    record = await conn.fetchrow(
        "insert into sites (site_key, settings, crm_webhook_secret_enc, org_id) values ($1, $2, $3, $5)"
        " on conflict (site_key) do update set settings = excluded.settings, updated_at = now(),"
        "  crm_webhook_secret_enc = case when $4 then sites.crm_webhook_secret_enc"
        "   else excluded.crm_webhook_secret_enc end"
        " where sites.org_id = excluded.org_id"
        " returning updated_at, (xmax = 0) as created, crm_webhook_secret_enc is not null as secret_set",
        site_key,
        stored,
        None if keep else webhook_secret_enc,
        keep,
        org_id,
    )
    if record is None:
        raise SiteInAnotherOrg(site_key)
    site = Site(
        site_key=site_key,
        org_id=org_id,
        settings=msgspec.structs.replace(settings, crm_webhook_secret=msgspec.UNSET),
        updated_at=record["updated_at"],
        crm_webhook_secret_set=record["secret_set"],
    )
    return site, bool(record["created"])


async def get_site(conn: Connection, site_key: str) -> Site | None:
    record = await conn.fetchrow(f"select {_SITE_COLUMNS} from sites where site_key = $1", site_key)
    return None if record is None else msgspec.convert(dict(record), Site)


async def list_sites(conn: Connection, org_id: str | None) -> list[Site]:
    """The sites of one organisation, or of all of them (None: the platform admin)."""
    records = await conn.fetch(
        f"select {_SITE_COLUMNS} from sites where $1::text is null or org_id = $1 order by site_key", org_id
    )
    return [msgspec.convert(dict(r), Site) for r in records]


async def seal_plain_webhook_secrets(conn: Connection, protector: DataProtector) -> int:
    """Encrypt secrets written in plaintext into `settings` before 0005_keyring; return how many."""
    records = await conn.fetch(
        "select site_key, settings->>'crm_webhook_secret' as secret from sites"
        " where settings ? 'crm_webhook_secret' for update"
    )
    for record in records:
        secret = record["secret"] or ""
        await conn.execute(
            "update sites set settings = settings - 'crm_webhook_secret',"
            " crm_webhook_secret_enc = coalesce($2, crm_webhook_secret_enc) where site_key = $1",
            record["site_key"],
            protector.encrypt(secret, WEBHOOK_SECRET_CONTEXT, record["site_key"]) if secret else None,
        )
    return len(records)


async def site_exists(conn: Connection, site_key: str) -> bool:
    return bool(await conn.fetchval("select true from sites where site_key = $1", site_key))


async def crm_webhook_url(conn: Connection, site_key: str) -> str:
    """The site's CRM webhook URL, or "" when it has none (or there is no such site)."""
    url = await conn.fetchval("select settings->>'crm_webhook_url' from sites where site_key = $1", site_key)
    return str(url or "")


async def crm_webhook_endpoint(conn: Connection, protector: DataProtector, site_key: str) -> Endpoint | None:
    """Where a site's CRM webhooks go and the secret that signs them; None when it has no URL.

    The only place the secret is read (the webhook sender's resolver comes here).
    """
    record = await conn.fetchrow(
        "select coalesce(settings->>'crm_webhook_url', '') as url, crm_webhook_secret_enc from sites"
        " where site_key = $1",
        site_key,
    )
    if record is None or not record["url"]:
        return None
    enc = record["crm_webhook_secret_enc"]
    secret = "" if enc is None else protector.decrypt(enc, WEBHOOK_SECRET_CONTEXT, site_key)
    return Endpoint(url=record["url"], secret=secret)
