-- Relay leases: a relay claims unpublished rows until claimed_until and publishes outside any transaction;
-- a relay that died leaves an expired lease that any other relay may claim again.
alter table outbox add column claimed_until timestamptz;
alter table outbox add column claimed_by text;

-- Handler failures that are not transient (bugs), counted per consumer and event so that a long
-- PostgreSQL or NATS outage (which only naks) never uses up an event's retry budget.
create table consumer_failures (
    consumer text not null,
    event_id uuid not null,
    failures integer not null default 0,
    last_error text not null default '',
    updated_at timestamptz not null default now(),
    primary key (consumer, event_id)
);

-- Replays from `abonent dead-letters replay`: when and how many times a dead letter was republished.
alter table dead_letters add column replayed_at timestamptz;
alter table dead_letters add column replay_count integer not null default 0;
create index dead_letters_consumer on dead_letters (consumer, id);
