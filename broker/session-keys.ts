// The keys of one device session at the broker: uplink keys claimed on first use (ETSI 014 dec_keys), downlink
// keys claimed ahead of need (enc_keys) and rotated without ever making delivery wait.
import { type KmsClient, KmsHttpError } from '../kms-api/client.js';
import { EnvelopeKey, keyIdFor, MAX_SEQ, ReplayWindow, SUITE_SM4_GCM, sealEnvelope } from '../protocol/index.js';

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

/** Why an uplink key could not be had. */
export class UplinkKeyError extends Error {
  constructor(
    readonly reason: 'kms_unavailable' | 'foreign_key',
    message: string,
  ) {
    super(message);
    this.name = 'UplinkKeyError';
  }
}

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
  | { kind: 'downlink-unavailable' }
  | { kind: 'uplink-prefetch-failed' };

export class DeviceSessionKeys {
  private readonly uplink = new Map<number, Promise<{ key: EnvelopeKey; replay: ReplayWindow }>>();
  private readonly uplinkReady = new Map<number, { key: EnvelopeKey; replay: ReplayWindow }>();
  private current: DownlinkKey | undefined;
  private next: DownlinkKey | undefined;
  private prefetching: Promise<void> | undefined;
  private readonly claimed: string[] = [];
  private closed = false;

  constructor(
    private readonly kms: KmsClient,
    readonly deviceId: string,
    readonly sessionId: string,
    private readonly rotation: RotationLimits = DEFAULT_ROTATION,
    private readonly onEvent: (e: SessionEvent) => void = () => undefined,
    private readonly now: () => number = () => Date.now(),
  ) {}

  /**
   * Claims the first downlink keys before the session is acknowledged (current and next together, one request).
   * Throws KmsUnreachableError if the key service cannot be reached; an empty pool leaves the session without a
   * downlink key (deliveries to it are then dropped and reported, see sealDownlink).
   */
  async start(): Promise<void> {
    const [keys] = await Promise.all([
      this.claimDownlink(2).catch(async (err: unknown) => {
        if (err instanceof KmsHttpError && err.code === 'KMS_ERR_POOL_EMPTY')
          return this.claimDownlink(1).catch(emptyPool);
        throw err;
      }),
      this.prefetchUplink(),
    ]);
    this.current = keys[0];
    this.next = keys[1];
    if (!this.current) this.onEvent({ kind: 'downlink-unavailable' });
  }

  /**
   * Claims, before CONNACK, the uplink key the chip takes at session start (the lowest unused one), so the first
   * publish does not wait for the key service; under a connect storm that wait queued every device's first
   * messages. If the chip took another key (it abandoned one in a session that never published), the prefetched
   * key is one the chip never uses again: wasted, never shared. Failure here never fails the connect.
   */
  private async prefetchUplink(): Promise<void> {
    try {
      const index = (await this.kms.status(this.deviceId)).status_extension?.qkey_next_uplink_key_index;
      if (typeof index === 'number') await this.uplinkKey(index);
    } catch {
      this.onEvent({ kind: 'uplink-prefetch-failed' });
    }
  }

  get downlinkKeyIndex(): number | undefined {
    return this.current?.index;
  }

  /** The uplink key with `index`, claimed from the key service the first time this session sees it. */
  uplinkKey(index: number): Promise<{ key: EnvelopeKey; replay: ReplayWindow }> {
    let entry = this.uplink.get(index);
    if (!entry) {
      entry = this.claimUplink(index);
      this.uplink.set(index, entry);
      entry.then(
        (ready) => this.uplinkReady.set(index, ready),
        // A failed claim is not cached: a later message may succeed once the key service is back.
        () => this.uplink.delete(index),
      );
    }
    return entry;
  }

  /** The uplink key with `index` if this session already holds it: the synchronous fast path. */
  readyUplinkKey(index: number): { key: EnvelopeKey; replay: ReplayWindow } | undefined {
    return this.uplinkReady.get(index);
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

  /** Forgets all keys and reports them retired to the key service (best effort). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.prefetching?.catch(() => undefined);
    for (const p of this.uplink.values()) void p.then((u) => u.key.destroy()).catch(() => undefined);
    this.uplinkReady.clear();
    this.current?.key.destroy();
    this.next?.key.destroy();
    this.current = this.next = undefined;
    if (this.claimed.length > 0) await this.kms.retire(this.deviceId, this.claimed).catch(() => undefined);
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
    const { keys } = await this.kms.encKeys(this.deviceId, n, this.sessionId);
    return keys.map((k) => {
      this.claimed.push(k.key_ID);
      const raw = Buffer.from(k.key, 'base64');
      const key = new EnvelopeKey(raw);
      raw.fill(0);
      return { key, index: k.key_ID_extension!.qkey_key_index!, keyId: k.key_ID, seq: 0, bytes: 0, since: this.now() };
    });
  }

  private async claimUplink(index: number): Promise<{ key: EnvelopeKey; replay: ReplayWindow }> {
    const keyId = keyIdFor(this.deviceId, index);
    let delivered;
    try {
      delivered = await this.kms.decKeys(this.deviceId, [keyId], this.sessionId);
    } catch (err) {
      if (err instanceof KmsHttpError && err.status === 400) {
        throw new UplinkKeyError(
          'foreign_key',
          `uplink key ${index} of ${this.deviceId} is not available to this session`,
        );
      }
      throw new UplinkKeyError('kms_unavailable', `key service unavailable: ${(err as Error).message}`);
    }
    this.claimed.push(keyId);
    const raw = Buffer.from(delivered.keys[0]!.key, 'base64');
    const key = new EnvelopeKey(raw);
    raw.fill(0);
    // The key schedule of the default suite is built now, before CONNACK when the claim is the prefetch, not on
    // the first message: after a connect storm that is 10,000 first messages arriving within the same second.
    key.suite(SUITE_SM4_GCM);
    return { key, replay: new ReplayWindow() };
  }
}

function emptyPool(err: unknown): DownlinkKey[] {
  if (err instanceof KmsHttpError && err.code === 'KMS_ERR_POOL_EMPTY') return [];
  throw err;
}
