-- pg2dns schema version 7: the row state's indexes lead with their most
-- selective column.
--
-- Version 2 led every index of pg2dns.row_state with `slot` (and `source`
-- or `zone`): the same text in every entry of an instance, so each btree
-- comparison of an insert compared two equal strings (under the database's
-- collation) before it reached the column that decides. Writing the row
-- state of a large transaction spent most of its backend's time there
-- (`_bt_compare`, `bttextcmp`: two thirds of the backend's samples for a
-- 200,000-row INSERT). The same columns in the opposite order serve the
-- same lookups, which are equalities on every column; a lookup by `slot`
-- alone reads the whole table either way.
--
-- The keys are (almost) unique, so btree deduplication only costs a pass
-- over a full page before each split: turned off.
DROP INDEX IF EXISTS pg2dns.row_state_row;
DROP INDEX IF EXISTS pg2dns.row_state_owner;
DROP INDEX IF EXISTS pg2dns.row_state_target;

-- By row: on a hash of the key (see version 2: a btree entry is limited to
-- about 2.7 kB), then source and slot, all three compared by equality so the
-- planner prefers this index even with stale statistics.
CREATE INDEX IF NOT EXISTS row_state_by_row
    ON pg2dns.row_state (hashtextextended(row_key, 0), source, slot)
    WITH (deduplicate_items = off);
-- By owner: names are at most 255 bytes.
CREATE INDEX IF NOT EXISTS row_state_by_owner
    ON pg2dns.row_state (owner, zone, slot)
    WITH (deduplicate_items = off);
CREATE INDEX IF NOT EXISTS row_state_by_target
    ON pg2dns.row_state (target, zone, slot)
    WHERE target IS NOT NULL;

INSERT INTO pg2dns.schema_version (version) VALUES (7) ON CONFLICT DO NOTHING;
