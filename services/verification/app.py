"""Verification service app factory and wiring; routes live in case_api.py and subscriber.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from pathlib import Path

import httpx
from litestar import Litestar
from litestar.di import Provide

from services.common.clock import Clock, SystemClock
from services.common.crypto import DataProtector
from services.common.retention import RetentionRule
from services.common.rotation import EncryptedColumn
from services.common.scheduler import JobHandler
from services.common.settings import Settings, get_section, get_settings
from services.common.web import Runtime, ServiceSpec, build_app
from services.common.webhook_sender import WebhookSender
from services.verification import case_api, store, subscriber
from services.verification.case_api import ADMIN_SCOPE, CASES_SCOPE
from services.verification.corporate import api as corporate_api
from services.verification.corporate import store as corporate_store
from services.verification.corporate.oauth import CorporateAuth
from services.verification.corporate.usecases import CorporateSims
from services.verification.deps import service_of
from services.verification.domain.policy import validate_policies
from services.verification.identity.base import IdentityProvider
from services.verification.identity.config import IdentitySettings, build_identity_provider
from services.verification.settings import VerificationSettings, get_verification_settings
from services.verification.usecases import (
    BILLING,
    JOB_DEADLINE,
    JOB_PURGE,
    JOB_REMINDER,
    VerificationService,
    billing_endpoint,
)


def _encrypted_columns() -> tuple[EncryptedColumn, ...]:
    return (
        EncryptedColumn(table="cases", id_column="id", column="msisdn_enc", context=store.MSISDN_CONTEXT),
        EncryptedColumn(table="cases", id_column="id", column="holder_enc", context=store.HOLDER_CONTEXT),
        EncryptedColumn(
            table="company_numbers",
            id_column="id",
            column="msisdn_enc",
            context=corporate_store.MSISDN_CONTEXT,
        ),
        EncryptedColumn(
            table="sims", id_column="id", column="employee_enc", context=corporate_store.EMPLOYEE_CONTEXT
        ),
        EncryptedColumn(
            table="signing_keys",
            id_column="kid",
            column="private_enc",
            context=corporate_store.SIGNING_KEY_CONTEXT,
        ),
    )


ENCRYPTED_COLUMNS = _encrypted_columns()


def make_spec(
    own: VerificationSettings | None = None,
    identity: IdentitySettings | None = None,
    clock: Clock | None = None,
) -> ServiceSpec:
    """`own`/`identity` None: this process's ABONENT_* environment, read when the app starts."""
    policies = validate_policies()

    async def start(runtime: Runtime) -> None:
        section = own or get_verification_settings()
        identity_section = identity or get_section(IdentitySettings)
        settings = runtime.settings
        protector = DataProtector.from_settings(settings)
        http = httpx.AsyncClient(follow_redirects=False)
        provider: IdentityProvider = build_identity_provider(identity_section, http)
        public = section.public_url(settings.host, settings.verification_port)
        link_base = section.link_base(settings.host, settings.verification_port)
        the_clock = clock or SystemClock()
        web = VerificationService(
            pool=runtime.pool,
            protector=protector,
            own=section,
            policies=policies,
            clock=the_clock,
            public_url=public,
            link_base=link_base,
            provider=provider,
        )
        runtime.extras["verification"] = web
        auth = CorporateAuth(
            pool=runtime.pool,
            protector=protector,
            clock=the_clock,
            issuer=public,
            token_ttl_s=section.verification_corporate_token_ttl_s,
            rotation=dt.timedelta(days=section.verification_corporate_key_rotation_days),
        )
        runtime.extras[corporate_api.EXTRA] = CorporateSims(pool=runtime.pool, cases=web, auth=auth)
        # Timers run on the worker pool: a flood of page views cannot delay a suspension.
        runtime.extras["verification_jobs"] = dataclasses.replace(web, pool=runtime.worker_pool)
        billing = WebhookSender(runtime.worker_pool, http, BILLING, billing_endpoint(section))
        await billing.start()
        runtime.extras.update(billing=billing, http=http, provider=provider)

    async def finish(runtime: Runtime) -> None:
        await runtime.extras["billing"].stop()
        await runtime.extras["provider"].close()
        await runtime.extras["http"].aclose()

    def jobs(runtime: Runtime) -> Mapping[str, JobHandler]:
        worker: VerificationService = runtime.extras["verification_jobs"]
        return {
            JOB_REMINDER: worker.on_reminder,
            JOB_DEADLINE: worker.on_deadline,
            JOB_PURGE: worker.on_purge,
        }

    from services.verification.seed import seed_demo

    return ServiceSpec(
        name="verification",
        title="Abonent verification",
        description="Subscribers confirm their passport data through an ESIA-style sign-in by a deadline; "
        "back office opens and watches cases. Companies register who uses their corporate SIMs "
        "(OAuth 2.0 client credentials at /oauth/token). Every 4xx has the shape "
        '{"error": {"code", "message", "field"}}.',
        route_handlers=[*case_api.ROUTES, *subscriber.ROUTES, *corporate_api.ROUTES],
        migrations_dir=Path(__file__).parent / "migrations",
        on_startup=[start],
        on_shutdown=[finish],
        jobs=jobs,
        retention=[RetentionRule("idempotency_keys", "created_at", "retention_idempotency_keys_hours")],
        dependencies={"service": Provide(service_of, sync_to_thread=False), **corporate_api.DEPENDENCIES},
        settings_section=VerificationSettings,
        encrypted_columns=ENCRYPTED_COLUMNS,
        links=[
            ("verification case API docs", "/schema/swagger#/cases"),
            ("corporate SIM API docs", "/schema/swagger#/corporate-sims"),
        ],
        dev_seed=seed_demo,
        scopes={
            CASES_SCOPE: "open, list and read subscriber verification cases",
            ADMIN_SCOPE: "cancel and extend cases; billing command deliveries",
            **corporate_api.SCOPES,
        },
    )


SPEC = make_spec()


def create_app(
    settings: Settings | None = None,
    own: VerificationSettings | None = None,
    identity: IdentitySettings | None = None,
    clock: Clock | None = None,
) -> Litestar:
    """The verification app; each settings section defaults to this process's environment."""
    return build_app(make_spec(own, identity, clock), settings or get_settings(), clock=clock)
