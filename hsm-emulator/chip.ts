// The emulated security chip: holds a device's login key and key pools in a sealed file; keys never leave it.
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import {
  EnvelopeKey,
  isPassthroughPayload,
  loginProof,
  MAX_SEQ,
  openEnvelope,
  ReplayWindow,
  sealEnvelope,
  type SuiteId,
  SUITE_SM4_GCM,
} from '../protocol/index.js';
import { ChipError } from './chip-errors.js';
import {
  DEFAULT_KDF_ITERATIONS,
  MAX_PIN_ATTEMPTS,
  newSealingMaterial,
  openBody,
  readSealedFile,
  type SealingMaterial,
  writeAttempts,
  writeSealedFile,
} from './chip-file.js';

/** Sequence numbers are reserved durably this many at a time, so a crash can skip numbers but never repeat one. */
export const SEQ_RESERVATION = 256;

interface StoredKey {
  i: number;
  k: string;
}

/** What the sealed file holds (hex strings for key bytes). */
interface ChipState {
  v: 2;
  deviceId: string;
  serial: string | null;
  loginKey: string | null;
  up: StoredKey[];
  down: StoredKey[];
  /** Downlink key indices used in the current or an earlier session; erased at the next session start. */
  downUsed: number[];
  /** The uplink key of the current session, taken out of the pool before first use. */
  current: (StoredKey & { seqReserved: number }) | null;
  nextKeyIndex: number;
  batches: string[];
  sessions: number;
}

export interface RotationPolicy {
  /** Move to the next uplink key after this many messages under one key. */
  messages: number;
  /** ... or this many payload bytes. */
  bytes: number;
}

export interface ChipOptions {
  rotation?: Partial<RotationPolicy>;
  suite?: SuiteId;
  /** Test hook: called at named points so tests can simulate a crash there by throwing. */
  crashPoint?: (point: 'after-reserve' | 'after-take-key') => void;
  /** Test hook: called after the PIN attempt is counted on disk and before the PIN is checked. */
  pinCrashPoint?: () => void;
}

export interface FillBatch {
  batchId: string;
  loginKey?: Uint8Array;
  keys: Array<{ index: number; direction: 'up' | 'down'; key: Uint8Array }>;
}

export interface ChipStatus {
  deviceId: string;
  serial: string | null;
  hasLoginKey: boolean;
  uplinkKeys: number;
  downlinkKeys: number;
  nextKeyIndex: number;
  batches: number;
  sessions: number;
  session: { keyIndex: number; seq: number } | null;
}

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const unhex = (s: string) => Uint8Array.from(Buffer.from(s, 'hex'));

export class SecurityChip {
  private readonly rotation: RotationPolicy;
  private readonly suite: SuiteId;
  private session: {
    id: string;
    key: EnvelopeKey;
    index: number;
    seq: number;
    bytes: number;
    willSealed?: boolean;
  } | null = null;
  private readonly downKeys = new Map<number, { key: EnvelopeKey; replay: ReplayWindow }>();

  private constructor(
    readonly path: string,
    private state: ChipState,
    private readonly sealing: SealingMaterial,
    private readonly options: ChipOptions,
  ) {
    this.rotation = { messages: 10_000, bytes: 16 * 1024 * 1024, ...options.rotation };
    this.suite = options.suite ?? SUITE_SM4_GCM;
    this.persist(); // a fresh file salt, and the failed-attempt count back to 0
  }

  /** Personalises a new, empty chip for `deviceId`, protected by `pin`. Refuses to overwrite a chip file. */
  static create(
    path: string,
    init: { deviceId: string; serial?: string; pin: string; kdfIterations?: number },
    options: ChipOptions = {},
  ): SecurityChip {
    if (existsSync(path)) throw new ChipError('CHIP_ERR_EXISTS', `a chip file already exists at ${path}`);
    if (init.pin.length < 4) throw new RangeError('the PIN must have at least 4 characters');
    const sealing = newSealingMaterial(init.pin, init.kdfIterations ?? DEFAULT_KDF_ITERATIONS);
    const state: ChipState = {
      v: 2,
      deviceId: init.deviceId,
      serial: init.serial ?? null,
      loginKey: null,
      up: [],
      down: [],
      downUsed: [],
      current: null,
      nextKeyIndex: 0,
      batches: [],
      sessions: 0,
    };
    return new SecurityChip(path, state, sealing, options);
  }

