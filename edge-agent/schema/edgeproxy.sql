-- edgeProxy control-plane state, schema v2.
--
-- One file for both sources: the local routing.db applies it as-is (the agent embeds it), and a
-- Corrosion cluster loads it from its schema directory. So it follows Corrosion's (cr-sqlite's)
-- rules: only CREATE TABLE and CREATE INDEX; every table has a primary key whose columns are
-- NOT NULL; no UNIQUE constraint or unique index besides the primary key; no AUTOINCREMENT; no
-- REFERENCES; every other NOT NULL column has a constant DEFAULT (which also lets a newer
-- schema add it with ALTER TABLE ... ADD COLUMN). Changes must stay additive: Corrosion ignores
-- dropped tables and columns.
--
-- There is no CHECK constraint on purpose: a replicated change that violated one would be
-- refused by the replica applying it, whereas the agent rejects a bad row by itself, with a
-- reason, and serves the rest. Required columns default to values the agent rejects ('' or 0),
-- so a row that forgets one is reported instead of silently made up.
--
-- Timestamps are Unix seconds written by the writer, never defaults such as unixepoch(), so that
-- every replica stores the same value.

-- A service clients reach at vip:port.
CREATE TABLE services (
    id TEXT NOT NULL PRIMARY KEY,
    -- IPv4 or IPv6 address, announced over BGP from every POP.
    vip TEXT NOT NULL DEFAULT '',
    port INTEGER NOT NULL DEFAULT 0,
    -- Only 'tcp' is served.
    proto TEXT NOT NULL DEFAULT 'tcp',
    -- The health check of its backends, as JSON ({"type": "http", "path": "/health"}; see
    -- docs/operations.md); '' is the agent's default, a TCP connect.
    health_check TEXT NOT NULL DEFAULT '',
    updated_at INTEGER NOT NULL DEFAULT 0,
    -- When the row was first written (Unix seconds; later writes keep it). Of two services on
    -- one vip:port the older keeps it; 0 (a row from before this column, or typed in without
    -- it) is "not known", and then the one that already held it does.
    created_at INTEGER NOT NULL DEFAULT 0
);

-- A backend of a service (v1's backend row: service_id was v1's app, address was wg_ip).
CREATE TABLE backends (
    id TEXT NOT NULL PRIMARY KEY,
    service_id TEXT NOT NULL DEFAULT '',
    -- Region id (sa, us, eu, ap, ...) and ISO 3166-1 alpha-2 country: the geo tiers.
    region TEXT NOT NULL DEFAULT '',
    country TEXT NOT NULL DEFAULT '',
    -- The backend's IPv6 overlay (6PN) address, or a name ending in .internal.
    address TEXT NOT NULL DEFAULT '',
    port INTEGER NOT NULL DEFAULT 0,
    -- 0..1000; 0 takes the backend out of new flows.
    weight INTEGER NOT NULL DEFAULT 1,
    -- Live connections: above soft_limit a shrinking share, at hard_limit none.
    soft_limit INTEGER NOT NULL DEFAULT 100,
    hard_limit INTEGER NOT NULL DEFAULT 1000,
    -- 0 or 1. A draining backend gets no new flows; its flows go on.
    draining INTEGER NOT NULL DEFAULT 0,
    enabled INTEGER NOT NULL DEFAULT 1,
    -- A JSON object: what the backend registered about itself.
    metadata TEXT NOT NULL DEFAULT '{}',
    -- Overrides the service's health check; '' keeps it.
    health_check TEXT NOT NULL DEFAULT '',
    -- A self-registered backend's lease: when its last heartbeat came (Unix seconds) and the
    -- heartbeat interval it promised. 0 seconds: a row typed in, which never expires. Three
    -- missed heartbeats take the backend out of the pool.
    heartbeat_at INTEGER NOT NULL DEFAULT 0,
    heartbeat_secs INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL DEFAULT 0,
    -- When the row was first written, as for services: of two backends on one address and
    -- port of a service (or one DNS name), the older keeps it, after rows typed in (no lease),
    -- which always win over registrations.
    created_at INTEGER NOT NULL DEFAULT 0,
    -- The POP (its id) whose registration API accepted the registration or its latest
    -- heartbeat: the one that deletes the row once its lease has run out. '' for rows typed in
    -- and registrations from before this column (any POP deletes those, long after expiry).
    lease_pop TEXT NOT NULL DEFAULT ''
);

CREATE INDEX backends_service_id ON backends (service_id);

-- A POP or backend host of the deployment: a WireGuard peer of the overlay.
CREATE TABLE pops (
    id TEXT NOT NULL PRIMARY KEY,
    region TEXT NOT NULL DEFAULT '',
    -- NULL until known.
    overlay_addr TEXT,
    -- WireGuard public key (base64) and endpoint (host:port).
    public_key TEXT,
    endpoint TEXT,
    updated_at INTEGER NOT NULL DEFAULT 0,
    -- 'pop' (runs the data plane) or 'host' (a backend host: only joins the overlay).
    role TEXT NOT NULL DEFAULT 'pop',
    -- The host's number in its region (1..2^32-1): with the region and the deployment prefix,
    -- its 6PN /96 (docs/6pn.md). 0: not in the 6PN mesh.
    host_number INTEGER NOT NULL DEFAULT 0,
    -- Its v1 IPv4 overlay address (10.50.x.y), carried beside the 6PN /96 on the same tunnel
    -- while v1 users remain; NULL for none.
    overlay_ipv4 TEXT
);

-- One POP's view of one backend. Only that POP writes the rows keyed by its pop_id, so
-- replicas never fight over a row.
CREATE TABLE health (
    pop_id TEXT NOT NULL,
    backend_id TEXT NOT NULL,
    -- unknown, up, degraded or down.
    status TEXT NOT NULL DEFAULT 'unknown',
    -- Smoothed round-trip time in microseconds; NULL when not measured.
    rtt_us INTEGER,
    checked_at INTEGER NOT NULL DEFAULT 0,
    -- Why: the last failure, or the degradation rule that applies.
    reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (pop_id, backend_id)
);

CREATE INDEX health_backend_id ON health (backend_id);

-- Deployment-wide settings, one value per key: `sixpn.prefix` (the 6PN /48, generated once),
-- `sixpn.region.<region>` (a region's number in 6PN addresses, for regions beyond the fixed
-- ones).
CREATE TABLE settings (
    key TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL DEFAULT '',
    updated_at INTEGER NOT NULL DEFAULT 0
);
