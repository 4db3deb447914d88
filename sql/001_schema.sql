-- pg2dns schema, version 1.
--
-- Installed by `pg2dns setup`; every statement is idempotent, so running setup
-- again is harmless. Later versions add files 002_*.sql, ... and record
-- themselves in pg2dns.schema_version.

CREATE SCHEMA IF NOT EXISTS pg2dns;

CREATE TABLE IF NOT EXISTS pg2dns.schema_version (
    version     integer PRIMARY KEY,
    installed   timestamptz NOT NULL DEFAULT now()
);

-- The canonical records table, for people who keep DNS records directly.
-- One row is one resource record. Names are fully qualified (a missing final
-- dot is added by pg2dns); rdata is in zone-file presentation format.
CREATE TABLE IF NOT EXISTS pg2dns.rr (
    id      bigserial PRIMARY KEY,
    owner   text    NOT NULL,
    ttl     integer NOT NULL DEFAULT 3600 CHECK (ttl >= 0),
    class   text    NOT NULL DEFAULT 'IN',
    type    text    NOT NULL,
    rdata   text    NOT NULL,
    CONSTRAINT rr_owner_type_rdata_key UNIQUE (owner, type, rdata)
);

-- Row state (docs/design.md section 4): the records each source row contributed, as last
-- sent to DNS. Under REPLICA IDENTITY DEFAULT a DELETE carries only the key,
-- so this is how pg2dns knows what to delete. A record leaves DNS only when
-- the last row contributing it goes: the number of rows contributing a record
-- is the number of rows here with its (zone, owner, rtype, rdata).
-- Written in the same transaction as pg2dns.progress.
CREATE TABLE IF NOT EXISTS pg2dns.row_records (
    source  text    NOT NULL,
    row_key text    NOT NULL,
    zone    text    NOT NULL,
    owner   text    NOT NULL,
    rtype   text    NOT NULL,
    rdata   text    NOT NULL,
    ttl     integer NOT NULL
);
CREATE INDEX IF NOT EXISTS row_records_row ON pg2dns.row_records (source, row_key);
CREATE INDEX IF NOT EXISTS row_records_record ON pg2dns.row_records (zone, owner, rtype, rdata);

-- Durable progress: the commit end LSN of the newest transaction whose
-- changes were all acknowledged by the DNS servers and whose row state is
-- committed here. Transactions at or before it are skipped on replay.
CREATE TABLE IF NOT EXISTS pg2dns.progress (
    slot        text PRIMARY KEY,
    lsn         pg_lsn NOT NULL,
    updated     timestamptz NOT NULL DEFAULT now()
);

-- Rows that were not sent to DNS, and why. The stream goes on past them.
CREATE TABLE IF NOT EXISTS pg2dns.rejected (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    source      text NOT NULL,
    row_key     text NOT NULL,
    lsn         pg_lsn NOT NULL,
    zone        text,
    owner       text,
    reason      text NOT NULL
);

INSERT INTO pg2dns.schema_version (version) VALUES (1) ON CONFLICT DO NOTHING;
