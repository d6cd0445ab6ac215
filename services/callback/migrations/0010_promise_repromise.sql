-- When a pending request's promise was last recomputed: re-promising is bounded per request.
alter table callbacks add column promise_checked_at timestamptz;
-- The sweep for promises that ran out without a dial looks only at those.
create index callbacks_promise_due on callbacks (promised_latest) where status in ('requested', 'scheduled');
