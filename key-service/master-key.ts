// The master key (KEK) that wraps every key at rest: file handling, SM4-GCM wrap/unwrap, and rotation.
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createSm4Gcm, getBackend, type SuiteKey } from '../protocol/index.js';
import type { Db } from './db.js';
import { writeSecretFile } from '../common/secret-file.js';

const FILE_PREFIX = 'master-key.v';
/** The file name of master key version `version`. */
export const MASTER_KEY_FILE = (version: number) => `${FILE_PREFIX}${version}`;
const WRAP_VERSION = 0x01;
/** version (1) | KEK version (4) | nonce (12) | ciphertext (n) | tag (16). */
const WRAP_OVERHEAD = 1 + 4 + 12 + 16;
const enc = new TextEncoder();

function fileFor(dir: string, version: number): string {
  return join(dir, `${FILE_PREFIX}${version}`);
}

/** A key file: 32 hex digits, readable only by its owner, never overwritten, fsynced before use. */
function writeKeyFile(path: string, key: Uint8Array): void {
  writeSecretFile(path, Buffer.from(key).toString('hex'));
}

function readKeyFile(path: string): Uint8Array {
  const mode = statSync(path).mode & 0o077;
  if (mode !== 0) throw new Error(`${path} must be readable by its owner only (chmod 600)`);
  const text = readFileSync(path, 'utf8').trim();
  if (!/^[0-9a-f]{32}$/.test(text)) throw new Error(`${path} must hold 32 hex digits`);
  return Uint8Array.from(Buffer.from(text, 'hex'));
}

/** The AAD binds the item name: a wrapped blob copied to another row or purpose does not unwrap. */
function aadFor(item: string): Uint8Array {
  return enc.encode(`qkey-mqtt/wrap/v1\u0000${item}`);
}

/** Each item is wrapped once per KEK version, so a nonce derived from both never repeats under one KEK. */
function nonceFor(kekVersion: number, aad: Uint8Array): Uint8Array {
  const input = new Uint8Array(4 + aad.length);
  new DataView(input.buffer).setUint32(0, kekVersion);
  input.set(aad, 4);
  return getBackend().sm3(input).slice(0, 12);
}

export class MasterKey {
  private constructor(
    readonly version: number,
    private readonly gcm: SuiteKey,
  ) {}

  static fromBytes(version: number, key: Uint8Array): MasterKey {
    return new MasterKey(version, createSm4Gcm(key, getBackend()));
  }

  wrap(item: string, key: Uint8Array): Buffer {
    const aad = aadFor(item);
    const nonce = nonceFor(this.version, aad);
    const { ciphertext, tag } = this.gcm.seal(nonce, aad, key);
    const out = Buffer.alloc(WRAP_OVERHEAD + key.length);
    out[0] = WRAP_VERSION;
    out.writeUInt32BE(this.version, 1);
    out.set(nonce, 5);
    out.set(ciphertext, 17);
    out.set(tag, 17 + key.length);
    return out;
  }

  unwrap(item: string, wrapped: Uint8Array): Uint8Array {
    if (wrapped.length <= WRAP_OVERHEAD || wrapped[0] !== WRAP_VERSION) throw new Error('wrapped key: bad format');
    const kekVersion = Buffer.from(wrapped).readUInt32BE(1);
    if (kekVersion !== this.version) throw new Error(`wrapped key: KEK version ${kekVersion}, active ${this.version}`);
    // The nonce travels in the blob (it is not secret), so unwrapping on the claim path costs no hash.
    const tagAt = wrapped.length - 16;
    const key = this.gcm.open(
      wrapped.subarray(5, 17),
      aadFor(item),
      wrapped.subarray(17, tagAt),
      wrapped.subarray(tagAt),
    );
    if (!key) throw new Error('wrapped key: authentication failed (wrong master key or tampered row)');
    return key;
  }

  destroy(): void {
    this.gcm.destroy();
  }
}

function activeVersion(db: Db): number | undefined {
  const row = db.prepare(`SELECT value FROM meta WHERE name = 'kek_version'`).get() as { value: string } | undefined;
  return row ? Number(row.value) : undefined;
}

/** The versions of the master-key files in `dir`. */
function keyFileVersions(dir: string): number[] {
  return readdirSync(dir)
    .filter((name) => name.startsWith(FILE_PREFIX))
    .map((name) => Number(name.slice(FILE_PREFIX.length)))
    .filter((v) => Number.isInteger(v) && v > 0);
}

