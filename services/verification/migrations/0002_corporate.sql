-- Corporate SIMs (issue 13): companies register who uses each SIM on their contract (533-FZ, Decree 844).
-- Tenancy: every row that belongs to a company carries company_id and every query filters by it; a
-- number is found by its blind index (the same keyed hash as cases.msisdn_index), never by plaintext.

-- A company (legal entity or entrepreneur). `ogrn` holds the OGRN (13 digits) or the OGRNIP (15).
create table companies (
    id uuid primary key,
    name text not null,
    inn text not null,
    ogrn text not null,
    status text not null check (status in ('active', 'suspended', 'closed')),
    created_by text not null,
    created_at timestamptz not null
);
create unique index companies_by_inn on companies (inn);
create unique index companies_by_ogrn on companies (ogrn);

-- The numbers on a company's contract (its inventory). A number is on at most one live contract.
create table company_numbers (
    id uuid primary key,
    company_id uuid not null references companies (id),
    msisdn_enc bytea not null,
    msisdn_index bytea not null,
    msisdn_masked text not null,
    added_at timestamptz not null,
    removed_at timestamptz
);
create unique index company_numbers_one_contract on company_numbers (msisdn_index) where removed_at is null;
create index company_numbers_by_company on company_numbers (company_id, added_at, id);

-- A company's API clients (OAuth 2.0 client credentials). The secret is shown once and stored hashed.
create table api_clients (
    client_id text primary key,
    company_id uuid not null references companies (id),
    name text not null default '',
    secret_hash bytea not null,
    scopes text[] not null,
    created_by text not null,
    created_at timestamptz not null,
    revoked_at timestamptz
);
create index api_clients_by_company on api_clients (company_id);

-- Keys that sign the access tokens (operator-wide, not a tenant's). A new key is published in the JWKS
-- from created_at and signs from not_before (so verifiers fetched it first); a retired key stays
-- published until every token it signed has expired.
create table signing_keys (
    kid text primary key,
    alg text not null,
    private_enc bytea not null,
    public_jwk jsonb not null,
    created_at timestamptz not null,
    not_before timestamptz not null,
    retired_at timestamptz
);

-- One row per number on a contract: who or what uses it, and where its registration stands.
create table sims (
    id uuid primary key,
    company_id uuid not null references companies (id),
    number_id uuid not null references company_numbers (id),
    status text not null check (status in (
        'unregistered', 'pending_employee_confirmation', 'pending_submission', 'submitted',
        'accepted', 'rejected'
    )),
    status_reason text not null default '',
    deadline timestamptz,
    -- Optimistic concurrency: every transition names the version it read (and API clients may send it).
    version integer not null default 1,
    binding text check (binding in ('employee', 'device')),
    -- Employee: one encrypted JSON (names, birth date, passport), a blind index of the passport (the
    -- 20-number limit across companies) and a masked form for views. Null for devices.
    employee_enc bytea,
    employee_masked text,
    passport_index bytea,
    -- Device (not personal data): type, name, IMEI or MAC, the installation address (stationary types).
    device_type text,
    device_name text,
    device_id_kind text check (device_id_kind in ('imei', 'mac')),
    device_id text,
    installation_address text,
    -- The subscriber-verification case the employee confirms through (the ESIA sign-in is reused).
    case_id uuid references cases (id),
    created_at timestamptz not null,
    bound_at timestamptz,
    updated_at timestamptz not null,
    check ((binding = 'employee') = (employee_enc is not null and passport_index is not null)),
    check ((binding = 'device') = (device_type is not null and device_id is not null))
);
create unique index sims_one_per_number on sims (number_id);
create index sims_by_company on sims (company_id, status, deadline, id);
create index sims_by_passport on sims (passport_index) where passport_index is not null;
create index sims_by_case on sims (case_id) where case_id is not null;

-- The SIM's audit log: every transition, binding and back-office read (never personal values).
create table sim_timeline (
    id bigserial primary key,
    company_id uuid not null references companies (id),
    sim_id uuid not null references sims (id),
    at timestamptz not null,
    kind text not null,
    actor text not null,
    detail jsonb not null default '{}'
);
create index sim_timeline_by_sim on sim_timeline (company_id, sim_id, id);

-- Numbers other operators (or our own subscriber contracts) know for a person, matched by the passport
-- blind index; fed by the back office or the seed. Counts toward the 20-number limit.
create table person_known_numbers (
    passport_index bytea not null,
    msisdn_index bytea not null,
    msisdn_masked text not null,
    operator text not null,
    added_by text not null,
    added_at timestamptz not null,
    primary key (passport_index, msisdn_index)
);

-- A case may now be opened for an employee confirming a corporate SIM.
alter table cases drop constraint cases_reason_check;
alter table cases add constraint cases_reason_check
    check (reason in ('outdated_data', 'used_by_other_person', 'regulator_request', 'corporate_sim'));
