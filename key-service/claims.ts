// Durable key claims with group commit: concurrent claim requests share one SQLite transaction (one fsync).
import { proofOpens } from './proof-of-use.js';
import { KmsError } from './errors.js';
import type { KeyStore } from './store.js';

export interface DeliveredKey {
  key_ID: string;
  key_index: number;
  key: Uint8Array;
}

/** An envelope sealed under the uplink key being claimed, as the device sent it (docs/KMS-API.md "Proof of use"). */
export interface UplinkProof {
  envelope: Uint8Array;
  topic: string;
  direction: 'up' | 'will';
}

/**
 * ETSI 014 dec_keys: the named uplink keys of one device, each with its proof of use, claimed by a broker
 * (`brokerId`) or, for an end-to-end topic (docs/PROTOCOL.md §23), by the application the policy names (`appId`).
 */
export type DecClaim = {
  kind: 'dec';
  deviceId: string;
  keyIds: string[];
  /** proofs[i] is the proof of use of keyIds[i]; an uplink key is claimed only with a proof that opens under it. */
  proofs: Array<UplinkProof | undefined>;
  sessionId: string | null;
} & ({ brokerId: string; appId?: undefined } | { appId: string; brokerId?: undefined });

/**
 * The application an end-to-end policy entry lets claim the keys of `deviceId`'s messages on `topic`
 * (PolicyStore.endToEndApp), or undefined: then only a broker may claim them.
 */
export type EndToEndReader = (deviceId: string, topic: string) => string | undefined;

/** ETSI 014 enc_keys: the next `count` fresh downlink keys of one device. */
export interface EncClaim {
  kind: 'enc';
  deviceId: string;
  count: number;
  brokerId: string;
  sessionId: string | null;
}

export type ClaimRequest = DecClaim | EncClaim;

interface Pending {
  request: ClaimRequest;
  resolve: (keys: DeliveredKey[]) => void;
  reject: (err: unknown) => void;
}

export interface ClaimStats {
  onBatch?: (size: number, seconds: number) => void;
  onClaim?: (kind: 'dec' | 'enc', result: 'ok' | 'refused' | 'error', keys: number) => void;
}

/** Device and broker states read in one claim transaction. */
interface StatesSeen {
  devices: Map<string, 'active' | 'revoked' | undefined>;
  brokers: Map<string, boolean>;
  apps: Map<string, boolean>;
}

/** A key about to be claimed: its wrapped material, or the material itself when checking a proof unwrapped it. */
type Claimed = { rowid: number; key_ID: string; key_index: number; wrapped: Buffer; key?: Uint8Array };
type Outcome = { ok: true; rows: Claimed[] } | { ok: false; error: KmsError };

/**
 * Collects claim requests that arrive in the same event-loop turn and commits them in one transaction, then
 * unwraps and delivers. A key leaves the service only after its claim is durable (synchronous=FULL commit), and
 * its wrapped material is erased in that same transaction, so no key can be delivered twice, even after a crash.
 */
export class ClaimQueue {
  private queue: Pending[] = [];
  /** One request's claims in its own savepoint (better-sqlite3 nests transactions as savepoints). */
  private readonly applyInSavepoint;
  private scheduled = false;
  private closed = false;

  constructor(
    private readonly store: KeyStore,
    private readonly maxBatch: number,
    private readonly stats: ClaimStats = {},
    /** Without it no topic is end-to-end: brokers claim every uplink key, as before policies had the mode. */
    private readonly endToEnd: EndToEndReader = () => undefined,
  ) {
    this.applyInSavepoint = store.db.transaction((r: ClaimRequest, now: number, seen: StatesSeen) =>
      this.apply(r, now, seen),
    );
  }

