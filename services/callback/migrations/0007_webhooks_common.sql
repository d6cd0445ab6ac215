-- CRM webhooks move onto the common engine (plumbing 0006): existing deliveries become channel 'crm'
-- rows whose subscriber is the site key, with their attempt log; then the old tables go.
-- Rows in flight keep their next_attempt_at (the old lease expiry) and get no lease token: they are due
-- again when that runs out, as before; an old sender still finishing one cannot move it on any more.
insert into outbound_webhooks (
    id, channel, subscriber, event_id, event_type, payload, url, status, attempts, next_attempt_at,
    last_status_code, last_error, created_at, delivered_at
)
select id, 'crm', site_key, event_id, event_type, payload, url, status, attempts, next_attempt_at,
    last_status_code, last_error, created_at, delivered_at
from webhook_deliveries
on conflict (channel, subscriber, event_id) do nothing;

insert into outbound_webhook_attempts (delivery_id, attempted_at, status_code, error, duration_ms)
select a.delivery_id, a.attempted_at, a.status_code, a.error, a.duration_ms
from webhook_attempts a join outbound_webhooks d on d.id = a.delivery_id
order by a.id;

drop table webhook_attempts;
drop table webhook_deliveries;
