-- Sites (tenants) as the back office configures them; `settings` is the SiteSettings contract as JSON.
create table sites (
    site_key text primary key,
    settings jsonb not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- One row per callback request. Phones are encrypted (phone_enc) and found by a keyed hash (phone_hash).
create table callbacks (
    id uuid primary key,
    site_key text not null references sites (site_key),
    queue text not null,
    phone_enc bytea not null,
    phone_hash bytea not null,
    phone_masked text not null,
    visitor_id text,
    visitor_tz text not null,
    lang text not null,
    not_before time,
    status text not null,
    -- Original request time: the queue order; merges and reschedules never change it.
    requested_at timestamptz not null,
    -- Earliest moment the request may be dialed (now for ASAP, the slot start or opening otherwise).
    due_at timestamptz not null,
    promise_kind text not null,
    promised_earliest timestamptz not null,
    promised_latest timestamptz not null,
    attempts integer not null default 0,
    max_attempts integer not null,
    outcome text,
    first_dial_at timestamptz,
    connected_at timestamptz,
    ended_at timestamptz,
    page_url text not null default '',
    referrer text not null default '',
    utm jsonb not null default '{}',
    consent_version text,
    consented_at timestamptz,
    client_ip_hash bytea,
    merged_count integer not null default 0,
    updated_at timestamptz not null default now()
);
-- At most one pending request per phone and site: a second one merges into it.
create unique index callbacks_one_pending_per_phone on callbacks (site_key, phone_hash)
    where status in ('requested', 'scheduled', 'dialing', 'connected');
create index callbacks_queue_due on callbacks (queue, requested_at) where status in ('requested', 'scheduled');
create index callbacks_site_ip_recent on callbacks (site_key, client_ip_hash, requested_at);
create index callbacks_phone_recent on callbacks (phone_hash, requested_at);
create index callbacks_visitor on callbacks (site_key, visitor_id) where visitor_id is not null;

-- Status tokens (hashed): the original requester's and one per merged request.
create table callback_tokens (
    token_hash bytea primary key,
    callback_id uuid not null references callbacks (id),
    created_at timestamptz not null default now()
);

-- Every promise we gave, with the state it was computed from, so punctuality can be measured.
create table promises (
    id bigserial primary key,
    callback_id uuid not null references callbacks (id),
    given_at timestamptz not null,
    kind text not null,
    reason text not null,
    earliest timestamptz not null,
    latest timestamptz not null,
    snapshot jsonb not null
);
create index promises_callback on promises (callback_id, given_at);

-- Idempotency-Key: the first response is replayed for retries of the same request.
create table idempotency_keys (
    site_key text not null,
    key text not null,
    request_hash bytea not null,
    status_code integer not null,
    response jsonb not null,
    created_at timestamptz not null default now(),
    primary key (site_key, key)
);

-- Form tokens already spent: a proof of work or fill-time token cannot be replayed.
create table spent_form_tokens (
    token_hash bytea primary key,
    spent_at timestamptz not null default now()
);
