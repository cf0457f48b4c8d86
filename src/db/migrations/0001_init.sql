-- honeytrap schema, version 1 (docs/deployment.md describes the tables).
-- Applied by `honeytrap db migrate` (and by the postgres output at start) inside one
-- transaction, with the version recorded in honeytrap_schema.

-- One row per sensor (observer.name of the events).
CREATE TABLE sensors (
    name        text PRIMARY KEY,
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    version     text NOT NULL
);

-- One row per attack (real or virtual), keyed by the attack id (event.id): inserts
-- are idempotent on it.
CREATE TABLE attacks (
    id                  uuid PRIMARY KEY,
    sensor              text NOT NULL REFERENCES sensors (name),
    start_time          timestamptz NOT NULL,
    end_time            timestamptz NOT NULL,
    duration_ns         bigint NOT NULL,
    source_ip           inet NOT NULL,
    source_port         integer NOT NULL,
    destination_ip      inet NOT NULL,
    destination_port    integer NOT NULL,
    protocol            text NOT NULL,          -- tcp, udp
    monitor             text NOT NULL,
    mode                text NOT NULL,          -- normal, ignore, mirror, proxy
    end_reason          text NOT NULL,
    responses_sent      integer NOT NULL,
    bytes_in            bigint NOT NULL,        -- source.bytes
    bytes_out           bigint NOT NULL,        -- destination.bytes
    payload_md5         text NOT NULL,
    payload_sha256      text NOT NULL,
    payload_sha512      text NOT NULL,
    payload_prefix      bytea NOT NULL,         -- the first output.postgres.payload_max bytes
    payload_truncated   boolean NOT NULL,
    read_limit_reached  boolean NOT NULL,
    transcript_path     text,                   -- where the whole session is
    transcript_offset   bigint,
    transcript_length   bigint,
    is_virtual          boolean NOT NULL,
    parent_id           uuid,                   -- the real attack a virtual one was decoded from
    decoder             text,
    analysis_done       boolean NOT NULL,
    event               jsonb NOT NULL,         -- the whole event, as written to events.jsonl
    inserted_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX attacks_start_time ON attacks (start_time);
CREATE INDEX attacks_sensor_start_time ON attacks (sensor, start_time);
CREATE INDEX attacks_source_ip ON attacks (source_ip);
CREATE INDEX attacks_destination_port ON attacks (destination_port, start_time);
CREATE INDEX attacks_payload_sha256 ON attacks (payload_sha256);
CREATE INDEX attacks_parent_id ON attacks (parent_id) WHERE parent_id IS NOT NULL;

-- The second connection of a mirror or proxy attack.
CREATE TABLE relays (
    attack_id           uuid PRIMARY KEY REFERENCES attacks (id) ON DELETE CASCADE,
    kind                text NOT NULL,          -- mirror, proxy
    map                 text,
    target_host         text NOT NULL,
    target_ip           inet,
    target_port         integer NOT NULL,
    target_transport    text NOT NULL,
    connected           boolean NOT NULL,
    local_ip            inet,
    local_port          integer,
    bytes_sent          bigint NOT NULL,
    bytes_received      bigint NOT NULL,
    received_md5        text,
    received_sha256     text,
    received_sha512     text,
    fallback            boolean NOT NULL,
    fallback_reason     text
);

-- Findings of the analyzers, in the order of the event.
CREATE TABLE findings (
    attack_id       uuid NOT NULL REFERENCES attacks (id) ON DELETE CASCADE,
    ordinal         integer NOT NULL,
    analyzer        text NOT NULL,
    kind            text NOT NULL,
    detail          text NOT NULL,
    "offset"        bigint,
    length          bigint,
    source_kind     text NOT NULL,              -- payload, virtual, download
    source_id       uuid,
    source_sha256   text,
    meta            jsonb,
    PRIMARY KEY (attack_id, ordinal)
);
CREATE INDEX findings_analyzer_kind ON findings (analyzer, kind);
CREATE INDEX findings_kind ON findings (kind);

-- Downloaded files, once per content (SHA-256); content only with
-- output.postgres.store_downloads, up to output.postgres.download_max bytes.
CREATE TABLE downloads (
    sha256      text PRIMARY KEY,
    md5         text NOT NULL,
    sha512      text NOT NULL,
    size        bigint NOT NULL,
    truncated   boolean NOT NULL,
    first_seen  timestamptz NOT NULL,
    content     bytea
);

-- Every download attempt of an attack (also failed ones, with sha256 NULL).
CREATE TABLE attack_downloads (
    attack_id       uuid NOT NULL REFERENCES attacks (id) ON DELETE CASCADE,
    ordinal         integer NOT NULL,
    sha256          text REFERENCES downloads (sha256),
    analyzer        text NOT NULL,
    url             text NOT NULL,
    host            text NOT NULL,
    port            integer NOT NULL,
    user_name       text,
    password        text,
    size            bigint NOT NULL,
    truncated       boolean NOT NULL,
    stored          text,
    cached          boolean NOT NULL,
    error           text,
    source_kind     text NOT NULL,
    source_id       uuid,
    source_sha256   text,
    PRIMARY KEY (attack_id, ordinal)
);
CREATE INDEX attack_downloads_sha256 ON attack_downloads (sha256) WHERE sha256 IS NOT NULL;
