// The emulated security chip: holds a device's login key and key pools in a sealed file; keys never leave it.
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import {
  assertDeviceId,
  chooseSuite,
  EnvelopeKey,
  isPassthroughPayload,
  loginProof,
  MAX_SEQ,
  openEnvelope,
  ReplayWindow,
  sealEnvelope,
  type SuiteId,
  SUITE_SM4_CTR_HMAC_SM3,
  SUITE_SM4_GCM,
} from '../protocol/index.js';
import { ChipError } from './chip-errors.js';
import { FactoryBatchError, inspectFactoryBatch, openFactoryBatch } from './factory-batch.js';
import { isSm2PublicKey, type Sm2KeyPair, sm2KeyPair } from './sm2.js';
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
  /** Highest downlink key index opened so far (absent: none); lower keys are stale and erased at session start. */
  downHigh?: number;
  /** The uplink key of the current session, taken out of the pool before first use. */
  current: (StoredKey & { seqReserved: number }) | null;
  /**
   * The current session's end-to-end uplink key (docs/PROTOCOL.md §23.2): messages on end-to-end topics are sealed
   * under a key of their own, never the one a broker opens. Absent in files written before it existed: none.
   */
  currentE2e?: (StoredKey & { seqReserved: number }) | null;
  nextKeyIndex: number;
  /** Fill batches loaded, in order, with how many keys each brought. */
  batches: Array<{ id: string; up: number; down: number }>;
  sessions: number;
  /** Envelope suites this chip can run (a chip without GHASH: SM4-CTR-HMAC-SM3 only). */
  suites: SuiteId[];
  /** SM2 transport key pair, generated inside the chip at personalisation; fill batches are sealed for it. */
  transport: Sm2KeyPair;
  /** The key issuer whose signature fill batches must carry (pinned at personalisation or by the first batch). */
  issuer: string | null;
  /** A fill started and not yet finished: a rerun of the filling machine completes it. */
  fill: FillPlan | null;
}

/** What a fill promised to load, recorded on the chip before its first batch (docs/ARCHITECTURE.md, filling). */
export interface FillPlan {
  id: string;
  up: number;
  down: number;
  loginKey: boolean;
}

export interface RotationPolicy {
  /** Move to the next uplink key after this many messages under one key. */
  messages: number;
  /** ... or this many payload bytes. */
  bytes: number;
}

/** docs/PROTOCOL.md §17: the chip moves to its next uplink key after this many messages or payload bytes. */
export const DEFAULT_UPLINK_ROTATION: Readonly<RotationPolicy> = Object.freeze({
  messages: 10_000,
  bytes: 16 * 1024 * 1024,
});

export interface ChipOptions {
  rotation?: Partial<RotationPolicy>;
  suite?: SuiteId;
  /** Test hook: called at named points so tests can simulate a crash there by throwing. */
  crashPoint?: (point: 'after-reserve' | 'after-take-key') => void;
  /** Test hook: called after the PIN attempt is counted on disk and before the PIN is checked. */
  pinCrashPoint?: () => void;
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
  /** The current session; keyIndex is null until its first seal takes a key. */
  session: { keyIndex: number | null; seq: number } | null;
  /** Envelope suite ids the chip supports. */
  suites: SuiteId[];
  /** The chip's SM2 transport public key (04 || x || y, hex): what fill batches are sealed for. */
  transportKey: string;
  /** The pinned key issuer's SM2 public key, or null before the first fill. */
  issuer: string | null;
  /** The fill in progress, with what its batches on this chip have loaded so far. */
  fill: (FillPlan & { loaded: { up: number; down: number; loginKey: boolean } }) | null;
}

const ALL_SUITES: readonly SuiteId[] = [SUITE_SM4_GCM, SUITE_SM4_CTR_HMAC_SM3];

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

function batchError(err: unknown): ChipError {
  if (err instanceof FactoryBatchError) return new ChipError('CHIP_ERR_BATCH', err.message);
  throw err;
}
const unhex = (s: string) => Uint8Array.from(Buffer.from(s, 'hex'));

