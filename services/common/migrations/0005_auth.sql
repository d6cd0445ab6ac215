-- Back-office authentication, in every service schema: each service checks its own rows, so no service
-- reads another's tables. `abonent tokens|staff` writes one identity (same id) into every schema its
-- scopes name (scope "callback:admin" -> schema callback).

-- Bearer tokens for systems. Only a SHA-256 of the token is kept: a database dump grants nothing.
create table auth_tokens (
    id uuid primary key,
    name text not null,
    token_hash bytea not null unique,
    scopes text[] not null,
    created_at timestamptz not null default now(),
    last_used_at timestamptz,
    expires_at timestamptz,
    revoked_at timestamptz,
    -- The token from ABONENT_ADMIN_TOKEN: registered by the service at start-up with all its scopes.
    bootstrap boolean not null default false
);

-- People who sign in to the back office. Passwords are scrypt hashes (crypto.hash_password).
create table staff (
    id uuid primary key,
    login text not null unique,
    password_hash text not null,
    scopes text[] not null,
    created_at timestamptz not null default now()
);

-- Server-side sessions: the cookie holds a random id, the row its SHA-256; idle and absolute expiry.
create table staff_sessions (
    id_hash bytea primary key,
    staff_id uuid not null references staff (id) on delete cascade,
    -- Sent back by scripts in X-CSRF-Token when a request carries neither Origin nor Referer.
    csrf_token text not null,
    created_at timestamptz not null default now(),
    last_seen_at timestamptz not null default now(),
    expires_at timestamptz not null
);
create index staff_sessions_expiry on staff_sessions (expires_at);

-- Sign-in budget per (login, client address): failures in the current window, shared by all replicas.
create table sign_in_budget (
    key_hash bytea primary key,
    failures integer not null,
    window_started_at timestamptz not null
);
