// The keys of one device connection at the broker: uplink keys through the broker's UplinkKeys (claimed at the first
// envelope naming them, docs/PROTOCOL.md §9), downlink keys claimed when the first command is sealed and rotated
// without ever making delivery wait once the first one is here.
import type { UplinkProof } from '../kms-api/client.js';
import type { KeyDelivery } from '../kms-api/coalescer.js';
import { EnvelopeKey, MAX_SEQ, SUITE_SM4_GCM, type SuiteId, sealEnvelope } from '../protocol/index.js';
import type { ClaimBudget } from './claim-budget.js';
import { answerLost } from './key-reports.js';
import type { HeldUplinkKey, UplinkKeys } from './uplink-keys.js';

export interface RotationLimits {
  /** Messages sealed under one downlink key before rotating. */
  messages: number;
  /** Payload bytes sealed under one downlink key before rotating. */
  bytes: number;
  /** Seconds a downlink key is used before rotating. */
  seconds: number;
}

export const DEFAULT_ROTATION: Readonly<RotationLimits> = Object.freeze({
  messages: 10_000,
  bytes: 16 * 1024 * 1024,
  seconds: 3600,
});

interface DownlinkKey {
  key: EnvelopeKey;
  index: number;
  keyId: string;
  seq: number;
  bytes: number;
  since: number;
}

export type SessionEvent =
  | { kind: 'downlink-rotated'; from: number; to: number }
  | { kind: 'downlink-prefetch-failed'; error: string }
  | { kind: 'downlink-overdue' }
  | { kind: 'downlink-unavailable' };

/** After a failed downlink claim, deliveries pass unsealed-and-dropped for this long before the next attempt. */
const DOWNLINK_RETRY_MS = 1000;

export class DeviceSessionKeys {
  private current: DownlinkKey | undefined;
  private next: DownlinkKey | undefined;
  private prefetching: Promise<void> | undefined;
  /** Deliveries waiting, in order, for the session's first downlink key. */
  private waiting: Array<() => void> = [];
  private retryAt = 0;
  private readonly claimed: string[] = [];
  /** A downlink claim's answer was lost: at close, every downlink key claimed for this session is retired. */
  private claimLost = false;
  private closed = false;
  /** The suite downlink is sealed in: one the device's chip supports (its token says which, docs/PROTOCOL.md §20). */
  downlinkSuite: SuiteId = SUITE_SM4_GCM;
  /** The device's budget of downlink claims at this broker, shared by its connections (none: unlimited). */
  downlinkBudget: ClaimBudget | undefined;

  constructor(
    /** The broker's coalescer: claims and retirements of many devices travel in one request. */
    private readonly kms: KeyDelivery,
    private readonly uplinks: UplinkKeys,
    readonly deviceId: string,
    readonly sessionId: string,
    private readonly rotation: RotationLimits = DEFAULT_ROTATION,
    private readonly onEvent: (e: SessionEvent) => void = () => undefined,
    private readonly now: () => number = () => Date.now(),
  ) {
    uplinks.attach(deviceId);
  }

  get downlinkKeyIndex(): number | undefined {
    return this.current?.index;
  }

  /** The uplink key with `index` if the broker holds it already: the synchronous path of every message. */
  readyUplinkKey(index: number): HeldUplinkKey | undefined {
    return this.uplinks.ready(this.deviceId, index);
  }

  /** The uplink key with `index`, claimed with `proof` (the envelope that names it) if not held yet. */
  uplinkKey(index: number, proof: UplinkProof): Promise<HeldUplinkKey> {
    return this.uplinks.claim(this.deviceId, index, proof, this.sessionId);
  }

  /** Keeps the uplink key a will names until this connection ends (see UplinkKeys.pin). */
  pinUplinkKey(index: number): () => void {
    return this.uplinks.pin(this.deviceId, index);
  }

  /**
   * Runs `deliver` now if the session can seal, or, in arrival order, once its first downlink key is claimed
   * (§9.2: a downlink key is claimed when the first command is sealed). A failed claim lets the waiting deliveries
   * through (the forward hook then drops them as undeliverable, as with an empty pool) and is retried after
   * DOWNLINK_RETRY_MS. When the session closes first, waiting deliveries are released undelivered: a queued QoS 1/2
   * message of a persistent session stays queued for the next connection.
   */
  whenSealable(deliver: () => void, release: () => void): void {
    if (this.closed) return release();
    if (this.current || (this.waiting.length === 0 && this.now() < this.retryAt)) return deliver();
    this.waiting.push(() => (this.closed ? release() : deliver()));
    if (this.waiting.length === 1) void this.claimFirst();
  }

  /**
   * Runs `deliver` (a delivery that needs no key) now, or, when deliveries wait for the first key, after them in
   * arrival order: Aedes drops a delivery older than one it already sent to the client (its dedupe), so none may
   * overtake those waiting. Released undelivered when the session closes first, as those are.
   */
  afterWaiting(deliver: () => void, release: () => void): void {
    if (this.closed) return release();
    if (this.waiting.length === 0) return deliver();
    this.waiting.push(() => (this.closed ? release() : deliver()));
  }

