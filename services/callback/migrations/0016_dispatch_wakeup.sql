-- Wake every replica's dispatcher when its work appears, at the commit that makes it appear, instead of
-- at its next poll: a request that is due now (new, re-timed to now, or a retry due now), or an agent
-- who can take a call (became ready, or was freed by the end of a call). NOTIFY is delivered only on
-- commit and collapsed per transaction, so a request's commit costs one notification. The poll stays
-- as the safety net for requests that become due by the clock alone. "Due now" allows a few seconds:
-- the service's clock read due_at during the transaction, after now() (its start) and maybe on another
-- host; waking a little early costs one empty pass.
create function dispatch_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('abonent_dispatch_' || tg_table_schema, '');
    return null;
end $$;

create trigger callbacks_due_inserted after insert on callbacks for each row
    when (new.status = 'scheduled' and new.due_at <= clock_timestamp() + interval '5 seconds')
    execute function dispatch_notify();
create trigger callbacks_due_updated after update of status, due_at on callbacks for each row
    when (new.status = 'scheduled' and new.due_at <= clock_timestamp() + interval '5 seconds'
          and (old.status is distinct from new.status or old.due_at is distinct from new.due_at))
    execute function dispatch_notify();

-- Heartbeats touch only last_seen_at: they never match `update of status, current_attempt`.
create trigger agent_presence_reservable_inserted after insert on agent_presence for each row
    when (new.status = 'ready' and new.current_attempt is null)
    execute function dispatch_notify();
create trigger agent_presence_reservable_updated after update of status, current_attempt on agent_presence
    for each row
    when (new.status = 'ready' and new.current_attempt is null
          and (old.status is distinct from new.status or old.current_attempt is not null))
    execute function dispatch_notify();
