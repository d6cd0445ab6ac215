-- Corporate SIMs, part 2 (issue 13 items 6–8): registry submissions, registration deadlines, company webhooks.

-- One submission of one binding to the registry. Its id is the idempotency key the registry dedupes on:
-- a retry after a timeout (outcome unknown) resends the same id and can never make a second submission.
-- Before each call the row is leased ("in flight until lease_until"); a worker that dies leaves it to be
-- retried once the lease has expired.
create table registry_submissions (
    id uuid primary key,
    company_id uuid not null references companies (id),
    sim_id uuid not null references sims (id),
    -- The binding this submission carries (sims.bound_at): a rebind or unbind meanwhile abandons it.
    bound_at timestamptz not null,
    state text not null check (state in ('queued', 'sent', 'accepted', 'rejected', 'abandoned')),
    attempts integer not null default 0,
    next_attempt_at timestamptz not null,
    lease_until timestamptz,
    lease_token uuid,
    registry_ref text,
    reason text not null default '',
    last_error text,
    created_at timestamptz not null,
    updated_at timestamptz not null
);
create unique index registry_submissions_one_live on registry_submissions (sim_id)
    where state in ('queued', 'sent');
create index registry_submissions_due on registry_submissions (next_attempt_at)
    where state in ('queued', 'sent');
create index registry_submissions_by_sim on registry_submissions (company_id, sim_id, created_at);

-- Registration deadlines (Decree 844): when the SIM was suspended for missing its deadline (so a later
-- registration restores it), and the day a device SIM starts service (registered 3 working days before).
alter table sims add column suspended_at timestamptz;
alter table sims add column use_from date;
-- The deadline sweep looks for SIMs that need a deadline and have none.
create index sims_needing_deadline on sims (created_at, id) where deadline is null and status <> 'accepted';

-- Where a company's status webhooks go (set by the back office). The secret is encrypted (it signs).
create table company_webhooks (
    company_id uuid primary key references companies (id),
    url text not null,
    secret_enc bytea not null,
    updated_by text not null,
    updated_at timestamptz not null
);

-- Back-office reads and settings of corporate data (SIM-level actions are in sim_timeline).
create table corporate_audit (
    id bigserial primary key,
    company_id uuid references companies (id),
    at timestamptz not null,
    kind text not null,
    actor text not null,
    detail jsonb not null default '{}'
);
create index corporate_audit_by_company on corporate_audit (company_id, id);
