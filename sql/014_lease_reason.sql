-- pg2dns schema, version 14: a reconcile's pause keeps its reason.
--
-- `pg2dns reconcile` pauses a running service (a lease, version 9) with a
-- reason naming itself, then moves it to its snapshot's consistent point
-- with `pg2dns.resume(slot, until)`: the service runs to that LSN and
-- pauses again, in answer to the resume request. `pg2dns status` shows the
-- reason of the request the service paused for, and a resume carried none,
-- so for the whole comparison an operator saw a pause without a reason and
-- could not tell it was a reconcile's.
--
-- Now a resume with `until` made by the holder of the slot's lease carries
-- the reason of the holder's own latest pause request: the pause it ends
-- at `until` is still that holder's pause. A plain resume, and any resume
-- by a session holding no lease, carries none, as before.
--
-- Same signature as versions 3 and 9, so the EXECUTE rights a DBA granted
-- are kept. Self-contained and idempotent: it can be applied again.

CREATE OR REPLACE FUNCTION pg2dns.resume(slot text DEFAULT 'pg2dns', until pg_lsn DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    request bigint;
    holder integer := pg2dns.lease_holder(resume.slot);
    why text := '';
BEGIN
    IF holder IS NOT NULL AND resume.until IS NOT NULL THEN
        why := coalesce((SELECT c.reason FROM pg2dns.control c
                          WHERE c.slot = resume.slot AND c.action = 'pause'
                            AND c.lease_pid = holder
                          ORDER BY c.id DESC LIMIT 1), '');
    END IF;
    INSERT INTO pg2dns.control (slot, action, reason, requested_by, until_lsn, lease_pid)
        VALUES (resume.slot, 'resume', why, session_user, resume.until, holder)
        RETURNING id INTO request;
    PERFORM pg_notify('pg2dns_control', resume.slot);
    RETURN request;
END $$;

INSERT INTO pg2dns.schema_version (version) VALUES (14) ON CONFLICT DO NOTHING;
