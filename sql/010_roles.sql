-- pg2dns schema, version 10: what an operator role may read.
--
-- Operators get EXECUTE on the SECURITY DEFINER functions and SELECT on the
-- pg2dns.status view, nothing else (README, "Roles and grants"). `pg2dns
-- resume` says where streaming continues, and `pg2dns pause --wait` waits
-- for the pause it asked for: both need the instance's mode and the control
-- request it answers, which pg2dns.mode holds but the status view does not
-- show (control_id). This function reads them with its owner's rights.

CREATE OR REPLACE FUNCTION pg2dns.mode_of(slot text DEFAULT 'pg2dns')
RETURNS TABLE (mode text, lsn pg_lsn, control_id bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.mode, m.lsn, m.control_id FROM pg2dns.mode m WHERE m.slot = mode_of.slot
$$;

REVOKE ALL ON FUNCTION pg2dns.mode_of(text) FROM PUBLIC;

INSERT INTO pg2dns.schema_version (version) VALUES (10) ON CONFLICT DO NOTHING;