  submit(request: ClaimRequest): Promise<DeliveredKey[]> {
    if (this.closed) return Promise.reject(new KmsError('KMS_ERR_UNAVAILABLE', 'shutting down'));
    return new Promise((resolve, reject) => {
      this.queue.push({ request, resolve, reject });
      if (this.queue.length >= this.maxBatch) this.flush();
      else if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  /** Commits what is queued now; later submissions wait for the next turn. */
  flush(): void {
    this.scheduled = false;
    if (this.queue.length === 0) return;
    const batch = this.queue.splice(0, this.maxBatch);
    if (this.queue.length > 0 && !this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
    const started = process.hrtime.bigint();
    let outcomes: Outcome[];
    try {
      const seen: StatesSeen = { devices: new Map(), brokers: new Map(), apps: new Map() };
      outcomes = this.store.db.transaction(() => {
        const now = Date.now();
        // Each request of several keys runs in its own savepoint: a refused one rolls back alone, the batch commits
        // together. A one-key request needs none (a savepoint and its release measured 6 µs a claim): apply() refuses
        // it only before its one UPDATE has changed a row, and any other error rolls back the whole batch.
        return batch.map((p): Outcome => {
          try {
            const r = p.request;
            const oneKey = r.kind === 'enc' ? r.count === 1 : r.keyIds.length === 1;
            return { ok: true, rows: oneKey ? this.apply(r, now, seen) : this.applyInSavepoint(r, now, seen) };
          } catch (err) {
            if (err instanceof KmsError) return { ok: false, error: err };
            throw err;
          }
        });
      })();
    } catch (err) {
      // The transaction rolled back: nothing was claimed, nothing is delivered.
      for (const p of batch) {
        this.stats.onClaim?.(p.request.kind, 'error', 0);
        p.reject(new KmsError('KMS_ERR_UNAVAILABLE', (err as Error).message));
      }
      return;
    }
    this.stats.onBatch?.(batch.length, Number(process.hrtime.bigint() - started) / 1e9);
    // Committed: only now do keys leave the service.
    batch.forEach((p, i) => {
      const outcome = outcomes[i]!;
      if (!outcome.ok) {
        this.stats.onClaim?.(p.request.kind, 'refused', 0);
        p.reject(outcome.error);
        return;
      }
      try {
        const keys = outcome.rows.map((r) => ({
          key_ID: r.key_ID,
          key_index: r.key_index,
          key: r.key ?? this.store.unwrapKey(r.key_ID, r.wrapped),
        }));
        this.stats.onClaim?.(p.request.kind, 'ok', keys.length);
        p.resolve(keys);
      } catch (err) {
        this.stats.onClaim?.(p.request.kind, 'error', 0);
        p.reject(new KmsError('KMS_ERR_INTERNAL', (err as Error).message));
      }
    });
  }

  /** Claims one request's keys or throws a KmsError (its savepoint then rolls back: all or nothing). */
  private apply(r: ClaimRequest, now: number, seen: StatesSeen): Claimed[] {
    // Device and broker states cannot change inside this transaction: one lookup of each per batch is enough.
    // The claimer is checked here, in the claim's own transaction, not only when its request was authenticated:
    // a broker revoked a moment ago (its token or certificate still trusted for a second) claims nothing.
    if (r.brokerId !== undefined) {
      if (!seen.brokers.has(r.brokerId)) seen.brokers.set(r.brokerId, this.store.isActiveBroker(r.brokerId));
      if (!seen.brokers.get(r.brokerId))
        throw new KmsError('KMS_ERR_UNAUTHORIZED', 'broker is not registered or was revoked');
    } else {
      const app = r.appId!;
      if (!seen.apps.has(app)) seen.apps.set(app, this.store.client(app)?.state === 'active');
      if (!seen.apps.get(app)) throw new KmsError('KMS_ERR_UNAUTHORIZED', 'app is not registered or was revoked');
    }
    const claimer = r.brokerId ?? r.appId!;
    const claimerRole = r.brokerId !== undefined ? 'broker' : 'app';
    if (!seen.devices.has(r.deviceId)) seen.devices.set(r.deviceId, this.store.deviceState(r.deviceId));
    const state = seen.devices.get(r.deviceId);
    if (!state) throw new KmsError('KMS_ERR_UNKNOWN_DEVICE', undefined, { details: [{ SAE_ID: r.deviceId }] });
    if (state !== 'active') throw new KmsError('KMS_ERR_DEVICE_REVOKED');
    let rows: Claimed[];
    if (r.kind === 'dec') {
      const refused: Array<Record<string, unknown>> = [];
      rows = [];
      r.keyIds.forEach((id, i) => {
        const k = this.store.keyById(id);
        const reason =
          !k || k.device_id !== r.deviceId
            ? 'unknown'
            : k.direction !== 'up'
              ? 'not an uplink key'
              : // Who may claim comes before the key's state: a claimer without the right learns nothing else.
                (this.endToEndRefusal(r, r.proofs[i]) ??
                (k.state !== 'filled'
                  ? k.state
                  : // docs/PROTOCOL.md §9.1: a chip never goes back to a lower index, so an envelope under a key
                    // below one already used is one the device abandoned (or an attacker held back): never
                    // claimable. The chip's end-to-end keys rise on their own (§23.2): each claimer kind has its own.
                    k.key_index < this.store.highestUsedUplinkIndex(r.deviceId, claimerRole)
                    ? 'superseded'
                    : null));
        if (reason) return void refused.push({ key_ID: id, reason });
        const row = { rowid: k!.rowid, key_ID: k!.key_id, key_index: k!.key_index, wrapped: k!.wrapped! };
        const proofRefused = this.checkProof(r.deviceId, row, r.proofs[i]);
        if (proofRefused) refused.push({ key_ID: id, reason: proofRefused });
        else rows.push(row);
      });
      if (refused.length > 0) {
        for (const row of rows) row.key?.fill(0);
        throw new KmsError('KMS_ERR_KEY_UNAVAILABLE', undefined, { details: refused });
      }
    } else {
      if (r.brokerId === undefined) throw new Error('an application claims uplink keys only');
      rows = this.store
        .freshDownlinkKeys(r.deviceId, r.count)
        .map((k) => ({ rowid: k.rowid, key_ID: k.key_id, key_index: k.key_index, wrapped: k.wrapped }));
      if (rows.length < r.count) {
        throw new KmsError('KMS_ERR_POOL_EMPTY', undefined, {
          details: [{ SAE_ID: r.deviceId, direction: 'down', available: rows.length }],
        });
      }
    }
    for (const row of rows) {
      // The state guard in the UPDATE makes a double claim impossible even if validation above were wrong.
      if (!this.store.markClaimed(row.rowid, claimer, r.sessionId, now, claimerRole)) {
        for (const x of rows) x.key?.fill(0);
        throw new KmsError('KMS_ERR_KEY_UNAVAILABLE', undefined, {
          details: [{ key_ID: row.key_ID, reason: 'claimed' }],
        });
      }
    }
    this.store.audit(claimer, r.kind === 'dec' ? 'key.claim.dec' : 'key.claim.enc', r.deviceId, {
      key_IDs: rows.map((x) => x.key_ID),
      session: r.sessionId,
      ...(claimerRole === 'app' ? { end_to_end: true } : {}),
    });
    return rows;
  }

  /**
   * docs/PROTOCOL.md §23: the key of an envelope on an end-to-end topic goes to the one application its policy entry
   * names, never to a broker; any other topic's key goes to a broker, never to an application. The topic is the one
   * the proof opened with (it is in the envelope's AAD), so a claimer cannot pick it. Checked before the proof, so
   * a refused claimer learns nothing about the envelope.
   */
  private endToEndRefusal(r: DecClaim, proof: UplinkProof | undefined): string | null {
    if (!proof) return r.brokerId !== undefined ? null : 'proof_required'; // a broker's is refused by checkProof
    const reader = this.endToEnd(r.deviceId, proof.topic);
    if (r.brokerId !== undefined) return reader === undefined ? null : 'end_to_end';
    if (proof.direction !== 'up') return 'not_granted'; // a will is the broker's (§9.5)
    return reader === r.appId ? null : 'not_granted';
  }

  /**
   * Proof of use (docs/KMS-API.md): the envelope must name this key and open under it. Leaves the unwrapped key on
   * the row when it does (so it is not unwrapped twice) and returns why not otherwise; the key stays unclaimed.
   */
  private checkProof(deviceId: string, row: Claimed, proof: UplinkProof | undefined): string | null {
    if (!proof) return 'proof_required';
    const key = this.store.unwrapKey(row.key_ID, row.wrapped);
    let opens = false;
    try {
      opens = proofOpens(key, row.key_index, deviceId, proof);
    } finally {
      if (!opens) key.fill(0);
    }
    if (!opens) return 'proof_failed';
    row.key = key;
    return null;
  }

  /** Commits whatever is queued and refuses new claims. */
  close(): void {
    this.flush();
    this.closed = true;
  }
}
