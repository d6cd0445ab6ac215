-- Secrets are stored encrypted (DataProtector, associated data bound to table, column and row id).

-- Idempotency replays: the status token moves out of the plain `response` JSON into its own encrypted
-- column, bound to a row id of its own (the primary key is composite).
alter table idempotency_keys add column id uuid not null default gen_random_uuid();
alter table idempotency_keys add constraint idempotency_keys_id_key unique (id);
alter table idempotency_keys add column status_token_enc bytea;
-- Rows from before hold a plaintext token that SQL cannot encrypt; they only serve quick retries, so they
-- go: a late retry of one is treated as a new request (it merges into the pending callback, if any).
delete from idempotency_keys where response ? 'status_token';

-- CRM webhook signing secrets: write-only, encrypted here (row id = site_key) instead of inside
-- `settings`. Plaintext secrets still in `settings` are sealed into this column when the service starts.
alter table sites add column crm_webhook_secret_enc bytea;
