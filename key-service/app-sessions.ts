// The SQL of application sessions: apps' SM2 public keys, and the pool of QRNG keys that become their session keys
// (filled by an administrator, issued to one app for one broker, claimed at most once by that broker).
import { randomUUID } from 'node:crypto';
import type Database from 'better-sqlite3';
import type { Db } from './db.js';
import { KmsError } from './errors.js';
import type { MasterKey } from './master-key.js';

type Audit = (actor: string, action: string, deviceId: string | null, detail?: Record<string, unknown>) => void;

export interface AppKeyLevels {
  filled: number;
  issued: number;
  claimed: number;
  expired: number;
}

/** Seconds an issued key stays claimable by its broker; after that it is erased unclaimed (§22.4). */
export const APP_KEY_CLAIM_SECONDS = 300;
/**
 * Issued keys one app may hold unclaimed at once: each handshake takes a key from the shared pool, so without a
 * bound an app with valid credentials could drain it by never announcing its keys to the broker.
 */
export const MAX_UNCLAIMED_APP_KEYS = 8;

/** The master-key wrap item of an app key (master-key.ts rewraps the same names on rotation). */
const itemOf = (keyId: string) => `app-key:${keyId}`;

export class AppSessionStore {
  private readonly s: Record<string, Database.Statement>;

  constructor(
    private readonly db: Db,
    private readonly master: MasterKey,
    private readonly audit: Audit,
    private readonly now: () => number = Date.now,
  ) {
    const p = (sql: string) => db.prepare(sql);
    this.s = {
      app: p(`SELECT state FROM clients WHERE client_id = ? AND role = 'app'`),
      setKey: p(
        `INSERT INTO app_sm2_keys (app_id, public_key, registered_at) VALUES (?, ?, ?)
         ON CONFLICT (app_id) DO UPDATE SET public_key = excluded.public_key, registered_at = excluded.registered_at`,
      ),
      getKey: p(`SELECT public_key FROM app_sm2_keys WHERE app_id = ?`),
      batchExists: p(`SELECT 1 FROM app_keys WHERE batch_id = ? LIMIT 1`),
      insertKey: p(`INSERT INTO app_keys (key_id, batch_id, wrapped, state, created_at) VALUES (?, ?, ?, 'filled', ?)`),
      nextFresh: p(`SELECT key_id, wrapped FROM app_keys WHERE state = 'filled' ORDER BY created_at, key_id LIMIT 1`),
      issue: p(
        `UPDATE app_keys SET state = 'issued', app_id = ?, broker_id = ?, issued_at = ? WHERE key_id = ? AND state = 'filled'`,
      ),
      byId: p(`SELECT key_id, wrapped, state, app_id, broker_id FROM app_keys WHERE key_id = ?`),
      claim: p(
        `UPDATE app_keys SET state = 'claimed', wrapped = NULL, claimed_at = ? WHERE key_id = ? AND state = 'issued'`,
      ),
      levels: p(`SELECT state, COUNT(*) AS n FROM app_keys GROUP BY state`),
      expire: p(`UPDATE app_keys SET state = 'expired', wrapped = NULL WHERE state = 'issued' AND issued_at <= ?`),
      unclaimed: p(`SELECT COUNT(*) AS n FROM app_keys WHERE app_id = ? AND state = 'issued'`),
    };
  }

  /** 'active', 'revoked', or undefined when `appId` is not a registered app. */
  appState(appId: string): 'active' | 'revoked' | undefined {
    return (this.s.app!.get(appId) as { state: 'active' | 'revoked' } | undefined)?.state;
  }

  sm2PublicKey(appId: string): string | undefined {
    return (this.s.getKey!.get(appId) as { public_key: string } | undefined)?.public_key;
  }

  /** Registers or replaces an app's SM2 public key (already checked to lie on the curve). */
  setSm2PublicKey(appId: string, publicKeyHex: string, actor: string): void {
    this.db.transaction(() => {
      const state = this.appState(appId);
      if (!state) throw new KmsError('KMS_ERR_NOT_FOUND', `app ${appId}`);
      if (state !== 'active') throw new KmsError('KMS_ERR_CONFLICT', `app ${appId} was revoked`);
      const replaced = this.sm2PublicKey(appId) !== undefined;
      this.s.setKey!.run(appId, publicKeyHex, Date.now());
      // The public key is not secret; the audit records it so a replaced key can be traced.
      this.audit(actor, 'app.sm2_key.set', null, { client_id: appId, public_key: publicKeyHex, replaced });
    })();
  }

