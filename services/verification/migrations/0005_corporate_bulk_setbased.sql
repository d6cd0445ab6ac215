-- Bulk uploads resume after a restart and apply employee rows with a set-based 20-number check.
--
-- The upload's rows are staged (COPY) in the same transaction that creates the job, so from then on the
-- job's whole state is here: `next_row` is the first row whose chunk is not yet committed (each chunk's
-- outcomes, effects and this counter commit together), so a process that dies mid-job loses at most the
-- chunk in flight, and any replica redoes it from `next_row`.
alter table bulk_jobs add column next_row integer not null default 1;
create index bulk_jobs_unfinished on bulk_jobs (created_at) where state in ('queued', 'running');

-- An employee row's person (the blind index of their passport, as on sims.passport_index): the chunk counts
-- everyone's numbers in one statement instead of one query per row.
alter table bulk_rows add column passport_index bytea;
