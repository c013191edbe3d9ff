// The application side of end-to-end topics (docs/PROTOCOL.md §23): claims each device uplink key itself from the
// key service (the envelope as proof of use), opens the envelopes the broker forwarded unopened, keeps the replay
// window per key that the broker keeps for the topics it reads, seals commands under the same keys, and retires
// keys once the chip has moved on.
import { claimEndToEndKey, retireEndToEndKeys } from '../kms-api/end-to-end-client.js';
import { type KmsClient, KmsHttpError } from '../kms-api/client.js';
import {
  EnvelopeKey,
  isProtocolError,
  keyIdFor,
  openEnvelope,
  type ParsedEnvelope,
  parseEnvelope,
  ReplayWindow,
  sealEnvelope,
} from '../protocol/index.js';
import { DEFAULT_TOPICS, type TopicTemplates, uplinkOwner } from '../broker/topic-policy.js';

/** Why an envelope was not opened: each is counted in `refused`. */
export type EndToEndRefusal =
  | 'not_device_topic' // the topic is in no device's uplink space
  | 'malformed' // not an envelope
  | 'key_spent' // a key the chip has left behind, or one claimed by someone else (a broker, another app)
  | 'not_granted' // the key service does not let this application claim it (policy)
  | 'forged' // does not open under the key it names
  | 'replay' // a (key, seq) already opened
  | 'kms_unavailable' // the key service could not be asked
  | 'no_key'; // a command for a device whose current end-to-end key this application does not hold

export class EndToEndError extends Error {
  constructor(
    readonly reason: EndToEndRefusal,
    message: string,
  ) {
    super(message);
    this.name = 'EndToEndError';
  }
}

interface HeldKey {
  index: number;
  keyId: string;
  key: EnvelopeKey;
  replay: ReplayWindow;
  /** Next sequence number of the commands this application seals under the key (e2e-down, §23.4). */
  nextCommandSeq: number;
}

interface DeviceKeys {
  held: Map<number, HeldKey>;
  claiming: Map<number, Promise<HeldKey>>;
  /** Highest index claimed: the chip's end-to-end keys only rise (§23.2), so lower ones are spent. */
  highest: number;
}

export interface EndToEndReaderOptions {
  /** The device topic spaces, as the broker is configured (default devices/{id}/up/#). */
  topics?: TopicTemplates;
  /** Keys held per device at once (the newest); older ones are retired. Default 2. */
  keysPerDevice?: number;
}

/**
 * Opens end-to-end telemetry for one application. `kms` must carry that application's token. Each key is claimed at
 * most once by anyone (the key service decides); a refused claim is not retried for the same envelope.
 */
export class EndToEndReader {
  private readonly devices = new Map<string, DeviceKeys>();
  private readonly topics: TopicTemplates;
  private readonly keep: number;
  private closed = false;
  /** Envelopes refused, by reason. */
  readonly refused: Record<EndToEndRefusal, number> = {
    not_device_topic: 0,
    malformed: 0,
    key_spent: 0,
    not_granted: 0,
    forged: 0,
    replay: 0,
    kms_unavailable: 0,
    no_key: 0,
  };

  constructor(
    private readonly kms: KmsClient,
    options: EndToEndReaderOptions = {},
  ) {
    this.topics = options.topics ?? DEFAULT_TOPICS;
    this.keep = Math.max(1, options.keysPerDevice ?? 2);
  }

  /** The plaintext of `envelope`, received on `topic`; throws EndToEndError (counted) when it cannot be opened. */
  async open(topic: string, envelope: Uint8Array): Promise<Buffer> {
    try {
      return await this.openOrThrow(topic, envelope);
    } catch (err) {
      if (err instanceof EndToEndError) this.refused[err.reason]++;
      throw err;
    }
  }

  private async openOrThrow(topic: string, envelope: Uint8Array): Promise<Buffer> {
    if (this.closed) throw new Error('the reader is closed');
    const deviceId = uplinkOwner(this.topics, topic);
    if (deviceId === undefined) throw new EndToEndError('not_device_topic', `${topic} is in no device's uplink space`);
    let parsed: ParsedEnvelope;
    try {
      parsed = parseEnvelope(envelope);
    } catch (err) {
      if (isProtocolError(err)) throw new EndToEndError('malformed', err.code);
      throw err;
    }
    const d = this.deviceOf(deviceId);
    const held = d.held.get(parsed.keyIndex) ?? (await this.claim(deviceId, d, parsed, topic, envelope));
    try {
      // Replay check before decryption, window moved only once the tag verified (docs/PROTOCOL.md §5).
      const { payload } = openEnvelope(parsed, {
        key: held.key,
        deviceId,
        topic,
        direction: 'up',
        replay: held.replay,
      });
      return Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
    } catch (err) {
      if (!isProtocolError(err)) throw err;
      throw new EndToEndError(err.code === 'PROTO_ERR_REPLAY' ? 'replay' : 'forged', err.code);
    }
  }

