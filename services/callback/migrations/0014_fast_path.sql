-- The fast path: what an offer, a request and a dispatch pass read is found through indexes, so their cost
-- stays flat as history grows (tests/callback/test_callback_intake_fast_path.py EXPLAINs each on 10^5 rows).

-- The per-site daily cap counts today's requests of one site (the (site_key, client_ip_hash, ...) index
-- only helps per address).
create index callbacks_site_recent on callbacks (site_key, requested_at);

-- A queue's waiting requests by due time (the promise reads those due within its horizon). Queues are
-- (organisation, name) since 0013, so this replaces 0009's (queue, due_at), which mixed organisations.
drop index callbacks_queue_due_at;
create index callbacks_queue_pending_due on callbacks (org_id, queue, due_at)
    where status in ('requested', 'scheduled');

-- Handle times are the latest ended attempts of one queue. An attempt now carries its request's
-- organisation and queue (a request never changes queue), so "the last 200 of this queue" is one index
-- range instead of a join over every attempt ever made.
alter table dial_attempts add column org_id text;
alter table dial_attempts add column queue text;
update dial_attempts d set org_id = c.org_id, queue = c.queue from callbacks c where c.id = d.callback_id;
alter table dial_attempts alter column org_id set not null;
alter table dial_attempts alter column queue set not null;

-- Filled from the request on insert, so whoever records an attempt cannot get them wrong (or forget them).
create function dial_attempts_fill_queue() returns trigger language plpgsql
set search_path from current as $$
begin
    select c.org_id, c.queue into new.org_id, new.queue from callbacks c where c.id = new.callback_id;
    return new;
end $$;
create trigger dial_attempts_fill_queue before insert on dial_attempts
    for each row execute function dial_attempts_fill_queue();

-- Replaces 0009's (ended_at desc), which walked every queue's attempts to find one queue's.
drop index dial_attempts_ended;
create index dial_attempts_queue_handled on dial_attempts (org_id, queue, ended_at desc)
    where agent_id is not null and ended_at is not null;

-- Retention prunes by age in batches; without these each batch would scan the whole table.
create index idempotency_keys_created on idempotency_keys (created_at);
create index spent_form_tokens_spent on spent_form_tokens (spent_at);
