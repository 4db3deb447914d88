-- pg2dns schema, version 9: a reconcile's pause is a lease.
--
-- `pg2dns reconcile` pauses a running service while it reads the tables and
-- transfers the zones. Whatever ends the reconcile (a signal, a panic, a lost
-- connection, kill -9), the service must not stay paused by it. So the
-- reconcile first takes a session-level advisory lock for the slot, and the
-- control functions record the caller's backend PID (`lease_pid`) on the
-- request when the caller holds that lock. The running service, while paused
-- by such a request, asks `pg2dns.lease_alive()` every few seconds and
-- resumes by itself once the holder's session is gone (PostgreSQL releases a
-- session's advisory locks when it ends, however it ends). A plain
-- `pg2dns pause` holds no lock: it is not a lease and stays until resumed.
--
-- The lock's key: (1885811300, hashtext('pg2dns lease ' || slot) & 2147483647),
-- written the same way in streamer/src/reconcile.rs.
-- Self-contained and idempotent: it can be applied again.

ALTER TABLE pg2dns.control ADD COLUMN IF NOT EXISTS lease_pid integer;

-- The caller's backend PID when its session holds the slot's lease lock,
-- else NULL.
CREATE OR REPLACE FUNCTION pg2dns.lease_holder(slot text)
RETURNS integer LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_backend_pid() FROM pg_locks l
     WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid() AND l.granted
       AND l.classid = 1885811300::oid
       AND l.objid = (hashtext('pg2dns lease ' || lease_holder.slot) & 2147483647)::oid
       AND l.objsubid = 2
     LIMIT 1
$$;

-- Whether control request `request` still holds the service: true when it is
-- no lease (or unknown), or its holder's session still holds the lock.
CREATE OR REPLACE FUNCTION pg2dns.lease_alive(request bigint)
RETURNS boolean LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((
        SELECT c.lease_pid IS NULL OR EXISTS (
                   SELECT 1 FROM pg_locks l
                    WHERE l.locktype = 'advisory' AND l.pid = c.lease_pid AND l.granted
                      AND l.classid = 1885811300::oid
                      AND l.objid = (hashtext('pg2dns lease ' || c.slot) & 2147483647)::oid
                      AND l.objsubid = 2)
          FROM pg2dns.control c WHERE c.id = lease_alive.request), true)
$$;

-- Version 3's functions, recording the lease (same signatures, so the
-- EXECUTE rights a DBA granted are kept).
CREATE OR REPLACE FUNCTION pg2dns.pause(reason text DEFAULT '', slot text DEFAULT 'pg2dns')
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    request bigint;
BEGIN
    INSERT INTO pg2dns.control (slot, action, reason, requested_by, lease_pid)
        VALUES (pause.slot, 'pause', coalesce(pause.reason, ''), session_user,
                pg2dns.lease_holder(pause.slot))
        RETURNING id INTO request;
    PERFORM pg_notify('pg2dns_control', pause.slot);
    RETURN request;
END $$;

CREATE OR REPLACE FUNCTION pg2dns.resume(slot text DEFAULT 'pg2dns', until pg_lsn DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    request bigint;
BEGIN
    INSERT INTO pg2dns.control (slot, action, requested_by, until_lsn, lease_pid)
        VALUES (resume.slot, 'resume', session_user, resume.until,
                pg2dns.lease_holder(resume.slot))
        RETURNING id INTO request;
    PERFORM pg_notify('pg2dns_control', resume.slot);
    RETURN request;
END $$;

INSERT INTO pg2dns.schema_version (version) VALUES (9) ON CONFLICT DO NOTHING;
