-- Operator staff who take callbacks. Passwords are scrypt hashes.
create table agents (
    id uuid primary key,
    login text not null unique,
    name text not null,
    password_hash text not null,
    queues text[] not null default '{default}',
    -- Where the telephony adapter rings this agent: a sim id, "PJSIP/101", a PBX extension.
    endpoint text not null,
    created_at timestamptz not null default now()
);

-- Presence, shared by every replica: the console's heartbeats keep last_seen_at fresh; a closed tab
-- stops them and the agent drops out within the TTL. Reservation (current_attempt) happens in the
-- same transaction that moves a request to dialing, so no agent gets two calls.
create table agent_presence (
    agent_id uuid primary key references agents (id),
    status text not null default 'offline',  -- offline | ready | break
    ready_since timestamptz,                 -- longest idle first
    last_seen_at timestamptz not null default now(),
    current_callback uuid,
    current_attempt uuid
);

-- The visitor's retry plan: when the last remaining attempt happens if none connects.
alter table callbacks add column last_attempt_by timestamptz;

-- One row per dial attempt; its id is the idempotency key handed to the telephony adapter.
create table dial_attempts (
    id uuid primary key,
    callback_id uuid not null references callbacks (id),
    attempt_no integer not null,
    agent_id uuid references agents (id),
    adapter text not null,
    state text not null,  -- placing | placed | agent_ringing | visitor_ringing | connected | ended
    provider_call_id text,
    outcome text,
    started_at timestamptz not null,
    placed_at timestamptz,
    connected_at timestamptz,
    ended_at timestamptz,
    unique (callback_id, attempt_no)
);
create index dial_attempts_open on dial_attempts (started_at) where state <> 'ended';
