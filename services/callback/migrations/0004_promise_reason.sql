-- Why the promise is what it is (chosen_slot, outside_hours, ...): a chosen slot reads as a window.
alter table callbacks add column promise_reason text not null default 'queue';
