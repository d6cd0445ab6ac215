-- Call state that several replicas share: a provider's per-call bookkeeping (Mango's legs and sequence
-- numbers), read and written by whichever replica applies the call's next event.
alter table dial_attempts add column provider_state jsonb;
