-- pg2dns schema, version 5: no size cliff in pg2dns.rr, and the release of
-- a transaction the mass-delete guard holds.
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
-- `INSERT ... ON CONFLICT DO NOTHING` still works, `ON CONFLICT (owner, type,
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

-- The mass-delete guard (pg2dns_decoder::guard): a transaction deleting
-- too much of a zone halts the service before anything of it is sent. The
-- halt names the transaction by its commit LSN (pg2dns.mode.lsn, with
-- mass_delete_lsn saying that this is what the halt holds); a release is a
-- resume request carrying that LSN, kept in pg2dns.control so that it
-- survives restarts and releases that one transaction only.
ALTER TABLE pg2dns.control ADD COLUMN IF NOT EXISTS allow_mass_delete pg_lsn;
ALTER TABLE pg2dns.mode ADD COLUMN IF NOT EXISTS mass_delete_lsn pg_lsn;

-- Releases the mass delete the instance streaming through `slot` holds (or
-- the transaction committed at `lsn`, when given) and resumes it; returns
-- the LSN released.
CREATE OR REPLACE FUNCTION pg2dns.allow_mass_delete(slot text DEFAULT 'pg2dns', lsn pg_lsn DEFAULT NULL)
RETURNS pg_lsn LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    held pg_lsn;
BEGIN
    held := allow_mass_delete.lsn;
    IF held IS NULL THEN
        SELECT m.lsn INTO held FROM pg2dns.mode m
         WHERE m.slot = allow_mass_delete.slot AND m.mode = 'halted'
           AND m.mass_delete_lsn = m.lsn;
    END IF;
    IF held IS NULL THEN
        RAISE EXCEPTION 'the pg2dns instance of slot % holds no mass delete', allow_mass_delete.slot
            USING ERRCODE = 'no_data_found',
                  HINT = 'pg2dns status says why it is halted; give the LSN to release a transaction it has not reached yet';
    END IF;
    INSERT INTO pg2dns.control (slot, action, requested_by, allow_mass_delete)
        VALUES (allow_mass_delete.slot, 'resume', session_user, held);
    PERFORM pg_notify('pg2dns_control', allow_mass_delete.slot);
    RETURN held;
END $$;

REVOKE ALL ON FUNCTION pg2dns.allow_mass_delete(text, pg_lsn) FROM PUBLIC;

INSERT INTO pg2dns.schema_version (version) VALUES (5) ON CONFLICT DO NOTHING;
