-- pg2dns schema version 6: the rows of the zones tables that sources
-- reference ([source.zones_table], e.g. PowerDNS's domains(id, name)).
-- A record row names its zone by a key of such a table; pg2dns follows the
-- table in the stream and keeps its rows here, committed with the progress
-- LSN like the row state, so a restart resolves each record row against the
-- zones table as of that row's own transaction.
CREATE TABLE IF NOT EXISTS pg2dns.zone_ref (
    slot    text NOT NULL,
    source  text NOT NULL,   -- the zones table, schema.table
    row_key text NOT NULL,   -- its key column's text
    name    text NOT NULL,   -- its zone name column's text, as the table holds it
    PRIMARY KEY (slot, source, row_key)
);

INSERT INTO pg2dns.schema_version (version) VALUES (6) ON CONFLICT DO NOTHING;
