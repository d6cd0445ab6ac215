-- A repeat request for a phone that is already pending joins that request without controlling it: the
-- second caller gets an alias of their own (own id, own read-only token) that shows the call of the number
-- they typed and can only withdraw itself. Aliases count towards the per-IP budget like any request.
create table callback_aliases (
    id uuid primary key,
    callback_id uuid not null references callbacks (id) on delete cascade,
    site_key text not null,
    token_hash bytea not null unique,
    client_ip_hash bytea,
    visitor_tz text not null,
    lang text not null,
    created_at timestamptz not null default now(),
    withdrawn_at timestamptz
);
create index callback_aliases_ip on callback_aliases (site_key, client_ip_hash, created_at);
create index callback_aliases_callback on callback_aliases (callback_id);
