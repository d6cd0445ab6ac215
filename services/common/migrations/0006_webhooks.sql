-- Outbound webhooks (services/common/webhooks.py): every signed POST a service owes someone outside is one
-- delivery row, sent by a leasing sender, retried with backoff until delivered or given up (failed).
-- The names are new on purpose: plumbing runs before a service's own migrations on a fresh database, so
-- a service that had webhook tables of its own (webhook_deliveries, webhook_attempts) moves its rows here
-- in a later migration of its own and drops them.
create table outbound_webhooks (
    id uuid primary key,                  -- sent as X-Abonent-Delivery and Idempotency-Key
    -- The use this delivery belongs to (a name the service picks, e.g. "billing"): each use has its own
    -- sender, endpoint resolver, retry schedule and metrics label, and only claims its own rows.
    channel text not null,
    -- Whom it goes to, an opaque key the channel's resolver understands (an account, a company id, …).
    subscriber text not null,
    event_id uuid not null,
    event_type text not null,             -- sent as X-Abonent-Event, e.g. <service>.<event>.v1
    -- The exact bytes POSTed and signed.
    payload bytea not null,
    -- Where the latest attempt went (each attempt asks the resolver again, so a fixed URL applies).
    url text,
    status text not null default 'pending' check (status in ('pending', 'delivered', 'failed')),
    attempts integer not null default 0,
    -- Null once delivered or failed. While an attempt is in flight it holds the claim's lease expiry, so a
    -- sender that dies mid-POST leaves the row due again once the lease has run out.
    next_attempt_at timestamptz default now(),
    -- The claim that holds the lease: a sender whose lease was taken over records its attempt but no
    -- longer moves the delivery on.
    lease_token uuid,
    last_status_code integer,
    last_error text,
    created_at timestamptz not null default now(),
    delivered_at timestamptz,
    -- A redelivered event never queues a second delivery.
    unique (channel, subscriber, event_id)
);
create index outbound_webhooks_due on outbound_webhooks (channel, next_attempt_at) where status = 'pending';
create index outbound_webhooks_subscriber on outbound_webhooks (channel, subscriber, created_at desc);

-- Every attempt with what the receiver answered (or why it could not), for support and the back office.
create table outbound_webhook_attempts (
    id bigserial primary key,
    delivery_id uuid not null references outbound_webhooks (id) on delete cascade,
    attempted_at timestamptz not null,
    status_code integer,
    error text,
    duration_ms integer not null
);
create index outbound_webhook_attempts_delivery on outbound_webhook_attempts (delivery_id, attempted_at);