/**
 * Which uplink key a message is sealed under (docs/PROTOCOL.md §23.2): the session's `broker` key, which the broker
 * claims and opens, or its `end-to-end` key, which only the application named by the topic's policy claims.
 */
export type UplinkChannel = 'broker' | 'end-to-end';

/** The uplink key a session seals under, and how far it has used it. */
interface UplinkInUse {
  key: EnvelopeKey;
  index: number;
  seq: number;
  bytes: number;
}

export class SecurityChip {
  private readonly rotation: RotationPolicy;
  private readonly suite: SuiteId;
  /** The current session: its uplink key once the first seal took one (docs/PROTOCOL.md §9.1), never before. */
  private session: {
    id: string;
    uplink: UplinkInUse | null;
    /** The end-to-end channel's key (§23.2), taken at its first seal like the broker channel's. */
    e2e?: UplinkInUse | null;
    /**
     * The end-to-end keys of this session that open commands (§23.4): the current one and the one before it (a
     * command sealed just before a rotation), each with its replay window; erased with the session.
     */
    e2eOpen?: Map<number, { key: EnvelopeKey; replay: ReplayWindow }>;
    willSealed?: boolean;
  } | null = null;
  private readonly downKeys = new Map<number, { key: EnvelopeKey; replay: ReplayWindow }>();

  private constructor(
    readonly path: string,
    private state: ChipState,
    private readonly sealing: SealingMaterial,
    private readonly options: ChipOptions,
  ) {
    this.rotation = { ...DEFAULT_UPLINK_ROTATION, ...options.rotation };
    this.suite = options.suite ?? chooseSuite(state.suites) ?? SUITE_SM4_GCM;
    this.persist(); // a fresh file salt, and the failed-attempt count back to 0
  }