  /**
   * Seals a command for `deviceId` on the end-to-end `topic` (docs/PROTOCOL.md §23.4): direction e2e-down, under
   * the newest end-to-end key the device has used, which this application claimed and the broker never holds. The
   * device opens it only within the session that key belongs to: after the device starts a new session, commands
   * wait until it has sealed something under its new key (throws `no_key` until then).
   */
  sealCommand(deviceId: string, topic: string, plaintext: Uint8Array): Uint8Array {
    const d = this.devices.get(deviceId);
    const k = d?.held.get(d.highest);
    if (!k) throw new EndToEndError('no_key', `${deviceId} has not sealed under an end-to-end key yet`);
    return sealEnvelope(plaintext, {
      key: k.key,
      keyIndex: k.index,
      seq: k.nextCommandSeq++,
      deviceId,
      topic,
      direction: 'e2e-down',
    });
  }

  /** Keys this reader holds for `deviceId`, by index (for tests and status pages). */
  heldIndices(deviceId: string): number[] {
    return [...(this.devices.get(deviceId)?.held.keys() ?? [])].sort((a, b) => a - b);
  }

  /** Retires every key held (best effort: a key not retired stays claimed, by this application, unusable by others). */
  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.devices.entries()];
    await Promise.all(all.flatMap(([, d]) => [...d.claiming.values()].map((c) => c.catch(() => undefined))));
    this.devices.clear();
    await Promise.all(all.map(([id, d]) => this.retire(id, [...d.held.values()])));
  }

  private deviceOf(deviceId: string): DeviceKeys {
    let d = this.devices.get(deviceId);
    if (!d) this.devices.set(deviceId, (d = { held: new Map(), claiming: new Map(), highest: -1 }));
    return d;
  }

  private claim(
    deviceId: string,
    d: DeviceKeys,
    parsed: ParsedEnvelope,
    topic: string,
    envelope: Uint8Array,
  ): Promise<HeldKey> {
    const index = parsed.keyIndex;
    if (index < d.highest)
      return Promise.reject(new EndToEndError('key_spent', `key ${index} is older than one in use`));
    // Messages under one new key arrive together: the first one's claim serves them all. If that envelope was a
    // forgery, the claim fails and the next envelope gets its own chance.
    const pending = d.claiming.get(index);
    if (pending)
      return pending.catch((err: unknown) => {
        if (err instanceof EndToEndError && err.reason === 'forged')
          return this.claim(deviceId, d, parsed, topic, envelope);
        throw err;
      });
    const claim = this.claimFromKms(deviceId, index, topic, envelope).then((k) => this.adopt(deviceId, d, k));
    d.claiming.set(index, claim);
    const done = () => d.claiming.delete(index);
    claim.then(done, done);
    return claim;
  }

  private async claimFromKms(deviceId: string, index: number, topic: string, envelope: Uint8Array): Promise<HeldKey> {
    const keyId = keyIdFor(deviceId, index);
    let delivered;
    try {
      delivered = await claimEndToEndKey(this.kms, deviceId, keyId, { envelope, topic, direction: 'up' });
    } catch (err) {
      throw refusalOf(err, index);
    }
    const raw = Buffer.from(delivered.keys[0]!.key, 'base64');
    const key = new EnvelopeKey(raw);
    raw.fill(0);
    return { index, keyId, key, replay: new ReplayWindow(), nextCommandSeq: 0 };
  }

  /** Holds a new key; keys older than the newest `keep` are retired (the chip does not go back to them). */
  private adopt(deviceId: string, d: DeviceKeys, key: HeldKey): HeldKey {
    if (this.closed || this.devices.get(deviceId) !== d) {
      void this.retire(deviceId, [key]);
      return key;
    }
    d.held.set(key.index, key);
    d.highest = Math.max(d.highest, key.index);
    const old = [...d.held.values()].sort((a, b) => b.index - a.index).slice(this.keep);
    for (const k of old) d.held.delete(k.index);
    if (old.length > 0) void this.retire(deviceId, old);
    return key;
  }

  private async retire(deviceId: string, keys: HeldKey[]): Promise<void> {
    if (keys.length === 0) return;
    for (const k of keys) k.key.destroy();
    await retireEndToEndKeys(
      this.kms,
      deviceId,
      keys.map((k) => k.keyId),
    ).catch(() => undefined);
  }
}

function refusalOf(err: unknown, index: number): EndToEndError {
  if (!(err instanceof KmsHttpError)) return new EndToEndError('kms_unavailable', (err as Error).message);
  const reasons = err.details.map((d) => (d as { reason?: unknown }).reason);
  if (reasons.includes('proof_failed'))
    return new EndToEndError('forged', `the envelope does not open under key ${index}`);
  if (reasons.includes('not_granted') || err.status === 401 || err.status === 403)
    return new EndToEndError('not_granted', `this application may not claim key ${index} (${err.code})`);
  if (reasons.some((r) => r === 'claimed' || r === 'retired' || r === 'superseded' || r === 'end_to_end'))
    return new EndToEndError('key_spent', `key ${index} was claimed by someone else or left behind`);
  if (err.status >= 500) return new EndToEndError('kms_unavailable', err.code);
  return new EndToEndError('not_granted', `the key service refused key ${index} (${err.code})`);
}
