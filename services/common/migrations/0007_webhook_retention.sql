-- When a delivery stopped being retried (delivered or given up): retention prunes finished deliveries
-- and, through the cascade, their attempt log, after ABONENT_RETENTION_WEBHOOKS_DAYS.
alter table outbound_webhooks add column finished_at timestamptz;
update outbound_webhooks
    set finished_at = coalesce(delivered_at, (select max(attempted_at) from outbound_webhook_attempts a
                                               where a.delivery_id = outbound_webhooks.id), created_at)
    where status in ('delivered', 'failed');
create index outbound_webhooks_finished on outbound_webhooks (finished_at) where finished_at is not null;
