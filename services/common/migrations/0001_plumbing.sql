-- Transactional outbox: a service inserts its event here in the same transaction as its state change.
create table outbox (
    id uuid primary key,                 -- the event id; also the Nats-Msg-Id, so republishing is deduplicated
    subject text not null,
    payload bytea not null,
    created_at timestamptz not null default now(),
    published_at timestamptz,
    attempts integer not null default 0,
    last_error text
);
create index outbox_unpublished on outbox (created_at) where published_at is null;

-- Wake the relay at once instead of waiting for its next poll.
create function outbox_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('abonent_outbox_' || tg_table_schema, '');
    return null;
end $$;
create trigger outbox_inserted after insert on outbox for each statement execute function outbox_notify();

-- Inbox: the event ids each consumer has applied; the row commits with the handler's effect.
create table inbox (
    consumer text not null,
    event_id uuid not null,
    processed_at timestamptz not null default now(),
    primary key (consumer, event_id)
);

-- Messages no handler could apply: poison (decoded badly, rejected) or exhausted redeliveries.
create table dead_letters (
    id bigserial primary key,
    consumer text not null,
    subject text not null,
    event_id text,
    stream_seq bigint,
    payload bytea,
    reason text not null,
    deliveries integer not null default 0,
    created_at timestamptz not null default now(),
    unique (consumer, stream_seq)
);
