-- CRM webhooks: every callback.* event of a site with a webhook URL becomes one delivery row, POSTed to the
-- site's CRM and retried with backoff until it is delivered or given up (failed).
create table webhook_deliveries (
    id uuid primary key,                  -- sent as X-Abonent-Delivery
    site_key text not null references sites (site_key),
    event_id uuid not null,
    event_type text not null,             -- the event's versioned tag, e.g. callback.requested.v1
    -- Where the latest attempt went: each attempt reads the site's current URL, so a fixed URL applies.
    url text not null,
    -- The exact bytes POSTed and signed (the event as JSON, phone masked).
    payload bytea not null,
    status text not null default 'pending' check (status in ('pending', 'delivered', 'failed')),
    attempts integer not null default 0,
    -- Null once delivered or failed. While an attempt is in flight it holds the claim's lease expiry.
    next_attempt_at timestamptz default now(),
    last_status_code integer,
    last_error text,
    created_at timestamptz not null default now(),
    delivered_at timestamptz,
    -- A redelivered event never queues a second delivery.
    unique (site_key, event_id)
);
create index webhook_deliveries_due on webhook_deliveries (next_attempt_at) where status = 'pending';
create index webhook_deliveries_site on webhook_deliveries (site_key, created_at desc);

-- Every attempt with what the receiver answered (or why it could not), for support and the admin API.
create table webhook_attempts (
    id bigserial primary key,
    delivery_id uuid not null references webhook_deliveries (id) on delete cascade,
    attempted_at timestamptz not null,
    status_code integer,
    error text,
    duration_ms integer not null
);
create index webhook_attempts_delivery on webhook_attempts (delivery_id, attempted_at);
