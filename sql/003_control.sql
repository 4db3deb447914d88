-- pg2dns schema, version 3: the control plane (pause, resume, status).
--
-- Admin commands need only database access, so PostgreSQL roles decide who
-- may pause or resume (docs/design.md section 5). A pause is a row of pg2dns.control: the
-- table is in pg2dns's publication, so the running service sees the pause in
-- the replication stream, in commit order, and stops exactly after the
-- transaction that wrote it. Only roles that may execute pg2dns.pause() (or
-- insert into pg2dns.control) can pause: a logical message, which any login
-- role can emit, is never trusted.

CREATE TABLE IF NOT EXISTS pg2dns.control (
    id           bigserial PRIMARY KEY,
    slot         text NOT NULL,
    action       text NOT NULL CHECK (action IN ('pause', 'resume')),
    reason       text NOT NULL DEFAULT '',
    requested_by text NOT NULL DEFAULT session_user,
    at           timestamptz NOT NULL DEFAULT now(),
    -- A resume that stops again before the first transaction whose commit
    -- is at or after this LSN (how `pg2dns reconcile` brings a paused
    -- service exactly to the consistent point of a snapshot it exported).
    until_lsn    pg_lsn
);

-- What each instance reports about itself: written by the service.
CREATE TABLE IF NOT EXISTS pg2dns.mode (
    slot        text PRIMARY KEY,
    mode        text NOT NULL CHECK (mode IN ('running', 'paused', 'halted', 'stopped')),
    since       timestamptz NOT NULL DEFAULT now(),
    lsn         pg_lsn,
    reason      text NOT NULL DEFAULT '',
    hint        text NOT NULL DEFAULT '',
    requested_by text,
    -- The control request this mode answers (a pause), or the last request
    -- seen when it began (a halt): a resume must come after it.
    control_id  bigint NOT NULL DEFAULT 0,
    -- The process that writes this row.
    pid         integer,
    updated     timestamptz NOT NULL DEFAULT now()
);

-- Pauses the instance streaming through `slot` right after the transaction
-- that calls this commits; returns the request's id.
CREATE OR REPLACE FUNCTION pg2dns.pause(reason text DEFAULT '', slot text DEFAULT 'pg2dns')
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    request bigint;
BEGIN
    INSERT INTO pg2dns.control (slot, action, reason, requested_by)
        VALUES (pause.slot, 'pause', coalesce(pause.reason, ''), session_user)
        RETURNING id INTO request;
    PERFORM pg_notify('pg2dns_control', pause.slot);
    RETURN request;
END $$;

-- Lets a paused or halted instance go on; returns the request's id. With
-- `until`, the instance pauses again before the first transaction that
-- commits at or after that LSN.
CREATE OR REPLACE FUNCTION pg2dns.resume(slot text DEFAULT 'pg2dns', until pg_lsn DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    request bigint;
BEGIN
    INSERT INTO pg2dns.control (slot, action, requested_by, until_lsn)
        VALUES (resume.slot, 'resume', session_user, resume.until)
        RETURNING id INTO request;
    PERFORM pg_notify('pg2dns_control', resume.slot);
    RETURN request;
END $$;

REVOKE ALL ON FUNCTION pg2dns.pause(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2dns.resume(text, pg_lsn) FROM PUBLIC;

-- One line per instance: its mode, and how far behind it is.
CREATE OR REPLACE VIEW pg2dns.status AS
SELECT m.slot,
       m.mode,
       m.since,
       m.lsn AS mode_lsn,
       m.reason,
       m.hint,
       m.requested_by,
       m.updated,
       p.lsn AS progress_lsn,
       s.confirmed_flush_lsn,
       s.active AS slot_active,
       s.wal_status,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint AS lag_bytes,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint AS retained_wal_bytes,
       (SELECT count(*) FROM pg2dns.rejected r
         WHERE r.slot = m.slot AND r.at > now() - interval '1 hour') AS rejected_last_hour
FROM pg2dns.mode m
LEFT JOIN pg2dns.progress p ON p.slot = m.slot
LEFT JOIN pg_replication_slots s ON s.slot_name = m.slot;

INSERT INTO pg2dns.schema_version (version) VALUES (3) ON CONFLICT DO NOTHING;
