// The uplink keys this broker holds, per device: each claimed once, with the envelope that proves the device used it
// (docs/PROTOCOL.md §9), shared by that device's connections to this broker, and retired once the chip has moved on.
import { KmsHttpError, type UplinkProof } from '../kms-api/client.js';
import type { KeyDelivery } from '../kms-api/coalescer.js';
import { EnvelopeKey, keyIdFor, ReplayWindow, SUITE_SM4_GCM } from '../protocol/index.js';

/** Why an uplink key could not be had; each is a refusal reason the device is told (docs/PROTOCOL.md §9.4). */
export type UplinkKeyRefusal =
  'kms_unavailable' | 'key_spent' | 'foreign_key' | 'forged' | 'revoked' | 'policy' | 'error';

export class UplinkKeyError extends Error {
  constructor(
    readonly reason: UplinkKeyRefusal,
    message: string,
  ) {
    super(message);
    this.name = 'UplinkKeyError';
  }
}

/** A claimed uplink key and the replay window of its sequence numbers, whichever connection uses it. */
export interface HeldUplinkKey {
  readonly index: number;
  readonly keyId: string;
  readonly key: EnvelopeKey;
  readonly replay: ReplayWindow;
  /**
   * The will sealed under this key (sequence number 0, direction will) was published, or discarded by a clean
   * DISCONNECT [MQTT-3.14.4-3]: it is never published again, so a replayed CONNECT carrying it is refused.
   */
  willSpent: boolean;
  /**
   * QoS 1 messages opened under this key whose publish (store, then routing) has not completed, by sequence number:
   * resolves true once the message is stored, false if it never was. A DUP resend of one of them, on this or on a
   * later connection, waits for it (hooks/publish.ts) before it is acknowledged.
   */
  readonly storing: Map<number, Promise<boolean>>;
}

interface DeviceKeys {
  /** Claimed keys by index. */
  held: Map<number, HeldUplinkKey>;
  /** Claims in flight by index, with the envelope each proves with: the same envelope twice shares one claim. */
  claiming: Map<number, { claim: Promise<HeldUplinkKey>; envelope: Uint8Array }>;
  /** Highest index the device has been seen using here; a chip never goes back to a lower one (§9.1). */
  highest: number;
  /** Indices named by the wills of open connections (count per index): kept until those connections end. */
  pinned: Map<number, number>;
  connections: number;
  lingerTimer: NodeJS.Timeout | undefined;
}

/** Uplink claims one device may have in flight at this broker (an honest chip has one new key at a time). */
export const MAX_CLAIMS_IN_FLIGHT = 2;

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.length).equals(b);
}

/** How long a device's keys stay held after its last connection to this broker ended (a reconnect continues them). */
export const DEFAULT_UPLINK_LINGER_SECONDS = 120;

export class UplinkKeys {
  private readonly devices = new Map<string, DeviceKeys>();
  private closed = false;

  constructor(
    /** The broker's coalescer: claims and retirements of many devices travel in one request. */
    private readonly kms: KeyDelivery,
    private readonly lingerMs = DEFAULT_UPLINK_LINGER_SECONDS * 1000,
  ) {}

  /** A connection of `deviceId` opened: its held keys no longer expire. */
  attach(deviceId: string): void {
    const d = this.deviceOf(deviceId);
    d.connections++;
    clearTimeout(d.lingerTimer);
    d.lingerTimer = undefined;
  }

  /** A connection of `deviceId` ended: with no other connection, its keys are retired after the linger time. */
  detach(deviceId: string): void {
    const d = this.devices.get(deviceId);
    if (!d) return;
    d.connections = Math.max(0, d.connections - 1);
    if (d.connections > 0) return;
    clearTimeout(d.lingerTimer);
    this.lingerThenForget(deviceId, d);
  }

