-- pg2dns schema, version 4: what the running service publishes about its
-- zones and its lag, so that `pg2dns status` and the pg2dns.status view can
-- show it whether or not the service runs.
--
-- The service upserts these rows from a background task at most about once
-- a second (never on the per-transaction path); `updated` says how fresh
-- they are.

-- Per instance: how far the stream has come and how old the oldest change
-- not yet in DNS is.
CREATE TABLE IF NOT EXISTS pg2dns.stream_status (
    slot            text PRIMARY KEY,
    -- The newest position received from the server.
    received_lsn    pg_lsn,
    -- Commit time (server clock) of the oldest received transaction not yet
    -- acknowledged by every zone; NULL when everything received is in DNS.
    oldest_unacked_commit timestamptz,
    updated         timestamptz NOT NULL DEFAULT now()
);

-- Per instance and zone: the zone's last acknowledged UPDATE, the SOA
-- serial the primary answered after it, and what is still in flight.
CREATE TABLE IF NOT EXISTS pg2dns.zone_status (
    slot         text NOT NULL,
    zone         text NOT NULL,
    primary_addr text NOT NULL DEFAULT '',
    -- When the primary last acknowledged an UPDATE of this zone.
    acked_at     timestamptz,
    -- The zone's SOA serial as its primary answered it after an
    -- acknowledgement, and when it was asked.
    soa_serial   bigint,
    soa_at       timestamptz,
    -- Transactions handed to the zone and not yet acknowledged.
    in_flight    bigint NOT NULL DEFAULT 0,
    updated      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, zone)
);

-- The view of version 3 with columns added at its end (CREATE OR REPLACE
-- keeps its grants).
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
       -- server's clock alone; 0 when everything received is in DNS.
       coalesce(greatest(extract(epoch FROM now() - st.oldest_unacked_commit), 0), 0)::float8
           AS lag_seconds,
       st.updated AS status_updated,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                    'zone', z.zone,
                    'primary', z.primary_addr,
                    'acked_at', z.acked_at,
                    'soa_serial', z.soa_serial,
                    'soa_at', z.soa_at,
                    'in_flight', z.in_flight,
                    'updated', z.updated) ORDER BY z.zone)
                   FROM pg2dns.zone_status z WHERE z.slot = m.slot), '[]'::jsonb) AS zones
FROM pg2dns.mode m
LEFT JOIN pg2dns.progress p ON p.slot = m.slot
LEFT JOIN pg_replication_slots s ON s.slot_name = m.slot
LEFT JOIN pg2dns.stream_status st ON st.slot = m.slot;

INSERT INTO pg2dns.schema_version (version) VALUES (4) ON CONFLICT DO NOTHING;
