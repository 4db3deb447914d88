-- pg2dns schema version 12: zones as data (docs/setup.md, "Zones in a
-- table"). Each row is a zone the instance of `slot` publishes, to the
-- `[[server]]` of its configuration named `server` (its address and TSIG
-- key). The table is in pg2dns's publication and followed in the stream: a
-- committed INSERT adds the zone (its records are loaded exactly, as a
-- first load), a DELETE stops publishing to it (its records stay in DNS),
-- without a restart. A row naming no declared server is recorded in
-- pg2dns.rejected with the reason, and the zone is not followed.
CREATE TABLE IF NOT EXISTS pg2dns.zones (
    slot    text NOT NULL DEFAULT 'pg2dns',
    name    text NOT NULL CHECK (btrim(name) <> ''),
    server  text NOT NULL,
    added   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, name)
);

-- Two spellings of one zone (case, the final dot) are one zone.
CREATE UNIQUE INDEX IF NOT EXISTS zones_one_spelling
    ON pg2dns.zones (slot, lower(rtrim(name, '.')));

INSERT INTO pg2dns.schema_version (version) VALUES (12) ON CONFLICT DO NOTHING;
