// Numbered SQL migrations for the key store; the applied count is kept in PRAGMA user_version.

export const MIGRATIONS: readonly string[] = [
  // 1: devices, apps, brokers, fill batches, keys, audit log, revocations, service secrets.
  `
  CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;

  CREATE TABLE devices (
    device_id TEXT PRIMARY KEY,
    serial TEXT,
    state TEXT NOT NULL CHECK (state IN ('active', 'revoked')),
    login_key_wrapped BLOB,
    login_key_item TEXT,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    revoke_reason TEXT
  ) STRICT;

  CREATE TABLE clients (
    client_id TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('app', 'broker')),
    secret_hash BLOB NOT NULL,
    secret_salt BLOB NOT NULL,
    acl TEXT,
    state TEXT NOT NULL CHECK (state IN ('active', 'revoked')),
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
  ) STRICT;

  CREATE TABLE batches (
    batch_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices(device_id),
    state TEXT NOT NULL CHECK (state IN ('pending', 'committed', 'cancelled')),
    content_hash TEXT NOT NULL,
    up_count INTEGER NOT NULL,
    down_count INTEGER NOT NULL,
    login_key_wrapped BLOB,
    created_at INTEGER NOT NULL,
    settled_at INTEGER
  ) STRICT;

  CREATE TABLE keys (
    key_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices(device_id),
    key_index INTEGER NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('up', 'down')),
    batch_id TEXT NOT NULL REFERENCES batches(batch_id),
    wrapped BLOB,
    state TEXT NOT NULL CHECK (state IN ('pending', 'filled', 'claimed', 'retired', 'destroyed')),
    claimed_by TEXT,
    claimed_session TEXT,
    claimed_at INTEGER,
    retired_at INTEGER,
    destroyed_at INTEGER,
    created_at INTEGER NOT NULL,
    UNIQUE (device_id, key_index)
  ) STRICT;
  CREATE INDEX keys_pool ON keys (device_id, direction, state, key_index);
  CREATE INDEX keys_batch ON keys (batch_id);

  CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    device_id TEXT,
    detail TEXT
  ) STRICT;
  CREATE INDEX audit_device ON audit (device_id, id);
  CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
  CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;

  CREATE TABLE revocations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    role TEXT NOT NULL,
    revoked_at INTEGER NOT NULL
  ) STRICT;

  CREATE TABLE secrets (
    name TEXT PRIMARY KEY,
    item TEXT NOT NULL,
    wrapped BLOB NOT NULL,
    public_info TEXT,
    created_at INTEGER NOT NULL
  ) STRICT;
  `,
  // 2: index only the keys that can still be claimed. A claim then removes one index entry instead of moving it,
  // and the index stays as small as the unused pools.
  `
  DROP INDEX keys_pool;
  CREATE INDEX keys_fresh ON keys (device_id, direction, key_index) WHERE state = 'filled';
  CREATE INDEX keys_device ON keys (device_id, key_index);
  `,
  // 3: a broker may be identified by its TLS client certificate (ETSI GS QKD 014 SAE authentication): by the
  // certificate's SHA-256 fingerprint or by its subject. Each identifies at most one client.
  `
  ALTER TABLE clients ADD COLUMN cert_fingerprint TEXT;
  ALTER TABLE clients ADD COLUMN cert_subject TEXT;
  CREATE UNIQUE INDEX clients_cert_fingerprint ON clients (cert_fingerprint) WHERE cert_fingerprint IS NOT NULL;
  CREATE UNIQUE INDEX clients_cert_subject ON clients (cert_subject) WHERE cert_subject IS NOT NULL;
  `,
  // 4: the envelope suites a device's chip supports (JSON array of suite ids), recorded by each fill batch and
  // adopted by the device when the batch is committed.
  `
  ALTER TABLE batches ADD COLUMN suites TEXT;
  ALTER TABLE devices ADD COLUMN suites TEXT;
  `,
  // 5: the policy table (kms-api/policy-schemas.ts): one row per (role, principal or none, topic filter); the
  // table's version, bumped by every change, is kept in meta as 'policy_version'.
  `
  CREATE TABLE policies (
    policy_id TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('device', 'app')),
    principal TEXT,
    filter TEXT NOT NULL,
    rule TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
  ) STRICT;
  CREATE UNIQUE INDEX policies_subject_filter ON policies (role, COALESCE(principal, ''), filter);
  INSERT INTO meta (name, value) VALUES ('policy_version', '0');
  `,
  // 6: the highest uplink key a device has used (claims refuse lower ones, docs/PROTOCOL.md §9.1) in one index
  // step. Through keys_device the lookup walked the device's keys from its highest index down, past every
  // downlink and unused key: bench/kms.ts, one device with 74,000 keys a pool, 52 ms of CPU per uplink claim.
  `
  CREATE INDEX keys_used_uplink ON keys (device_id, key_index) WHERE direction = 'up' AND state IN ('claimed', 'retired');
  `,
  // 7: application sessions (docs/PROTOCOL.md §22): an app's SM2 public key, and the pool of QRNG keys that become
  // application session keys (filled by an administrator, issued to one app for one broker, claimed once by it, or
  // expired unclaimed).
  `
  CREATE TABLE app_sm2_keys (
    app_id TEXT PRIMARY KEY REFERENCES clients(client_id),
    public_key TEXT NOT NULL,
    registered_at INTEGER NOT NULL
  ) STRICT;

  CREATE TABLE app_keys (
    key_id TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    wrapped BLOB,
    state TEXT NOT NULL CHECK (state IN ('filled', 'issued', 'claimed', 'expired')),
    app_id TEXT,
    broker_id TEXT,
    created_at INTEGER NOT NULL,
    issued_at INTEGER,
    claimed_at INTEGER
  ) STRICT;
  CREATE INDEX app_keys_fresh ON app_keys (created_at, key_id) WHERE state = 'filled';
  CREATE INDEX app_keys_batch ON app_keys (batch_id);
  CREATE INDEX app_keys_issued ON app_keys (app_id, issued_at) WHERE state = 'issued';
  `,
  // 8: end-to-end topics (docs/PROTOCOL.md §23): an application may claim a device's uplink key itself. Who claimed a
  // key is a broker (claimed_role NULL, as every earlier claim) or an app ('app'). The chip keeps one key for what
  // brokers open and one for what an application opens, each rising on its own, so "the highest uplink key used" is
  // asked per claimer kind: one partial index each.
  `
  ALTER TABLE keys ADD COLUMN claimed_role TEXT CHECK (claimed_role IS NULL OR claimed_role = 'app');
  DROP INDEX keys_used_uplink;
  CREATE INDEX keys_used_uplink ON keys (device_id, key_index) WHERE direction = 'up' AND state IN ('claimed', 'retired') AND claimed_role IS NULL;
  CREATE INDEX keys_used_uplink_app ON keys (device_id, key_index) WHERE direction = 'up' AND state IN ('claimed', 'retired') AND claimed_role = 'app';
  `,
];