/**
 * Removes key files older than the active version: a rotation that crashed after its commit left them. A newer
 * file is never removed: it may be the master key of a newer copy of the database (say, an older kms.db restored
 * by mistake), and deleting it would make that database unreadable for good.
 */
function removeSupersededKeyFiles(dir: string, active: number): void {
  for (const v of keyFileVersions(dir)) if (v < active) rmSync(fileFor(dir, v));
}

/** Creates master key version 1 in a new key store (`qkey kms init`); never overwrites a key file. */
export function createMasterKey(db: Db, dir: string): MasterKey {
  if (activeVersion(db) !== undefined) throw new Error('the key store already has a master key');
  const key = randomBytes(16);
  writeKeyFile(fileFor(dir, 1), key);
  db.prepare(`INSERT INTO meta (name, value) VALUES ('kek_version', ?)`).run('1');
  return MasterKey.fromBytes(1, key);
}

/**
 * Loads the active master key from `<dir>/master-key.v<N>`. The database records which version is active; the
 * files record nothing else.
 */
export function loadMasterKey(db: Db, dir: string): MasterKey {
  const version = activeVersion(db);
  if (version === undefined) throw new Error('the key store records no master key version');
  const path = fileFor(dir, version);
  if (!existsSync(path)) throw new Error(`master key ${path} is missing; the key store cannot be opened without it`);
  // Read (and checked) first: a start that fails on its own key file deletes nothing.
  const master = MasterKey.fromBytes(version, readKeyFile(path));
  removeSupersededKeyFiles(dir, version);
  return master;
}

/** The wrapped columns, with the item name each was wrapped under. */
const WRAPPED_COLUMNS = [
  {
    select: `SELECT key_id AS id, 'key:' || key_id AS item, wrapped FROM keys WHERE wrapped IS NOT NULL`,
    update: `UPDATE keys SET wrapped = ? WHERE key_id = ?`,
  },
  {
    select: `SELECT device_id AS id, login_key_item AS item, login_key_wrapped AS wrapped FROM devices WHERE login_key_wrapped IS NOT NULL`,
    update: `UPDATE devices SET login_key_wrapped = ? WHERE device_id = ?`,
  },
  {
    select: `SELECT batch_id AS id, 'login:' || device_id || ':' || batch_id AS item, login_key_wrapped AS wrapped FROM batches WHERE login_key_wrapped IS NOT NULL`,
    update: `UPDATE batches SET login_key_wrapped = ? WHERE batch_id = ?`,
  },
  {
    select: `SELECT key_id AS id, 'app-key:' || key_id AS item, wrapped FROM app_keys WHERE wrapped IS NOT NULL`,
    update: `UPDATE app_keys SET wrapped = ? WHERE key_id = ?`,
  },
  { select: `SELECT name AS id, item, wrapped FROM secrets`, update: `UPDATE secrets SET wrapped = ? WHERE name = ?` },
];

/**
 * Rotates the master key: writes version N+1 (fsync), rewraps every wrapped column and switches the active
 * version in one transaction, then deletes version N. A crash at any point leaves one consistent pair.
 */
export function rotateMasterKey(db: Db, dir: string): { from: number; to: number; rewrapped: number } {
  const current = loadMasterKey(db, dir);
  // Above every key file present, so a newer file kept by loadMasterKey is never overwritten or reused.
  const nextVersion = Math.max(current.version, ...keyFileVersions(dir)) + 1;
  const nextBytes = randomBytes(16);
  writeKeyFile(fileFor(dir, nextVersion), nextBytes);
  const next = MasterKey.fromBytes(nextVersion, nextBytes);
  let rewrapped = 0;
  db.transaction(() => {
    for (const col of WRAPPED_COLUMNS) {
      const update = db.prepare(col.update);
      for (const row of db.prepare(col.select).all() as Array<{ id: string; item: string; wrapped: Buffer }>) {
        const key = current.unwrap(row.item, row.wrapped);
        update.run(next.wrap(row.item, key), row.id);
        key.fill(0);
        rewrapped++;
      }
    }
    db.prepare(`UPDATE meta SET value = ? WHERE name = 'kek_version'`).run(String(nextVersion));
  })();
  rmSync(fileFor(dir, current.version));
  current.destroy();
  next.destroy();
  nextBytes.fill(0);
  return { from: current.version, to: nextVersion, rewrapped };
}