  /** Adds QRNG keys to the app pool, all or nothing; a batch id is used once. Returns the new key ids. */
  fill(batchId: string, keys: Uint8Array[], actor: string): string[] {
    return this.db.transaction(() => {
      if (this.s.batchExists!.get(batchId)) throw new KmsError('KMS_ERR_CONFLICT', `app key batch ${batchId}`);
      const now = Date.now();
      const ids = keys.map((key) => {
        const id = randomUUID();
        this.s.insertKey!.run(id, batchId, this.master.wrap(itemOf(id), key), now);
        return id;
      });
      this.audit(actor, 'app_keys.fill', null, { batch_id: batchId, count: ids.length });
      return ids;
    })();
  }

  /**
   * Takes the oldest unused pool key for `appId`'s session with `brokerId` and returns it unwrapped with its id; the
   * wrapped copy stays for that broker's one claim. KMS_ERR_POOL_EMPTY when the pool is empty.
   */
  issue(appId: string, brokerId: string): { keyId: string; key: Uint8Array } {
    const row = this.db.transaction(() => {
      this.expireUnclaimed();
      if ((this.s.unclaimed!.get(appId) as { n: number }).n >= MAX_UNCLAIMED_APP_KEYS)
        throw new KmsError('KMS_ERR_RATE_LIMITED', `more than ${MAX_UNCLAIMED_APP_KEYS} session keys unclaimed`, {
          retryAfterSeconds: APP_KEY_CLAIM_SECONDS,
        });
      const fresh = this.s.nextFresh!.get() as { key_id: string; wrapped: Buffer } | undefined;
      if (!fresh) throw new KmsError('KMS_ERR_POOL_EMPTY', undefined, { details: [{ pool: 'app' }] });
      this.s.issue!.run(appId, brokerId, this.now(), fresh.key_id);
      this.audit(appId, 'app.session.issue', null, { client_id: appId, broker_id: brokerId, key_ID: fresh.key_id });
      return fresh;
    })();
    return { keyId: row.key_id, key: this.master.unwrap(itemOf(row.key_id), row.wrapped) };
  }

  /**
   * The broker's claim (ETSI GS QKD 014 §5.3 dec_keys, the broker as the other SAE): each key issued to `appId`
   * for `brokerId`, at most once, all or nothing. Refusals name the key and a reason, never more.
   */
  claim(appId: string, brokerId: string, keyIds: string[]): Array<{ keyId: string; key: Uint8Array }> {
    const rows = this.db.transaction(() => {
      this.expireUnclaimed();
      const refused: Array<Record<string, unknown>> = [];
      const found: Array<{ key_id: string; wrapped: Buffer }> = [];
      for (const id of keyIds) {
        const k = this.s.byId!.get(id) as
          | { key_id: string; wrapped: Buffer | null; state: string; app_id: string | null; broker_id: string | null }
          | undefined;
        // Another app's key, or one issued for another broker, is as unknown to this caller as a key never made.
        const reason =
          !k || k.app_id !== appId || k.broker_id !== brokerId ? 'unknown' : k.state !== 'issued' ? k.state : null;
        if (reason) refused.push({ key_ID: id, reason });
        else found.push({ key_id: k!.key_id, wrapped: k!.wrapped! });
      }
      if (refused.length > 0) throw new KmsError('KMS_ERR_KEY_UNAVAILABLE', undefined, { details: refused });
      const now = this.now();
      for (const k of found)
        if (this.s.claim!.run(now, k.key_id).changes !== 1)
          throw new KmsError('KMS_ERR_KEY_UNAVAILABLE', undefined, {
            details: [{ key_ID: k.key_id, reason: 'claimed' }],
          });
      this.audit(brokerId, 'app.key.claim', null, { client_id: appId, key_IDs: found.map((k) => k.key_id) });
      return found;
    })();
    return rows.map((r) => ({ keyId: r.key_id, key: this.master.unwrap(itemOf(r.key_id), r.wrapped) }));
  }

  /** Erases the keys issued longer ago than APP_KEY_CLAIM_SECONDS and never claimed. */
  private expireUnclaimed(): void {
    const n = this.s.expire!.run(this.now() - APP_KEY_CLAIM_SECONDS * 1000).changes;
    if (n > 0) this.audit('kms', 'app_keys.expire', null, { count: n });
  }

  levels(): AppKeyLevels {
    const out: AppKeyLevels = { filled: 0, issued: 0, claimed: 0, expired: 0 };
    for (const r of this.s.levels!.all() as Array<{ state: keyof AppKeyLevels; n: number }>) out[r.state] = r.n;
    return out;
  }
}
