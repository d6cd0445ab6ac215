-- Promises no longer assume `staffed_agents` Ready agents whenever nobody is signed in: "now" comes from
-- presence, later times from a staffing schedule in the site's settings. A site keeps what it meant for
-- later times: its working hours staffed with that many agents.
update sites
set settings = (settings - 'staffed_agents') || jsonb_build_object(
    'staffing',
    coalesce(
        (
            select jsonb_agg(jsonb_build_object(
                'days', jsonb_build_array(hours.key),
                'start', span ->> 0,
                'end', span ->> 1,
                'agents', (sites.settings ->> 'staffed_agents')::int
            ))
            from jsonb_each(sites.settings -> 'working_hours') as hours,
                jsonb_array_elements(hours.value) as span
            where (sites.settings ->> 'staffed_agents')::int > 0
        ),
        '[]'::jsonb
    )
)
where settings ? 'staffed_agents' and not settings ? 'staffing';

-- Promises count everyone due before the visitor (retries, slots, openings), not only those due now.
create index callbacks_queue_due_at on callbacks (queue, due_at) where status in ('requested', 'scheduled');
-- Handle times are sampled per attempt (an agent held from reservation to hangup), newest first.
create index dial_attempts_ended on dial_attempts (ended_at desc) where agent_id is not null and ended_at is not null;
