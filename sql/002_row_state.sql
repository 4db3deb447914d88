-- pg2dns schema, version 2: the row state in wire form, scoped by slot.
--
-- Version 1 kept the row state as text in pg2dns.row_records, shared by
-- every instance on the database, with a btree index over the record data
-- (a record of a few kB made its write fail: "index row size exceeds btree
-- maximum"). Version 2 keeps each record as pg2dns parsed it from its row
-- (owner and data in DNS wire form), per slot, so two instances on one
-- database never touch each other's state; `pg2dns setup` converts the
-- version 1 rows and drops the old table.

-- Row state (docs/design.md section 4): the records each source row contributes, as last
-- sent to DNS. A record leaves DNS only when the last row contributing it
-- goes: the rows here with its (slot, zone, owner, rtype, rdata).
-- Written in the same transaction as pg2dns.progress.
CREATE TABLE IF NOT EXISTS pg2dns.row_state (
    slot    text    NOT NULL,
    source  text    NOT NULL,
    row_key text    NOT NULL,
    zone    text    NOT NULL,
    owner   bytea   NOT NULL,
    rtype   integer NOT NULL,
    rdata   bytea   NOT NULL,
    ttl     integer NOT NULL,
    -- The name an MX or SRV record points at (wire form), else NULL: an
    -- owner losing its last address finds the records that point at it.
    target  bytea
);
-- By row: on a hash of the key, because a btree entry is limited to about
-- 2.7 kB and a row key is whatever text the source's key columns hold (the
-- lookup rechecks the key itself). All three columns are equalities, so the
-- planner prefers this index even with the stale statistics of a table that
-- grows inside one long transaction (a one-column hash index lost to the
-- owner index's `slot` prefix there, and a 200,000-row transaction became
-- quadratic).
CREATE INDEX IF NOT EXISTS row_state_row
    ON pg2dns.row_state (slot, source, hashtextextended(row_key, 0));
-- By owner: names are at most 255 bytes.
CREATE INDEX IF NOT EXISTS row_state_owner ON pg2dns.row_state (slot, zone, owner);

CREATE INDEX IF NOT EXISTS row_state_target ON pg2dns.row_state (slot, zone, target)
    WHERE target IS NOT NULL;

-- Rows whose MX or SRV record the server refused because its target in the
-- zone had no address yet (BIND's check-integrity): their records wait here
-- and are published as soon as the target gets an address, without anyone
-- touching the row again. A change of the row discards its entry.
CREATE TABLE IF NOT EXISTS pg2dns.waiting (
    slot        text    NOT NULL,
    source      text    NOT NULL,
    row_key     text    NOT NULL,
    lsn         pg_lsn  NOT NULL,
    target      bytea   NOT NULL,
    zone        text    NOT NULL,
    owner       bytea   NOT NULL,
    rtype       integer NOT NULL,
    rdata       bytea   NOT NULL,
    ttl         integer NOT NULL,
    since       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS waiting_target ON pg2dns.waiting (slot, zone, target);
CREATE INDEX IF NOT EXISTS waiting_row
    ON pg2dns.waiting (slot, source, hashtextextended(row_key, 0));

-- Rejections name the instance that made them.
ALTER TABLE pg2dns.rejected ADD COLUMN IF NOT EXISTS slot text;


-- What each instance (slot) was configured with when it last streamed: a
-- zone added or removed since then needs a resync (rows refused as outside
-- every zone, or records left in a zone no longer followed).
CREATE TABLE IF NOT EXISTS pg2dns.instance (
    slot        text PRIMARY KEY,
    zones       text[] NOT NULL,
    updated     timestamptz NOT NULL DEFAULT now()
);

INSERT INTO pg2dns.schema_version (version) VALUES (2) ON CONFLICT DO NOTHING;
