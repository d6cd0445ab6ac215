-- Retention: early receipts age from when they reached us (their `at` is the provider's clock).
alter table early_receipts add column received_at timestamptz not null default now();
-- Messages are pruned by updated_at (services/notifier/settings.py retention_rules).
create index messages_updated on messages (updated_at);
create index binding_log_at on binding_log (at);
create index callback_contacts_created on callback_contacts (created_at);
create index sandbox_messages_sent on sandbox_messages (sent_at);
