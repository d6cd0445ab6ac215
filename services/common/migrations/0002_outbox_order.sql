-- Events of one transaction share created_at; a sequence keeps them in the order they were appended.
alter table outbox add column seq bigserial;
drop index outbox_unpublished;
create index outbox_unpublished on outbox (seq) where published_at is null;
