-- Several replicas on one database: see migrations/0007_leases.sql for what
-- each table is for. PostgreSQL spelling of the same schema.

CREATE TABLE leases (
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    owner      TEXT,
    generation BIGINT NOT NULL DEFAULT 0,
    expires_at BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, key)
);
CREATE INDEX leases_by_owner ON leases (owner, kind);

ALTER TABLE inbox ADD COLUMN claimed_by TEXT;

CREATE TABLE rollout_inputs (
    id          BIGSERIAL PRIMARY KEY,
    rollout_id  TEXT NOT NULL,
    input       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    answered_at BIGINT,
    answer      TEXT
);
CREATE INDEX rollout_inputs_open ON rollout_inputs (rollout_id, id) WHERE answered_at IS NULL;

CREATE TABLE write_pacing (
    installation_id BIGINT PRIMARY KEY,
    tokens          DOUBLE PRECISION NOT NULL,
    updated_at      BIGINT NOT NULL
);