  /**
   * Opens a chip with its PIN. The file's MAC is checked first: damage anywhere is CHIP_ERR_TAMPERED and costs no
   * attempt. The attempt is then counted on disk before the PIN is checked, so stopping the chip once a wrong PIN
   * is noticed cannot save it; a correct PIN resets the count. Five wrong PINs lock the chip for good.
   */
  static open(path: string, pin: string, options: ChipOptions & { expectDevice?: string } = {}): SecurityChip {
    const file = readSealedFile(path);
    if (file.attempts >= MAX_PIN_ATTEMPTS) throw new ChipError('CHIP_ERR_LOCKED');
    const attempts = file.attempts + 1;
    writeAttempts(path, file, attempts);
    options.pinCrashPoint?.();
    const opened = openBody(file, pin);
    if (!opened) {
      if (attempts >= MAX_PIN_ATTEMPTS) throw new ChipError('CHIP_ERR_LOCKED', 'wrong PIN; the chip is now locked');
      throw new ChipError(
        'CHIP_ERR_PIN',
        `wrong PIN; ${MAX_PIN_ATTEMPTS - attempts} attempt(s) left before the chip locks`,
      );
    }
    const { pinKey, body } = opened;
    let state: ChipState;
    try {
      state = JSON.parse(body.toString('utf8')) as ChipState;
    } finally {
      body.fill(0);
    }
    if (state.v !== 2 || typeof state.deviceId !== 'string')
      throw new ChipError('CHIP_ERR_CORRUPT', 'unexpected chip state');
    const sealing = { kdfSalt: Buffer.from(file.kdfSalt), iterations: file.iterations, pinKey };
    if (options.expectDevice !== undefined && options.expectDevice !== state.deviceId) {
      new SecurityChip(path, state, sealing, options).close(); // the right PIN still resets the count
      throw new ChipError('CHIP_ERR_FOREIGN', `this chip belongs to ${state.deviceId}, not ${options.expectDevice}`);
    }
    return new SecurityChip(path, state, sealing, options);
  }

  get deviceId(): string {
    return this.state.deviceId;
  }

  status(): ChipStatus {
    return {
      deviceId: this.state.deviceId,
      serial: this.state.serial,
      hasLoginKey: this.state.loginKey !== null,
      uplinkKeys: this.state.up.length,
      downlinkKeys: this.state.down.length,
      nextKeyIndex: this.state.nextKeyIndex,
      batches: this.state.batches.length,
      sessions: this.state.sessions,
      session: this.session ? { keyIndex: this.session.index, seq: this.session.seq } : null,
    };
  }

  hasBatch(batchId: string): boolean {
    return this.state.batches.includes(batchId);
  }

  /** Loads a fill batch, all or nothing (one atomic file write). Idempotent by batch id. */
  applyFill(batch: FillBatch): 'applied' | 'already-applied' {
    if (this.hasBatch(batch.batchId)) return 'already-applied';
    const held = new Set([...this.state.up, ...this.state.down].map((k) => k.i));
    if (this.state.current) held.add(this.state.current.i);
    for (const k of batch.keys) {
      if (held.has(k.index) || k.index < this.state.nextKeyIndex) {
        throw new ChipError('CHIP_ERR_FILL', `key index ${k.index} is already used in this chip`);
      }
      if (k.key.length !== 16) throw new ChipError('CHIP_ERR_FILL', 'keys must be 16 bytes');
    }
    const next = structuredClone(this.state);
    for (const k of batch.keys) next[k.direction].push({ i: k.index, k: hex(k.key) });
    next.up.sort((a, b) => a.i - b.i);
    next.down.sort((a, b) => a.i - b.i);
    if (batch.loginKey) next.loginKey = hex(batch.loginKey);
    next.nextKeyIndex = Math.max(next.nextKeyIndex, ...batch.keys.map((k) => k.index + 1));
    next.batches.push(batch.batchId);
    this.commit(next);
    return 'applied';
  }

  /** HMAC-SM3 proof over a key-service challenge with the login key (docs/PROTOCOL.md §13). */
  loginProof(challenge: Uint8Array): Uint8Array {
    if (!this.state.loginKey) throw new ChipError('CHIP_ERR_NO_LOGIN_KEY');
    const key = unhex(this.state.loginKey);
    try {
      return loginProof(key, this.state.deviceId, challenge);
    } finally {
      key.fill(0);
    }
  }

  /**
   * Starts an MQTT session: takes the next unused uplink key out of the pool (durably, before any use) and erases
   * downlink keys used in earlier sessions, since no key serves two sessions.
   */
  beginSession(): { sessionId: string; keyIndex: number } {
    this.endSession();
    const next = structuredClone(this.state);
    next.down = next.down.filter((k) => !next.downUsed.includes(k.i));
    next.downUsed = [];
    next.sessions++;
    next.current = null;
    this.commit(next);
    this.downKeys.forEach((d) => d.key.destroy());
    this.downKeys.clear();
    const id = randomUUID();
    this.takeNextUplinkKey(id);
    return { sessionId: id, keyIndex: this.session!.index };
  }