  /**
   * A connection's will names uplink key `index`: that key is kept (not retired when the chip moves on) until the
   * returned function is called, so the will can still be opened when it is due.
   */
  pin(deviceId: string, index: number): () => void {
    const d = this.deviceOf(deviceId);
    d.pinned.set(index, (d.pinned.get(index) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = (d.pinned.get(index) ?? 1) - 1;
      if (n > 0) return void d.pinned.set(index, n);
      d.pinned.delete(index);
      const key = d.held.get(index);
      if (key && index < d.highest) {
        d.held.delete(index);
        void this.retire(deviceId, [key]);
      }
    };
  }

  /** The key with `index` if this broker holds it for the device: the synchronous path of every message. */
  ready(deviceId: string, index: number): HeldUplinkKey | undefined {
    return this.devices.get(deviceId)?.held.get(index);
  }

  /**
   * The key with `index`, claimed from the key service with `proof` (the envelope that names it) unless this broker
   * holds it already. Older keys of the device are retired once a newer one is claimed (§9.1: a chip never goes
   * back). Throws UplinkKeyError.
   */
  claim(deviceId: string, index: number, proof: UplinkProof, sessionId: string): Promise<HeldUplinkKey> {
    const d = this.deviceOf(deviceId);
    const held = d.held.get(index);
    if (held) return Promise.resolve(held);
    if (index < d.highest && !d.pinned.has(index))
      return Promise.reject(new UplinkKeyError('key_spent', `uplink key ${index} is older than one in use`));
    const pending = d.claiming.get(index);
    if (pending) {
      // Another envelope's claim of this key is in flight. If that envelope was forged, this one still gets its
      // own chance: a forgery must not take an honest message down with it.
      if (sameBytes(pending.envelope, proof.envelope)) return pending.claim;
      return pending.claim.catch((err: unknown) => {
        if (err instanceof UplinkKeyError && err.reason === 'forged')
          return this.claim(deviceId, index, proof, sessionId);
        throw err;
      });
    }
    // An honest chip has one new key at a time in flight; many at once are an envelope flood naming made-up
    // indices, each of which would cost the key service a request before the first refusal closes the connection.
    if (d.claiming.size >= MAX_CLAIMS_IN_FLIGHT)
      return Promise.reject(
        new UplinkKeyError('error', `more than ${MAX_CLAIMS_IN_FLIGHT} uplink keys claimed at once`),
      );
    const claim = this.claimFromKms(deviceId, index, proof, sessionId).then(
      (key) => this.adopt(deviceId, key),
      (err: unknown) => {
        throw refusalOf(err, deviceId, index);
      },
    );
    d.claiming.set(index, { claim, envelope: proof.envelope });
    const done = () => d.claiming.delete(index);
    claim.then(done, done);
    return claim;
  }

  /** Retires every held key (broker shutdown), and every key whose claim is still in flight once it arrives. */
  async close(): Promise<void> {
    this.closed = true;
    // A claim answered from now on is retired by adopt(): wait for those, so their retirements are queued at the
    // coalescer before the broker closes it (its close sends and waits for what is queued).
    const claiming = [...this.devices.values()].flatMap((d) => [...d.claiming.values()].map((c) => c.claim));
    await Promise.allSettled(claiming);
    await Promise.all([...this.devices.keys()].map((id) => this.forget(id)));
  }

  private deviceOf(deviceId: string): DeviceKeys {
    let d = this.devices.get(deviceId);
    if (!d) {
      d = {
        held: new Map(),
        claiming: new Map(),
        highest: -1,
        pinned: new Map(),
        connections: 0,
        lingerTimer: undefined,
      };
      this.devices.set(deviceId, d);
    }
    return d;
  }

  private async claimFromKms(
    deviceId: string,
    index: number,
    proof: UplinkProof,
    sessionId: string,
  ): Promise<HeldUplinkKey> {
    const keyId = keyIdFor(deviceId, index);
    const delivered = await this.kms.decKeys(deviceId, [keyId], sessionId, [proof]);
    const raw = Buffer.from(delivered.keys[0]!.key, 'base64');
    const key = new EnvelopeKey(raw);
    raw.fill(0);
    key.suite(SUITE_SM4_GCM); // the key schedule is built once, here, not on the message's path
    return { index, keyId, key, replay: new ReplayWindow(), willSpent: false, storing: new Map() };
  }

  /** Holds a newly claimed key and retires the device's older ones. */
  private adopt(deviceId: string, key: HeldUplinkKey): HeldUplinkKey {
    const d = this.devices.get(deviceId);
    if (this.closed || !d) {
      void this.retire(deviceId, [key]);
      return key;
    }
    d.held.set(key.index, key);
    d.highest = Math.max(d.highest, key.index);
    const older = [...d.held.values()].filter((k) => k.index < key.index && !d.pinned.has(k.index));
    for (const k of older) d.held.delete(k.index);
    if (older.length > 0) void this.retire(deviceId, older);
    if (d.connections === 0 && !d.lingerTimer) this.lingerThenForget(deviceId, d);
    return key;
  }

  /** Retires the device's keys after the linger time, unless a connection of it comes first (attach). */
  private lingerThenForget(deviceId: string, d: DeviceKeys): void {
    d.lingerTimer = setTimeout(() => void this.forget(deviceId), this.lingerMs).unref();
  }

  private async forget(deviceId: string): Promise<void> {
    const d = this.devices.get(deviceId);
    if (!d) return;
    if (d.connections > 0 && !this.closed) return;
    clearTimeout(d.lingerTimer);
    this.devices.delete(deviceId);
    await this.retire(deviceId, [...d.held.values()]);
  }

  /** Forgets the keys and reports them retired to the key service (best effort: an unretired key stays claimed). */
  private async retire(deviceId: string, keys: HeldUplinkKey[]): Promise<void> {
    if (keys.length === 0) return;
    for (const k of keys) k.key.destroy();
    await this.kms
      .retire(
        deviceId,
        keys.map((k) => k.keyId),
      )
      .catch(() => undefined);
  }
}

/** The key service's refusal, as the reason the device is told. */
function refusalOf(err: unknown, deviceId: string, index: number): UplinkKeyError {
  if (!(err instanceof KmsHttpError))
    return new UplinkKeyError('kms_unavailable', `key service unavailable: ${(err as Error).message}`);
  if (err.code === 'KMS_ERR_DEVICE_REVOKED') return new UplinkKeyError('revoked', `${deviceId} is revoked`);
  const reasons = err.details.map((d) => (d as { reason?: unknown }).reason);
  // The key service's table says the topic is end-to-end (this broker's copy is a poll behind): not a key for us.
  if (reasons.includes('end_to_end'))
    return new UplinkKeyError(
      'policy',
      `uplink key ${index} of ${deviceId} is an end-to-end key: only its app claims it`,
    );
  if (reasons.includes('proof_failed'))
    return new UplinkKeyError('forged', `the envelope naming uplink key ${index} does not open under it`);
  if (reasons.includes('claimed') || reasons.includes('retired') || reasons.includes('superseded'))
    return new UplinkKeyError('key_spent', `uplink key ${index} of ${deviceId} was used in another session`);
  if (reasons.includes('unknown') || reasons.includes('not an uplink key'))
    return new UplinkKeyError('foreign_key', `uplink key ${index} is not an uplink key of ${deviceId}`);
  if (err.status >= 500) return new UplinkKeyError('kms_unavailable', `key service error: ${err.code}`);
  return new UplinkKeyError('error', `the key service refused the claim of uplink key ${index} (${err.code})`);
}
