-- The people we message. Phones are encrypted (phone_enc) and found by a keyed hash (phone_hash).
create table recipients (
    id uuid primary key,
    phone_hash bytea not null unique,
    phone_enc bytea not null,
    phone_masked text not null,
    lang text not null default 'ru',
    tz text not null,
    -- Which rule chose tz: 'event' (the event named it), 'number' (phonenumbers' zone for the number),
    -- 'all_russia' (unknown: only the window open in every Russian zone is used).
    tz_rule text not null check (tz_rule in ('event', 'number', 'all_russia')),
    -- A gateway said the number is dead: no SMS goes to it again.
    phone_invalid_at timestamptz,
    phone_invalid_reason text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- Opt-outs per category ('callback', 'verification', ...); legally required notices ignore them.
create table opt_outs (
    recipient_id uuid not null references recipients (id) on delete cascade,
    category text not null,
    at timestamptz not null default now(),
    primary key (recipient_id, category)
);

-- Messenger bindings: one chat per recipient and channel; one recipient per chat.
create table bindings (
    recipient_id uuid not null references recipients (id) on delete cascade,
    channel text not null,
    chat_id text not null,
    bound_at timestamptz not null,
    primary key (recipient_id, channel),
    unique (channel, chat_id)
);

-- A chat that opened a valid deep link and must now share its contact (whose phone must match).
create table pending_binds (
    channel text not null,
    chat_id text not null,
    recipient_id uuid not null references recipients (id) on delete cascade,
    started_at timestamptz not null,
    primary key (channel, chat_id)
);

-- Every bind, unbind and refused contact, for support.
create table binding_log (
    id bigserial primary key,
    recipient_id uuid,
    channel text not null,
    chat_id text not null,
    action text not null,
    at timestamptz not null
);
create index binding_log_recipient on binding_log (recipient_id, id);

-- callback.requested carries the phone; the callback's later events do not: remember whom they concern.
create table callback_contacts (
    callback_id uuid primary key,
    recipient_id uuid not null references recipients (id) on delete cascade,
    site_key text not null,
    lang text not null,
    page_url text not null default '',
    created_at timestamptz not null default now()
);

-- One row per (event, recipient, purpose): the dedupe key of "never twice".
create table messages (
    id uuid primary key,
    event_id uuid not null,
    event_type text not null,
    occurred_at timestamptz not null,
    recipient_id uuid not null references recipients (id) on delete cascade,
    -- Whose message it is: the callback site, or 'verification'.
    tenant text not null,
    purpose text not null,
    category text not null,
    -- Messages about one thing (a callback, a verification case): a later one supersedes a pending one.
    thread_key text not null,
    template text not null,
    template_version integer not null,
    template_id text not null default '',
    lang text not null,
    body text not null,
    urgent boolean not null,
    legally_required boolean not null,
    edit_in_place boolean not null,
    channel_order text[] not null,
    state text not null check (state in (
        'queued', 'deferred', 'sending', 'sent', 'delivered', 'failed', 'superseded', 'expired', 'skipped',
        'unknown')),
    send_at timestamptz not null,
    expires_at timestamptz,
    deadline timestamptz,
    timing_rule text not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    unique (event_id, recipient_id, purpose)
);
create index messages_recipient on messages (recipient_id, created_at);
create index messages_thread on messages (thread_key, occurred_at);

-- One row per (message, channel): its provider call under a lease. The row id is the idempotency key
-- handed to the provider (OutboundMessage.message_id), the same on every retry of this attempt.
create table attempts (
    id uuid primary key,
    message_id uuid not null references messages (id) on delete cascade,
    channel text not null,
    kind text not null check (kind in ('sms', 'messenger')),
    -- The chat id for messengers; SMS go to the recipient's (encrypted) phone, never copied here.
    address text not null default '',
    -- The provider id of an earlier message this attempt edits in place ('' for a new message).
    edit_of text not null default '',
    is_fallback boolean not null default false,
    state text not null check (state in (
        'ready', 'in_flight', 'sent', 'delivered', 'failed', 'unknown', 'cancelled', 'expired')),
    not_before timestamptz not null,
    tries integer not null default 0,
    lease_until timestamptz,
    claim_token uuid,
    provider_message_id text,
    segments integer not null default 0,
    cost_minor integer not null default 0,
    sent_at timestamptz,
    delivered_at timestamptz,
    error text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    unique (message_id, channel)
);
create index attempts_ready on attempts (not_before) where state = 'ready';
create index attempts_in_flight on attempts (lease_until) where state = 'in_flight';
create index attempts_provider on attempts (channel, provider_message_id);

-- Wake the senders at once when an attempt becomes ready.
create function attempts_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('abonent_notifier_send_' || tg_table_schema, '');
    return null;
end $$;
create trigger attempts_ready_notify after insert or update of state, not_before on attempts
    for each row when (new.state = 'ready') execute function attempts_notify();

-- Receipts that arrived before the send that they report was committed (a fast provider can beat our
-- second transaction); applied when it is.
create table early_receipts (
    channel text not null,
    provider_message_id text not null,
    status text not null,
    at timestamptz not null,
    reason text not null default '',
    primary key (channel, provider_message_id)
);

-- What happened to a message, in order: queued, deferred until, sent via, delivered, fallback, ...
create table timeline (
    id bigserial primary key,
    message_id uuid not null references messages (id) on delete cascade,
    at timestamptz not null,
    what text not null,
    channel text not null default '',
    detail text not null default ''
);
create index timeline_message on timeline (message_id, id);

-- The sandbox channel's "phones" (dev and tests only): what each address received, and its receipts.
create table sandbox_messages (
    id bigserial primary key,
    -- The idempotency key the notifier gave (OutboundMessage.message_id): a resubmission is counted,
    -- not shown twice.
    idempotency_key uuid not null unique,
    channel text not null,
    address text not null,
    body text not null,
    provider_message_id text not null unique,
    submissions integer not null default 1,
    status text not null default 'sent' check (status in ('sent', 'delivered', 'failed')),
    sent_at timestamptz not null default now(),
    edited_at timestamptz,
    receipt_at timestamptz
);
create index sandbox_messages_address on sandbox_messages (address, id);
