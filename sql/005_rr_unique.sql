-- pg2dns schema, version 5: no size cliff in pg2dns.rr.
--
-- Version 1 made (owner, type, rdata) unique with a btree index. A btree
-- entry holds at most 2,704 bytes, so no row with an rdata of about 2.7 kB
-- or more could be stored, although a TXT record may hold up to 64 kB.
--
-- Uniqueness is now an exclusion constraint over a hash index of the whole
-- (owner, type, rdata) value. The index keeps only a 32-bit hash per row,
-- so a value of any length fits; and it is exact, not probabilistic: when
-- two rows' hashes are equal, PostgreSQL compares the values themselves
-- with `=` before it refuses the second row (a hash index is lossy and
-- every match is rechecked against the table). A unique index on md5(),
-- sha256() or hashtextextended() of rdata would instead refuse a different
-- row whose digest collides (possible by construction for md5 and for a
-- 64-bit hash), and would let the uniqueness depend on a digest.
--
-- What changes for an application: a duplicate row is refused with SQLSTATE
-- 23P01 (exclusion_violation) instead of 23505 (unique_violation);
-- `INSERT … ON CONFLICT DO NOTHING` still works, `ON CONFLICT (owner, type,
-- rdata)` (a conflict target) does not.

-- A composite type, because an index cannot hold an anonymous ROW().
DO $$
BEGIN
    IF to_regtype('pg2dns.rr_identity') IS NULL THEN
        CREATE TYPE pg2dns.rr_identity AS (owner text, type text, rdata text);
    END IF;
END $$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = 'pg2dns.rr'::regclass AND conname = 'rr_owner_type_rdata_excl') THEN
        -- The old unique constraint guarantees there are no duplicates, so
        -- the new one always builds.
        ALTER TABLE pg2dns.rr
            ADD CONSTRAINT rr_owner_type_rdata_excl
            EXCLUDE USING hash ((ROW(owner, type, rdata)::pg2dns.rr_identity) WITH =);
    END IF;
    ALTER TABLE pg2dns.rr DROP CONSTRAINT IF EXISTS rr_owner_type_rdata_key;
END $$;

INSERT INTO pg2dns.schema_version (version) VALUES (5) ON CONFLICT DO NOTHING;