  /**
   * Claims the session's first downlink key now (a persistent session whose queued commands Aedes sends right after
   * CONNACK, through a hook that cannot wait). Throws what the key service answered.
   */
  async prepareDownlink(): Promise<void> {
    if (this.current) return;
    const [key] = await this.claimDownlink(1);
    if (this.closed || this.current) key?.key.destroy();
    else this.current = key;
  }

  private async claimFirst(): Promise<void> {
    try {
      await this.prepareDownlink();
    } catch (err) {
      this.retryAt = this.now() + DOWNLINK_RETRY_MS;
      this.onEvent({ kind: 'downlink-prefetch-failed', error: (err as Error).message });
    }
    const waiting = this.waiting;
    this.waiting = [];
    for (const run of waiting) run();
  }

  /**
   * Seals a downlink payload for this device; synchronous (Aedes' authorizeForward cannot wait). Returns undefined
   * when the session holds no usable downlink key: the message is then not delivered to this device. Throws
   * PROTO_ERR_TOO_LARGE above `maxPayload` (default: the envelope's default limit).
   */
  sealDownlink(payload: Uint8Array, topic: string, maxPayload?: number): Uint8Array | undefined {
    const cur = this.current;
    if (!cur) {
      this.onEvent({ kind: 'downlink-unavailable' });
      this.prefetch();
      return undefined;
    }
    if (this.due(cur, payload.length)) {
      if (this.next) this.rotate();
      else {
        this.onEvent({ kind: 'downlink-overdue' });
        this.prefetch();
        if (cur.seq > MAX_SEQ) return undefined; // the sequence space itself is exhausted: never reuse a nonce
      }
    }
    const k = this.current!;
    const envelope = sealEnvelope(payload, {
      key: k.key,
      keyIndex: k.index,
      seq: k.seq,
      suite: this.downlinkSuite,
      deviceId: this.deviceId,
      topic,
      direction: 'down',
      maxPayload,
    });
    k.seq++;
    k.bytes += payload.length;
    if (!this.next && this.nearlyDue(k)) this.prefetch();
    return envelope;
  }

  /** Forgets the downlink keys and reports them retired (best effort); the uplink keys stay with UplinkKeys. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.prefetching?.catch(() => undefined);
    const waiting = this.waiting;
    this.waiting = [];
    for (const run of waiting) run();
    this.uplinks.detach(this.deviceId);
    this.current?.key.destroy();
    this.next?.key.destroy();
    this.current = this.next = undefined;
    if (this.claimed.length > 0) await this.kms.retire(this.deviceId, this.claimed).catch(() => undefined);
    // A claim that committed at the key service but whose answer never came is retired by session (enc_keys names
    // no key); a claim committed after this report stays claimed, its key never delivered (docs/KMS-API.md).
    if (this.claimLost)
      await this.kms.abandon({ SAE_ID: this.deviceId, downlink_session_id: this.sessionId }).catch(() => undefined);
  }

  private due(k: DownlinkKey, adding: number): boolean {
    return (
      k.seq >= this.rotation.messages ||
      k.bytes + adding > this.rotation.bytes ||
      this.now() - k.since >= this.rotation.seconds * 1000
    );
  }

  /** Claim the next key when the current one is 80% through any limit. */
  private nearlyDue(k: DownlinkKey): boolean {
    const r = this.rotation;
    return k.seq >= r.messages * 0.8 || k.bytes >= r.bytes * 0.8 || this.now() - k.since >= r.seconds * 800;
  }

  private rotate(): void {
    const old = this.current!;
    this.current = { ...this.next!, since: this.now() };
    this.next = undefined;
    old.key.destroy();
    this.onEvent({ kind: 'downlink-rotated', from: old.index, to: this.current.index });
    this.prefetch();
  }

  private prefetch(): void {
    if (this.prefetching || this.closed) return;
    this.prefetching = this.claimDownlink(1)
      .then(([k]) => {
        if (this.closed) k?.key.destroy();
        else if (!this.current) this.current = k;
        else this.next = k;
      })
      .catch((err: unknown) => this.onEvent({ kind: 'downlink-prefetch-failed', error: (err as Error).message }))
      .finally(() => {
        this.prefetching = undefined;
      });
  }

  private async claimDownlink(n: number): Promise<DownlinkKey[]> {
    if (this.downlinkBudget && !this.downlinkBudget.take(this.deviceId))
      throw new Error(`the downlink claim budget of ${this.deviceId} is spent for now (maxDownlinkClaimsPerMinute)`);
    let keys;
    try {
      ({ keys } = await this.kms.encKeys(this.deviceId, n, this.sessionId));
    } catch (err) {
      if (answerLost(err)) this.claimLost = true;
      throw err;
    }
    return keys.map((k) => {
      this.claimed.push(k.key_ID);
      const raw = Buffer.from(k.key, 'base64');
      const key = new EnvelopeKey(raw);
      raw.fill(0);
      return { key, index: k.key_ID_extension!.qkey_key_index!, keyId: k.key_ID, seq: 0, bytes: 0, since: this.now() };
    });
  }
}
