-- pg2dns schema, version 11: DDL that puts nothing in the stream.
--
-- 1. TRUNCATE of one partition. Under publish_via_partition_root PostgreSQL
--    publishes nothing for it, so its rows' records would stay in DNS.
--    `pg2dns setup` puts a statement-level AFTER TRUNCATE trigger on each
--    partition of a partitioned source table; it writes a transactional
--    logical message (prefix 'pg2dns') naming the partition, which reaches
--    pg2dns in the truncating transaction, and pg2dns halts before it. Any
--    login role can emit such a message: it can only make pg2dns halt.
-- 2. DDL while no pg2dns runs (a table dropped and created again, a
--    partition attached or detached). pg2dns.source_tables holds, per slot,
--    each source table's OID and partitions as last accepted; each session
--    start compares. A difference halts; `pg2dns resume` accepts it.

CREATE OR REPLACE FUNCTION pg2dns.truncate_partition() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_logical_emit_message(true, 'pg2dns',
        json_build_object('truncate_partition', quote_ident(TG_TABLE_SCHEMA) || '.' || quote_ident(TG_TABLE_NAME),
                          'oid', TG_RELID)::text);
    RETURN NULL;
END $$;

-- The state of each source table as last accepted, and a new state a halt
-- named and that waits for `pg2dns resume` (a resume request whose id is
-- above pending_since accepts it).
CREATE TABLE IF NOT EXISTS pg2dns.source_tables (
    slot            text NOT NULL,
    source          text NOT NULL,
    table_oid       oid NOT NULL,
    partition_oids  oid[] NOT NULL DEFAULT '{}',
    partition_names text[] NOT NULL DEFAULT '{}',
    pending_oid             oid,
    pending_partition_oids  oid[],
    pending_partition_names text[],
    pending_since           bigint,
    recorded        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, source)
);

-- Truncated partitions pg2dns halted on, by the commit LSN of the
-- truncating transaction: a resume request whose id is above since lets
-- the replayed transaction pass.
CREATE TABLE IF NOT EXISTS pg2dns.truncate_halts (
    slot      text NOT NULL,
    lsn       pg_lsn NOT NULL,
    partition text NOT NULL,
    since     bigint NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, lsn, partition)
);

INSERT INTO pg2dns.schema_version (version) VALUES (11) ON CONFLICT DO NOTHING;
