-- Opt-in: pg2dns's record checks in the writer's transaction (docs/plugin.md).
--
-- Needs `pg2dns setup` (schema pg2dns) and `CREATE EXTENSION pg2dns_plugin`
-- in the same database. Run it as the owner of pg2dns.rr:
--
--   psql -v ON_ERROR_STOP=1 -d DB -f pg_plugin/sql/check_rr.sql
--
-- Idempotent. Afterwards an INSERT or UPDATE of pg2dns.rr whose row the
-- stream would refuse on its own fails with the stream's reason (SQLSTATE
-- 22023, or 22004 for a NULL), instead of landing in pg2dns.rejected after
-- the commit. To remove it: DROP TRIGGER rr_check ON pg2dns.rr.

-- The extension's functions under the names of the pg2dns schema. A
-- writer's application can call them too, e.g. to check a form's input.
CREATE OR REPLACE FUNCTION pg2dns.check_record(owner text, type text, ttl integer, rdata text, class text DEFAULT 'IN')
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN pg2dns_plugin.check_record(owner, type, ttl, rdata, class);

CREATE OR REPLACE FUNCTION pg2dns.record_is_valid(owner text, type text, ttl integer, rdata text, class text DEFAULT 'IN')
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN pg2dns_plugin.record_is_valid(owner, type, ttl, rdata, class);

-- A trigger rather than a CHECK constraint: a CHECK constraint's error names
-- the constraint, the trigger's names what is wrong with the row.
CREATE OR REPLACE FUNCTION pg2dns.rr_check() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg2dns_plugin.check_record(NEW.owner, NEW.type, NEW.ttl, NEW.rdata, NEW.class);
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER rr_check
    BEFORE INSERT OR UPDATE OF owner, ttl, class, type, rdata ON pg2dns.rr
    FOR EACH ROW EXECUTE FUNCTION pg2dns.rr_check();
