-- Verification cases (issue 11): one subscriber (an MSISDN) asked to confirm the passport data on their
-- contract by a deadline. Personal data is encrypted (DataProtector: the key id is in each value's header)
-- and purged some days after the case closes; the outcome and the timeline stay.
create table cases (
    id uuid primary key,
    reason text not null check (reason in ('outdated_data', 'used_by_other_person', 'regulator_request')),
    -- open: waiting for the subscriber; mismatch: signed in, data differs (the office must look);
    -- suspended: the deadline passed unconfirmed; confirmed / restored / cancelled: closed.
    status text not null check (status in ('open', 'mismatch', 'suspended', 'confirmed', 'restored', 'cancelled')),
    lang text not null check (lang in ('ru', 'en')),
    tz text not null,
    -- The subscriber's number: encrypted, found by a keyed hash, shown masked. All null after the purge.
    msisdn_enc bytea,
    msisdn_index bytea,
    msisdn_masked text not null,
    -- The contract holder's data from billing (JSON: names, birth date, passport), encrypted as one value.
    holder_enc bytea,
    opened_by text not null,
    opened_at timestamptz not null,
    deadline timestamptz not null,
    suspended_at timestamptz,
    closed_at timestamptz,
    -- Which fields differed at the last mismatch (names only, never values).
    mismatch_fields text[] not null default '{}',
    purged_at timestamptz
);
-- One active case per number: opening again returns it (idempotent open).
create unique index cases_one_active_per_msisdn on cases (msisdn_index)
    where status in ('open', 'mismatch', 'suspended');
create index cases_by_status_deadline on cases (status, deadline);
create index cases_by_reason on cases (reason, deadline);
create index cases_to_purge on cases (closed_at) where purged_at is null and closed_at is not null;

-- The short links sent by SMS: the token carries this random id plus a truncated signature. A link is
-- spent by the sign-in that decided the case; the case's state decides what an unspent one shows.
create table links (
    id text primary key,
    case_id uuid not null references cases (id),
    created_at timestamptz not null,
    spent_at timestamptz
);
create index links_by_case on links (case_id);

-- Sign-in attempts: the OAuth state (UUID4) bound to the case and link, single-use, with a TTL. `nonce` and
-- `code_verifier` live only until the callback (cleared on use); tokens are never stored.
create table sign_ins (
    state text primary key,
    -- Creation order (the clock may stand still in tests; the latest attempt decides what the page shows).
    seq bigserial not null,
    case_id uuid not null references cases (id),
    link_id text not null references links (id),
    provider text not null,
    nonce text not null default '',
    code_verifier text not null default '',
    -- A keyed hash of the browser-binding cookie: a callback from another browser is refused.
    browser_hash bytea not null,
    created_at timestamptz not null,
    expires_at timestamptz not null,
    used_at timestamptz,
    -- confirmed | mismatch | consent_denied | account_not_confirmed | failed (what the subscriber saw).
    outcome text
);
create index sign_ins_by_link on sign_ins (link_id, used_at desc);

-- The timeline: every decision, transition, notice and back-office read (the audit log), never personal
-- values. Kept after the purge.
create table case_timeline (
    id bigserial primary key,
    case_id uuid not null references cases (id),
    at timestamptz not null,
    kind text not null,
    actor text not null,
    detail jsonb not null default '{}'
);
create index case_timeline_by_case on case_timeline (case_id, id);

-- Idempotency-Key of POST /v1/cases: the same key with the same body returns the same case.
create table idempotency_keys (
    key text primary key,
    request_hash bytea not null,
    case_id uuid not null references cases (id),
    created_at timestamptz not null default now()
);
