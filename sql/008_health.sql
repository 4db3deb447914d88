-- pg2dns schema, version 8: health. The status view says what the service
-- is doing as one state (running, unreachable, inactive, paused, halted,
-- held, stopped), lists the instances standing by, shows the slot's WAL
-- (wal_status, retained and safe size), and reads only the slot of this
-- database.

-- Since when a zone's primary has answered none of the changes pending for
-- it, once that lasted longer than [limits] unreachable_after_s; NULL while
-- it answers.
ALTER TABLE pg2dns.zone_status ADD COLUMN IF NOT EXISTS unreachable_since timestamptz;

-- The instances standing by for a slot another instance streams from: each
-- says so when it starts waiting and every 10 s while it waits, and removes
-- its row when it takes over. Rows not seen for 30 s are stale (the
-- instance stopped) and not shown.
CREATE TABLE IF NOT EXISTS pg2dns.standby (
    slot      text NOT NULL,
    -- host:pid of the waiting process.
    instance  text NOT NULL,
    since     timestamptz NOT NULL DEFAULT now(),
    seen      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, instance)
);

-- The view of version 4 with columns added at its end (CREATE OR REPLACE
-- keeps its grants). Changed: a slot of the same name in another database
-- is not this instance's; a held transaction's lag grows from its halt at
-- the latest.
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
         WHERE r.slot = m.slot AND r.at > now() - interval '1 hour') AS rejected_last_hour,
       st.received_lsn,
       -- Age of the oldest change received but not yet in DNS, by the
       -- server's clock alone; 0 when everything received is in DNS. A
       -- transaction the mass-delete guard holds is not in DNS: its lag
       -- counts from the halt at the latest.
       coalesce(greatest(extract(epoch FROM now() -
           CASE WHEN m.mode = 'halted' AND m.mass_delete_lsn IS NOT NULL
                THEN least(st.oldest_unacked_commit, m.since)
                ELSE st.oldest_unacked_commit END), 0), 0)::float8
           AS lag_seconds,
       st.updated AS status_updated,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                    'zone', z.zone,
                    'primary', z.primary_addr,
                    'acked_at', z.acked_at,
                    'soa_serial', z.soa_serial,
                    'soa_at', z.soa_at,
                    'in_flight', z.in_flight,
                    'unreachable_since', z.unreachable_since,
                    'updated', z.updated) ORDER BY z.zone)
                   FROM pg2dns.zone_status z WHERE z.slot = m.slot), '[]'::jsonb) AS zones,
       -- What the service is doing, in one word:
       --   running      streaming, and every primary answers
       --   unreachable  running, but a primary has answered none of its
       --                pending changes for longer than unreachable_after_s
       --   inactive     the mode says running but no process streams from
       --                the slot (killed, crashed, or reconnecting)
       --   paused, halted, stopped  as the mode says
       --   held         halted: the mass-delete guard holds a transaction
       CASE
           WHEN m.mode = 'halted' AND m.mass_delete_lsn IS NOT NULL THEN 'held'
           WHEN m.mode = 'running' AND NOT coalesce(s.active, false) THEN 'inactive'
           WHEN m.mode = 'running' AND EXISTS (
                SELECT 1 FROM pg2dns.zone_status z
                 WHERE z.slot = m.slot AND z.unreachable_since IS NOT NULL) THEN 'unreachable'
           ELSE m.mode
       END AS state,
       s.safe_wal_size,
       s.active_pid AS slot_active_pid,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                    'instance', b.instance, 'since', b.since, 'seen', b.seen) ORDER BY b.since)
                   FROM pg2dns.standby b
                  WHERE b.slot = m.slot AND b.seen > now() - interval '30 seconds'), '[]'::jsonb)
           AS standbys
FROM pg2dns.mode m
LEFT JOIN pg2dns.progress p ON p.slot = m.slot
LEFT JOIN pg_replication_slots s ON s.slot_name = m.slot AND s.database = current_database()
LEFT JOIN pg2dns.stream_status st ON st.slot = m.slot;

INSERT INTO pg2dns.schema_version (version) VALUES (8) ON CONFLICT DO NOTHING;
