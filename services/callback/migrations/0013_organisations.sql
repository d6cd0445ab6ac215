-- Organisations (tenants): sites, agents, queues, requests, client cards and dashboards belong to one and
-- nothing crosses. Everything that existed before goes to the organisation 'default', so an upgraded
-- single-shop installation keeps working without knowing organisations exist.
create table organisations (
    org_id text primary key,
    name text not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
insert into organisations (org_id, name) values ('default', 'Default organisation');

-- Sites and agents without an explicit organisation (older tooling, the demo seed) land in 'default'.
alter table sites add column org_id text not null default 'default' references organisations (org_id);
alter table sites add constraint sites_key_org unique (site_key, org_id);
alter table agents add column org_id text not null default 'default' references organisations (org_id);
create index agents_org on agents (org_id);

-- A request carries its site's organisation (no default: the code always says which), and the composite
-- key keeps the two from ever disagreeing; it also pins a site with requests to its organisation.
alter table callbacks add column org_id text;
update callbacks c set org_id = s.org_id from sites s where s.site_key = c.site_key;
alter table callbacks alter column org_id set not null;
alter table callbacks add constraint callbacks_site_org
    foreign key (site_key, org_id) references sites (site_key, org_id);
-- Queues are (organisation, name): two organisations may both have 'default'.
drop index callbacks_queue_due;
create index callbacks_queue_due on callbacks (org_id, queue, requested_at)
    where status in ('requested', 'scheduled');
-- The client card and the per-phone budget look a phone up within one organisation.
drop index callbacks_phone_recent;
create index callbacks_phone_recent on callbacks (org_id, phone_hash, requested_at);

-- Back-office identities (auth_tokens / staff rows, same id in every schema) that administer one
-- organisation only. A callback:admin identity without a row here is a platform admin: it acts across
-- organisations (as every admin did before organisations existed).
create table organisation_admins (
    principal_id uuid primary key,
    org_id text not null references organisations (org_id) on delete cascade,
    created_at timestamptz not null default now()
);
