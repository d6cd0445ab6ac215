-- Bulk upload of corporate SIM bindings (issue 13 item 4): an asynchronous job per uploaded file, its rows
-- staged by COPY and applied set-based, and per number the content hash of the row last applied (so the
-- same file uploaded again changes nothing).

create table bulk_jobs (
    id uuid primary key,
    company_id uuid not null references companies (id),
    actor text not null,
    state text not null check (state in ('queued', 'running', 'done', 'failed')),
    format text not null check (format in ('csv', 'jsonl')),
    total integer not null,
    done integer not null default 0,
    applied integer not null default 0,
    unchanged integer not null default 0,
    errors integer not null default 0,
    failure text not null default '',
    created_at timestamptz not null,
    finished_at timestamptz
);
create index bulk_jobs_by_company on bulk_jobs (company_id, created_at);

-- The staging table: one row per file row. Python validated each row (the single-SIM API's validators)
-- before COPY; `outcome` is 'pending' until the apply phase decides it. The number and any personal data
-- travel only encrypted (payload_enc); device columns are not personal data.
create table bulk_rows (
    job_id uuid not null references bulk_jobs (id) on delete cascade,
    row_no integer not null,
    msisdn_index bytea,
    kind text,
    row_hash bytea,
    payload_enc bytea,
    device_type text,
    device_name text,
    device_id_kind text,
    device_id text,
    installation_address text,
    outcome text not null check (outcome in ('pending', 'applied', 'unchanged', 'error')),
    field text not null default '',
    reason text not null default '',
    primary key (job_id, row_no)
);
create index bulk_rows_by_number on bulk_rows (job_id, msisdn_index);

-- What a bulk row last set on a SIM: the row's hash and the SIM version it produced. The same row again,
-- while the SIM is still at that version, is unchanged.
create table bulk_applied (
    company_id uuid not null references companies (id),
    sim_id uuid primary key references sims (id),
    row_hash bytea not null,
    sim_version integer not null
);
