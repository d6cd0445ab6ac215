-- Durable timers: one row per (kind, key). Scheduling again moves the due time; rows outlive restarts.
create table scheduled_jobs (
    kind text not null,
    key text not null,
    due_at timestamptz not null,
    payload jsonb not null default '{}',
    -- Recurring housekeeping runs every this many seconds; null for one-off jobs.
    every_s double precision,
    state text not null default 'pending' check (state in ('pending', 'done', 'failed')),
    -- Failed runs so far (reset when the job succeeds or is scheduled again).
    attempts integer not null default 0,
    last_error text,
    -- The lease: a runner that claimed the row owns it until then; after that another may claim it.
    claimed_until timestamptz,
    claim_token uuid,
    claimed_by text,
    -- When the job became done or failed; retention prunes finished rows by it.
    finished_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (kind, key)
);
create index scheduled_jobs_due on scheduled_jobs (due_at) where state = 'pending';
create index scheduled_jobs_finished on scheduled_jobs (finished_at) where finished_at is not null;

-- Wake the runners at once when a job is added or moved, instead of waiting for their next poll.
create function scheduled_jobs_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('abonent_jobs_' || tg_table_schema, '');
    return null;
end $$;
create trigger scheduled_jobs_changed after insert or update of due_at on scheduled_jobs
    for each statement execute function scheduled_jobs_notify();
