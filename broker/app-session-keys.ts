// An application connection's session keys (docs/PROTOCOL.md §22.5): each generation's SM4 key with the replay
// window of what the app sealed (app-up) and the broker's own sequence numbers (app-down), and the rotation limits.
import { EnvelopeKey, MAX_SEQ, openEnvelope, parseEnvelope, ReplayWindow, sealEnvelope } from '../protocol/index.js';
import type { RotationLimits } from './session-keys.js';

/** Why an application's envelope or session announcement was refused; each is a publish refusal reason. */
export class AppSessionError extends Error {
  constructor(
    readonly reason: 'foreign_key' | 'key_spent' | 'malformed',
    detail: string,
  ) {
    super(detail);
    this.name = 'AppSessionError';
  }
}

interface Generation {
  key: EnvelopeKey;
  replay: ReplayWindow;
  /** The broker's next app-down sequence number under this key. */
  nextSeq: number;
  /** Envelopes and plaintext bytes under this key, both directions, against the rotation limits. */
  messages: number;
  bytes: number;
  installedAt: number;
  /** The app was told to rotate away from this generation (rotationDue). */
  told: boolean;
}

/**
 * Held per application connection. The newest generation seals deliveries; the one before it still opens what the
 * app sealed before it switched (its envelopes may be in flight), so two are kept; older ones are destroyed.
 */
export class AppSessionKeys {
  private readonly generations = new Map<number, Generation>();
  private newest = -1;

  constructor(
    readonly appId: string,
    private readonly limits: Readonly<RotationLimits>,
    private readonly now: () => number = Date.now,
  ) {}

  /** True once a session key is held: from then on the app's traffic is sealed both ways. */
  get active(): boolean {
    return this.newest >= 0;
  }

  /** The generation the app announced; never one at or below the newest (a replayed or stale announcement). */
  install(index: number, key: Uint8Array): void {
    if (!Number.isInteger(index) || index <= this.newest || index > 0xffffffff)
      throw new AppSessionError('malformed', `key_index ${index} is not above ${this.newest}`);
    this.generations.set(index, {
      key: new EnvelopeKey(key),
      replay: new ReplayWindow(),
      nextSeq: 0,
      messages: 0,
      bytes: 0,
      installedAt: this.now(),
      told: false,
    });
    this.newest = index;
    for (const [i, g] of this.generations)
      if (i < index && i !== this.previous(index)) {
        g.key.destroy();
        this.generations.delete(i);
      }
  }

  /** The generation below `index` still held, if any. */
  private previous(index: number): number | undefined {
    let best: number | undefined;
    for (const i of this.generations.keys()) if (i < index && (best === undefined || i > best)) best = i;
    return best;
  }

  /** Opens an app-up envelope (§5 order: framing, key, replay, tag); throws ProtocolError or AppSessionError. */
  open(envelope: Uint8Array, topic: string, maxPayload?: number): Uint8Array {
    const parsed = parseEnvelope(envelope, maxPayload === undefined ? {} : { maxPayload });
    const g = this.generations.get(parsed.keyIndex);
    if (!g) throw new AppSessionError('foreign_key', `no session key of generation ${parsed.keyIndex}`);
    if (this.spent(g)) throw new AppSessionError('key_spent', `generation ${parsed.keyIndex} is past its limits`);
    const { payload } = openEnvelope(parsed, {
      key: g.key,
      deviceId: this.appId,
      topic,
      direction: 'app-up',
      replay: g.replay,
    });
    g.messages++;
    g.bytes += payload.length;
    return payload;
  }

  /** Seals a delivery under the newest key; undefined when there is none or this one does not fit its limits. */
  seal(plaintext: Uint8Array, topic: string, maxPayload?: number): Uint8Array | undefined {
    const g = this.generations.get(this.newest);
    if (!g || !this.fits(g, plaintext.length)) return undefined;
    const seq = g.nextSeq++;
    g.messages++;
    g.bytes += plaintext.length;
    return sealEnvelope(plaintext, {
      key: g.key,
      keyIndex: this.newest,
      seq,
      deviceId: this.appId,
      topic,
      direction: 'app-down',
      ...(maxPayload === undefined ? {} : { maxPayload }),
    });
  }

  /** Can the newest key seal a delivery of `size` plaintext bytes now (one is held, and it fits its limits)? */
  canSeal(size = 0): boolean {
    const g = this.generations.get(this.newest);
    return g !== undefined && this.fits(g, size);
  }

  /**
   * The newest generation when the app should rotate away from it and has not been told (docs/PROTOCOL.md §22.6,
   * rotation notice): half of any limit used, so the other half covers the deliveries of the handshake, or no room
   * left for the `next` delivery of that many bytes. The caller marks it told (`told`) once the notice is written.
   */
  rotationDue(next = 0): number | undefined {
    const g = this.generations.get(this.newest);
    if (!g || g.told) return undefined;
    const { messages, bytes, seconds } = this.limits;
    const half =
      g.messages * 2 >= messages || g.bytes * 2 >= bytes || (this.now() - g.installedAt) * 2 >= seconds * 1000;
    if (!half && this.fits(g, next)) return undefined;
    return this.newest;
  }

  /** The app was sent the rotation notice for generation `index`: rotationDue stays quiet about it. */
  told(index: number): void {
    const g = this.generations.get(index);
    if (g) g.told = true;
  }

  /** A key past any rotation limit (docs/PROTOCOL.md §17) seals and opens nothing more: the app must rotate. */
  private spent(g: Generation): boolean {
    return (
      g.messages >= this.limits.messages ||
      g.bytes >= this.limits.bytes ||
      this.now() - g.installedAt >= this.limits.seconds * 1000
    );
  }

  /**
   * Does a delivery of `size` plaintext bytes fit under this key: below its message count and age, within its
   * sequence space, and within its bytes once added (as §17 has a sender do: a message that would cross the byte
   * limit goes under the next key)? A key that has carried nothing takes one message larger than the whole limit,
   * which would otherwise fit under no key at all.
   */
  private fits(g: Generation, size: number): boolean {
    if (this.spent(g) || g.nextSeq > MAX_SEQ) return false;
    return g.bytes === 0 || g.bytes + size <= this.limits.bytes;
  }

  destroy(): void {
    for (const g of this.generations.values()) g.key.destroy();
    this.generations.clear();
  }
}
