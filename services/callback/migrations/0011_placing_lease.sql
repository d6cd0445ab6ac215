-- An attempt being placed holds a lease: "placing until T, by this worker", renewed right before the
-- provider call. Recovery (in any replica) looks only at expired leases.
alter table dial_attempts add column placing_until timestamptz;
alter table dial_attempts add column placing_by text;
-- Set in the same short transaction as the last renewal, right before the order goes to the provider:
-- an expired placement without it was never sent and may be placed (once); with it, it never is again.
alter table dial_attempts add column ordered_at timestamptz;
create index dial_attempts_placing on dial_attempts (placing_until) where state = 'placing';