  /** Personalises a new, empty chip for `deviceId`, protected by `pin`. Refuses to overwrite a chip file. */
  static create(
    path: string,
    init: {
      deviceId: string;
      serial?: string;
      pin: string;
      kdfIterations?: number;
      /** Envelope suites the chip runs; default both. `[2]` emulates a chip without GHASH. */
      suites?: readonly SuiteId[];
      /** The key issuer's SM2 public key; default: trust the issuer of the first fill batch. */
      issuer?: string;
    },
    options: ChipOptions = {},
  ): SecurityChip {
    if (existsSync(path)) throw new ChipError('CHIP_ERR_EXISTS', `a chip file already exists at ${path}`);
    assertDeviceId(init.deviceId); // docs/PROTOCOL.md §14: a chip is personalised only for an id the system accepts
    if (init.pin.length < 4) throw new RangeError('the PIN must have at least 4 characters');
    const suites = [...new Set(init.suites ?? ALL_SUITES)].sort();
    if (suites.length === 0 || suites.some((s) => !ALL_SUITES.includes(s)))
      throw new RangeError('suites must be a non-empty subset of 1 (SM4-GCM) and 2 (SM4-CTR-HMAC-SM3)');
    if (init.issuer !== undefined && !isSm2PublicKey(init.issuer))
      throw new RangeError('the issuer key must be an SM2 public key: 04 || x || y in hex');
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
      suites,
      transport: sm2KeyPair(),
      issuer: init.issuer ?? null,
      fill: null,
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
      session: this.session
        ? { keyIndex: this.session.uplink?.index ?? null, seq: this.session.uplink?.seq ?? 0 }
        : null,
      suites: [...this.state.suites],
      transportKey: this.state.transport.publicKey,
      issuer: this.state.issuer,
      fill: this.state.fill && { ...this.state.fill, loaded: this.loadedBy(this.state.fill.id) },
    };
  }

  hasBatch(batchId: string): boolean {
    return this.state.batches.some((b) => b.id === batchId);
  }

  /** Whether any batch of fill `fillId` is loaded. */
  hasFill(fillId: string): boolean {
    return this.state.batches.some((b) => b.id === fillId || b.id.startsWith(`${fillId}.`));
  }

  /** What the batches of fill `fillId` (ids `<fillId>` and `<fillId>.<n>`) have loaded into this chip. */
  private loadedBy(fillId: string): { up: number; down: number; loginKey: boolean } {
    const mine = this.state.batches.filter((b) => b.id === fillId || b.id.startsWith(`${fillId}.`));
    return {
      up: mine.reduce((n, b) => n + b.up, 0),
      down: mine.reduce((n, b) => n + b.down, 0),
      loginKey: this.state.loginKey !== null && mine.length > 0,
    };
  }

  /** Records a fill's plan before its first batch, so that a rerun after a crash can finish it (one file write). */
  beginFill(plan: FillPlan): void {
    if (this.state.fill && this.state.fill.id !== plan.id)
      throw new ChipError('CHIP_ERR_FILL', `fill ${this.state.fill.id} is still in progress on this chip`);
    this.commit({ ...structuredClone(this.state), fill: { ...plan } });
  }

  /** Marks the fill in progress done (or abandoned): its loaded batches stay. */
  endFill(): void {
    if (this.state.fill) this.commit({ ...structuredClone(this.state), fill: null });
  }

  /**
   * Loads a factory batch (docs/PROTOCOL.md §21), all or nothing (one atomic file write); idempotent by batch id.
   * The batch must name this device, be sealed for this chip's transport key, carry the trusted issuer's signature
   * and continue the chip's key indices.
   */
  importBatch(sealed: Uint8Array): 'applied' | 'already-applied' {
    let info;
    try {
      info = inspectFactoryBatch(sealed);
    } catch (err) {
      throw batchError(err);
    }
    if (info.deviceId !== this.state.deviceId)
      throw new ChipError('CHIP_ERR_BATCH', `batch is for ${info.deviceId}, not ${this.state.deviceId}`);
    if (this.state.issuer !== null && info.issuer !== this.state.issuer)
      throw new ChipError('CHIP_ERR_BATCH', 'batch is signed by an issuer this chip does not trust');
    if (this.hasBatch(info.batchId)) return 'already-applied';
    let batch;
    try {
      batch = openFactoryBatch(sealed, this.state.transport);
    } catch (err) {
      throw batchError(err);
    }
    try {
      const held = new Set([...this.state.up, ...this.state.down].map((k) => k.i));
      if (this.state.current) held.add(this.state.current.i);
      const count = batch.up.length + batch.down.length;
      for (let i = batch.firstIndex; i < batch.firstIndex + count; i++) {
        if (held.has(i) || i < this.state.nextKeyIndex)
          throw new ChipError('CHIP_ERR_FILL', `key index ${i} is already used in this chip`);
      }
      const next = structuredClone(this.state);
      batch.up.forEach((k, i) => next.up.push({ i: batch.firstIndex + i, k: hex(k) }));
      batch.down.forEach((k, i) => next.down.push({ i: batch.firstIndex + batch.up.length + i, k: hex(k) }));
      next.up.sort((a, b) => a.i - b.i);
      next.down.sort((a, b) => a.i - b.i);
      if (batch.loginKey) next.loginKey = hex(batch.loginKey);
      if (count > 0) next.nextKeyIndex = Math.max(next.nextKeyIndex, batch.firstIndex + count);
      next.batches.push({ id: batch.batchId, up: batch.up.length, down: batch.down.length });
      next.issuer = batch.issuer;
      this.commit(next);
      return 'applied';
    } finally {
      for (const k of [...batch.up, ...batch.down]) k.fill(0);
      batch.loginKey?.fill(0);
    }
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
   * Starts a session (docs/PROTOCOL.md §9.1): call it for every new MQTT connection. It takes no key: the first seal
   * of the session takes the next unused uplink key, so a connection that carries no envelope spends none. The key
   * of an earlier session is abandoned for good, and downlink keys used in earlier sessions are erased, since no key
   * serves two sessions.
   */
  beginSession(): { sessionId: string } {
    this.endSession();
    const next = structuredClone(this.state);
    next.down = next.down.filter((k) => !next.downUsed.includes(k.i) && k.i >= (next.downHigh ?? -1));
    next.downUsed = [];
    next.sessions++;
    next.current = null;
    next.currentE2e = null;
    this.commit(next);
    this.downKeys.forEach((d) => d.key.destroy());
    this.downKeys.clear();
    const id = randomUUID();
    this.session = { id, uplink: null };
    return { sessionId: id };
  }

  endSession(): void {
    this.session?.uplink?.key.destroy();
    this.session?.e2e?.key.destroy();
    this.session?.e2eOpen?.forEach((k) => k.key.destroy());
    this.session = null;
  }

  /**
   * Seals an uplink payload for `topic` under the session key (docs/PROTOCOL.md §9.1), taking one at the session's
   * first seal. Empty payloads are returned unchanged. Rotates to the next key after the rotation limit; reserves
   * sequence numbers durably before use.
   */
  sealUplink(payload: Uint8Array, topic: string, channel: UplinkChannel = 'broker'): Uint8Array {
    if (isPassthroughPayload(payload)) return payload;
    const s = this.session;
    if (!s) throw new ChipError('CHIP_ERR_NO_SESSION');
    const e2e = channel === 'end-to-end';
    const u = e2e ? s.e2e : s.uplink;
    if (!u || u.seq >= this.rotation.messages || u.bytes + payload.length > this.rotation.bytes || u.seq > MAX_SEQ) {
      this.takeNextUplinkKey(channel);
    }
    const cur = (e2e ? s.e2e : s.uplink)!;
    const current = (e2e ? this.state.currentE2e : this.state.current)!;
    if (cur.seq >= current.seqReserved) {
      const next = structuredClone(this.state);
      (e2e ? next.currentE2e : next.current)!.seqReserved = cur.seq + SEQ_RESERVATION;
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
   * Seals the will of the connection this session is about to make (docs/PROTOCOL.md §9.5): direction will, sequence
   * number 0, under the session's first uplink key (taken now), so the will commits to that key. Once per session,
   * before the first message: a second will under the same key and nonce would reuse the nonce. Empty payloads are
   * returned unchanged.
   */
  sealWill(payload: Uint8Array, topic: string): Uint8Array {
    if (isPassthroughPayload(payload)) return payload;
    const s = this.session;
    if (!s) throw new ChipError('CHIP_ERR_NO_SESSION');
    if (s.willSealed || s.uplink)
      throw new ChipError('CHIP_ERR_WILL', 'the will is sealed once, before the first message');
    this.takeNextUplinkKey();
    s.willSealed = true;
    const u = s.uplink!;
    return sealEnvelope(payload, {
      key: u.key,
      keyIndex: u.index,
      seq: 0,
      suite: this.suite,
      deviceId: this.state.deviceId,
      topic,
      direction: 'will',
    });
  }

  /**
   * Opens a downlink envelope for `topic` with the downlink key it names (docs/PROTOCOL.md §9.2); replays are refused,
   * and so is a key below the highest this chip has opened: brokers claim downlink keys in rising order, so a lower
   * one can only carry a stale command (sealed for a session this chip never saw). The key is recorded as used only
   * once an envelope under it authenticated: a forged envelope changes nothing on the chip.
   */
  openDownlink(envelope: Uint8Array, topic: string): Uint8Array {
    if (isPassthroughPayload(envelope)) return envelope;
    if (!this.session) throw new ChipError('CHIP_ERR_NO_SESSION');
    const index = envelope.length >= 6 ? Buffer.from(envelope).readUInt32BE(2) : -1;
    let entry = this.downKeys.get(index);
    const first = !entry;
    if (!entry) {
      const stored = this.state.down.find((k) => k.i === index);
      if (!stored) throw new ChipError('CHIP_ERR_UNKNOWN_KEY', `downlink key index ${index} is not in this chip`);
      if (index < (this.state.downHigh ?? -1))
        throw new ChipError('CHIP_ERR_STALE_KEY', `downlink key ${index} is below one already opened`);
      const raw = unhex(stored.k);
      entry = { key: new EnvelopeKey(raw), replay: new ReplayWindow() };
      raw.fill(0);
    }
    const payload = openEnvelope(envelope, {
      key: entry.key,
      deviceId: this.state.deviceId,
      topic,
      direction: 'down',
      replay: entry.replay,
      allowedSuites: this.state.suites, // a chip opens only what it can run
    }).payload;
    if (first) {
      this.downKeys.set(index, entry);
      const next = structuredClone(this.state);
      if (!next.downUsed.includes(index)) next.downUsed.push(index);
      next.downHigh = Math.max(next.downHigh ?? -1, index);
      this.commit(next);
    }
    return payload;
  }

  /**
   * Opens a command the application named by an end-to-end topic's policy sealed for `topic` (docs/PROTOCOL.md
   * §23.4): direction e2e-down, under an end-to-end uplink key of this session (the current one or the one before
   * it), which only this chip and that application hold. Replays are refused; a key of an earlier session is gone,
   * so a command sealed for one never opens in another. Nothing is written to the chip's file.
   */
  openEndToEnd(envelope: Uint8Array, topic: string): Uint8Array {
    if (isPassthroughPayload(envelope)) return envelope;
    if (!this.session) throw new ChipError('CHIP_ERR_NO_SESSION');
    const index = envelope.length >= 6 ? Buffer.from(envelope).readUInt32BE(2) : -1;
    const entry = this.session.e2eOpen?.get(index);
    if (!entry)
      throw new ChipError('CHIP_ERR_UNKNOWN_KEY', `key index ${index} is not an end-to-end key of this session`);
    return openEnvelope(envelope, {
      key: entry.key,
      deviceId: this.state.deviceId,
      topic,
      direction: 'e2e-down',
      replay: entry.replay,
      allowedSuites: this.state.suites,
    }).payload;
  }

  close(): void {
    this.endSession();
    this.downKeys.forEach((d) => d.key.destroy());
    this.downKeys.clear();
    this.sealing.pinKey.fill(0);
  }

  /**
   * Takes the lowest unused uplink key out of the pool for `channel`, on disk before it seals anything (§9.1). Both
   * channels take from the one pool in rising order, so each channel's indices rise on their own (§23.2).
   */
  private takeNextUplinkKey(channel: UplinkChannel = 'broker'): void {
    const s = this.session!;
    const next = structuredClone(this.state);
    const key = next.up.shift();
    if (!key) {
      this.endSession();
      throw new ChipError('CHIP_ERR_POOL_EMPTY', 'no unused uplink key left: re-fill the chip');
    }
    if (channel === 'end-to-end') next.currentE2e = { ...key, seqReserved: 0 };
    else next.current = { ...key, seqReserved: 0 };
    this.commit(next); // the key leaves the pool on disk before it seals anything
    this.options.crashPoint?.('after-take-key');
    const raw = unhex(key.k);
    const taken = { key: new EnvelopeKey(raw), index: key.i, seq: 0, bytes: 0 };
    raw.fill(0);
    if (channel === 'end-to-end') {
      s.e2e?.key.destroy();
      s.e2e = taken;
      // §23.4: the application commands under the key it claimed; keep this one and the one before it.
      const open = (s.e2eOpen ??= new Map());
      const rawOpen = unhex(key.k);
      open.set(key.i, { key: new EnvelopeKey(rawOpen), replay: new ReplayWindow() });
      rawOpen.fill(0);
      for (const i of [...open.keys()].sort((a, b) => b - a).slice(2)) {
        open.get(i)!.key.destroy();
        open.delete(i);
      }
    } else {
      s.uplink?.key.destroy();
      s.uplink = taken;
    }
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