  endSession(): void {
    this.session?.key.destroy();
    this.session = null;
  }

  /**
   * Seals an uplink payload for `topic` under the session key (docs/PROTOCOL.md §9). Empty payloads are returned
   * unchanged. Rotates to the next key after the rotation limit; reserves sequence numbers durably before use.
   */
  sealUplink(payload: Uint8Array, topic: string): Uint8Array {
    if (isPassthroughPayload(payload)) return payload;
    const s = this.session;
    if (!s) throw new ChipError('CHIP_ERR_NO_SESSION');
    if (s.seq >= this.rotation.messages || s.bytes + payload.length > this.rotation.bytes || s.seq > MAX_SEQ) {
      this.takeNextUplinkKey(s.id);
    }
    const cur = this.session!;
    const current = this.state.current!;
    if (cur.seq >= current.seqReserved) {
      const next = structuredClone(this.state);
      next.current!.seqReserved = cur.seq + SEQ_RESERVATION;
      this.commit(next);
      this.options.crashPoint?.('after-reserve');
    }
    const envelope = sealEnvelope(payload, {
      key: cur.key,
      keyIndex: cur.index,
      seq: cur.seq,
      suite: this.suite,
      deviceId: this.state.deviceId,
      topic,
      direction: 'up',
    });
    cur.seq++;
    cur.bytes += payload.length;
    return envelope;
  }

  /**
   * Seals the will of the connection this session is about to make (docs/PROTOCOL.md §9): direction will, sequence
   * number 0, under the session's first uplink key, so the will commits to that key. Once per session: a second
   * will under the same key and nonce would reuse the nonce. Empty payloads are returned unchanged.
   */
  sealWill(payload: Uint8Array, topic: string): Uint8Array {
    if (isPassthroughPayload(payload)) return payload;
    const s = this.session;
    if (!s) throw new ChipError('CHIP_ERR_NO_SESSION');
    if (s.willSealed || s.seq > 0)
      throw new ChipError('CHIP_ERR_WILL', 'the will is sealed once, before the first message');
    s.willSealed = true;
    return sealEnvelope(payload, {
      key: s.key,
      keyIndex: s.index,
      seq: 0,
      suite: this.suite,
      deviceId: this.state.deviceId,
      topic,
      direction: 'will',
    });
  }

  /** Opens a downlink envelope for `topic` with the downlink key it names; replays are refused. */
  openDownlink(envelope: Uint8Array, topic: string): Uint8Array {
    if (isPassthroughPayload(envelope)) return envelope;
    if (!this.session) throw new ChipError('CHIP_ERR_NO_SESSION');
    const index = envelope.length >= 6 ? Buffer.from(envelope).readUInt32BE(2) : -1;
    let entry = this.downKeys.get(index);
    if (!entry) {
      const stored = this.state.down.find((k) => k.i === index);
      if (!stored) throw new ChipError('CHIP_ERR_UNKNOWN_KEY', `downlink key index ${index} is not in this chip`);
      const raw = unhex(stored.k);
      entry = { key: new EnvelopeKey(raw), replay: new ReplayWindow() };
      raw.fill(0);
      this.downKeys.set(index, entry);
      if (!this.state.downUsed.includes(index)) {
        const next = structuredClone(this.state);
        next.downUsed.push(index);
        this.commit(next);
      }
    }
    return openEnvelope(envelope, {
      key: entry.key,
      deviceId: this.state.deviceId,
      topic,
      direction: 'down',
      replay: entry.replay,
    }).payload;
  }

  close(): void {
    this.endSession();
    this.downKeys.forEach((d) => d.key.destroy());
    this.downKeys.clear();
    this.sealing.pinKey.fill(0);
  }

  private takeNextUplinkKey(sessionId: string): void {
    const next = structuredClone(this.state);
    const key = next.up.shift();
    if (!key) {
      this.endSession();
      throw new ChipError('CHIP_ERR_POOL_EMPTY', 'no unused uplink key left: re-fill the chip');
    }
    next.current = { ...key, seqReserved: 0 };
    this.commit(next); // the key leaves the pool on disk before it seals anything
    this.options.crashPoint?.('after-take-key');
    this.session?.key.destroy();
    const raw = unhex(key.k);
    this.session = { id: sessionId, key: new EnvelopeKey(raw), index: key.i, seq: 0, bytes: 0 };
    raw.fill(0);
  }

  /** Writes `next` atomically, then adopts it: memory never runs ahead of the file. */
  private commit(next: ChipState): void {
    const body = Buffer.from(JSON.stringify(next));
    try {
      writeSealedFile(this.path, this.sealing, body);
    } finally {
      body.fill(0);
    }
    this.state = next;
  }

  private persist(): void {
    this.commit(this.state);
  }
}
