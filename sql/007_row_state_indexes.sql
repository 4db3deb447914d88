-- pg2dns schema version 7: cheaper row state indexes.
--
-- Version 2 led every index of pg2dns.row_state with `slot` (and `source`
-- or `zone`): the same text in every entry of an instance, so each btree
-- comparison of an insert compared two equal strings (under the database's
-- collation) before it reached the column that decides. Writing the row
-- state of a large transaction spent most of its backend's time there
-- (`_bt_compare`, `bttextcmp`: two thirds of the backend's samples for a
-- 200,000-row INSERT).
--
-- By row: a hash index on the key. A btree over a hash of the key inserts
-- at random places of a large tree; a hash index goes straight to one
-- bucket (in a test of 200,000 rows in one transaction it cost a third of
-- the btree's time), keeps only a 32-bit hash per row, so a key of any
-- length fits (a btree entry is limited to about 2.7 kB), and the lookups
-- are equalities on the key. Version 2 noted that a one-column hash index
-- lost to the owner index's `slot` prefix in the planner's eyes (stale
-- statistics inside a long transaction); no index leads with `slot` now,
-- so the hash index is the only one a lookup by key can use.
--
-- By owner and by target: the same columns in the opposite order, for the
-- same lookups (equalities on every column). A lookup by `slot` alone
-- reads the whole table, before and after. The owner keys are (almost)
-- unique, so btree deduplication only costs a pass over a full page before
-- each split: turned off.
DROP INDEX IF EXISTS pg2dns.row_state_row;
DROP INDEX IF EXISTS pg2dns.row_state_owner;
DROP INDEX IF EXISTS pg2dns.row_state_target;

CREATE INDEX IF NOT EXISTS row_state_by_row
    ON pg2dns.row_state USING hash (row_key);
-- By owner: names are at most 255 bytes.
CREATE INDEX IF NOT EXISTS row_state_by_owner
    ON pg2dns.row_state (owner, zone, slot)
    WITH (deduplicate_items = off);
CREATE INDEX IF NOT EXISTS row_state_by_target
    ON pg2dns.row_state (target, zone, slot)
    WHERE target IS NOT NULL;

INSERT INTO pg2dns.schema_version (version) VALUES (7) ON CONFLICT DO NOTHING;
