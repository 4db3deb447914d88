-- pg2dns schema, version 13: several primaries per zone, seen and kept.
--
-- pg2dns.zone_status has one row per (slot, zone). A zone with several
-- primaries (`primaries = [..]`, `[[server_group]]`) has one stream per
-- primary, and what an operator needs to know is per primary: how far it
-- acknowledged, what it still has in flight, whether it is degraded (left
-- behind under `degrade_after`) and why. Its degraded state is also state,
-- not only a report: a primary left behind must be brought in line (a
-- SOA-guarded catch-up reconcile) before it rejoins, after a restart too.
-- So pg2dns writes `degraded_since` before the slot confirms anything that
-- primary did not take, and reads it back when it starts.
--
-- Written by two writers, each owning its columns: the status publisher
-- (about once a second: primary_addr, acked_lsn, acked_at, in_flight,
-- updated) and the stream (when a primary is degraded, rejoins or is
-- brought in line: degraded_since, degraded_lsn, last_error,
-- last_error_at). Only zones of several primaries have rows here.
-- Self-contained and idempotent: it can be applied again.
CREATE TABLE IF NOT EXISTS pg2dns.primary_status (
    slot            text NOT NULL,
    zone            text NOT NULL,
    -- The primary's `[[server]]` name, or its address as written.
    primary_name    text NOT NULL,
    primary_addr    text NOT NULL DEFAULT '',
    -- The newest transaction the primary acknowledged (NULL until it
    -- acknowledged one since the service started), and when.
    acked_lsn       pg_lsn,
    acked_at        timestamptz,
    -- Transactions of the zone the primary has not acknowledged.
    in_flight       bigint NOT NULL DEFAULT 0,
    -- Since when the zone goes on without it; NULL while it counts. Kept
    -- across restarts until a catch-up brought it in line.
    degraded_since  timestamptz,
    -- The newest transaction it had acknowledged when it was degraded.
    degraded_lsn    pg_lsn,
    -- Why it was degraded, or why it could not be brought in line.
    last_error      text,
    last_error_at   timestamptz,
    updated         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, zone, primary_name)
);

-- The view of version 8 with a column added at its end (CREATE OR REPLACE
-- keeps its grants): `primaries`, one object per primary of each zone of
-- several.
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
           AS standbys,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                    'zone', ps.zone,
                    'primary', ps.primary_name,
                    'address', ps.primary_addr,
                    'acked_lsn', ps.acked_lsn,
                    'acked_at', ps.acked_at,
                    'in_flight', ps.in_flight,
                    'degraded_since', ps.degraded_since,
                    'degraded_lsn', ps.degraded_lsn,
                    'last_error', ps.last_error,
                    'last_error_at', ps.last_error_at,
                    'updated', ps.updated) ORDER BY ps.zone, ps.primary_name)
                   FROM pg2dns.primary_status ps WHERE ps.slot = m.slot), '[]'::jsonb)
           AS primaries
FROM pg2dns.mode m
LEFT JOIN pg2dns.progress p ON p.slot = m.slot
LEFT JOIN pg_replication_slots s ON s.slot_name = m.slot AND s.database = current_database()
LEFT JOIN pg2dns.stream_status st ON st.slot = m.slot;

INSERT INTO pg2dns.schema_version (version) VALUES (13) ON CONFLICT DO NOTHING;
