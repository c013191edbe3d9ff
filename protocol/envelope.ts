// The payload envelope shared by the security chip and the broker: layout, nonce, AAD, seal, parse and open.
// Normative description: docs/PROTOCOL.md. Section numbers below refer to it.
import { abytes, aint, clean, utf8Bytes } from './_bytes.js';
import { type BackendChoice, type BlockCipher, type CryptoBackend, getBackend, SM4_KEY_LENGTH } from './backend.js';
import { ArgumentError, ProtocolError } from './errors.js';
import type { ReplayWindow } from './replay-window.js';
import { createSuiteKey, isSuiteId, SUITE_SM4_GCM, type SuiteId, type SuiteKey, TAG_LENGTH } from './suites.js';

export const ENVELOPE_VERSION = 0x01;
/** §2: version (1) | suite (1) | key index (4) | sequence number (4). */
export const HEADER_LENGTH = 10;
/** §2: bytes an envelope adds to the payload. */
export const ENVELOPE_OVERHEAD = HEADER_LENGTH + TAG_LENGTH;
/** §6: the default limit on payload size; brokers and chips may configure another up to MAX_PAYLOAD_LIMIT. */
export const DEFAULT_MAX_PAYLOAD = 256 * 1024;
export const MAX_PAYLOAD_LIMIT = 16 * 1024 * 1024;
export const MAX_KEY_INDEX = 0xffffffff;
export const MAX_SEQ = 0xffffffff;
const MAX_FIELD_BYTES = 0xffff;

/**
 * §2: `up` device to broker, `down` broker to device, `will` a device's will sealed at CONNECT (§9); `app-up`
 * application to broker and `app-down` broker to application, under an application session key (§22.5);
 * `e2e-down` application to device on an end-to-end topic, under the device's end-to-end uplink key (§23.4).
 */
export type Direction = 'up' | 'down' | 'will' | 'app-up' | 'app-down' | 'e2e-down';
/**
 * §3: direction codes; they also keep the nonces of the directions apart under one key, and (in the AAD) keep
 * device and application traffic apart: a device envelope never opens as an application's, nor the reverse.
 */
export const DIRECTION_CODES: Readonly<Record<Direction, number>> = {
  up: 0x01,
  down: 0x02,
  will: 0x03,
  'app-up': 0x04,
  'app-down': 0x05,
  'e2e-down': 0x06,
};

export interface EnvelopeHeader {
  version: number;
  suite: SuiteId;
  keyIndex: number;
  seq: number;
}

export interface ParsedEnvelope extends EnvelopeHeader {
  /** The first HEADER_LENGTH bytes exactly as received (they are authenticated as part of the AAD). */
  headerBytes: Uint8Array;
  ciphertext: Uint8Array;
  tag: Uint8Array;
}

/**
 * An SM4 key prepared for the envelope: key schedule and per-suite state (GHASH table, subkeys) are computed
 * once here, not per message. Call destroy() when the key is retired.
 */
export class EnvelopeKey {
  readonly backend: CryptoBackend;
  /** A copy of the key until the first suite needs it (or destroy() wipes it). */
  private key: Uint8Array | undefined;
  private cipher: BlockCipher | undefined;
  private readonly suites = new Map<SuiteId, SuiteKey>();
  /** AAD templates by (direction, device, topic); a key serves one device and direction, so few topics. */
  private readonly aadTemplates = new Map<string, Uint8Array>();
  /** The most recent context: a session publishes to the same topic most of the time. */
  private lastAad: { direction: Direction; deviceId: string; topic: string; bytes: Uint8Array } | undefined;

  constructor(key: Uint8Array, backend: CryptoBackend | BackendChoice = 'auto') {
    abytes(key, 'key', SM4_KEY_LENGTH);
    this.backend = typeof backend === 'string' ? getBackend(backend) : backend;
    this.key = Uint8Array.from(key);
  }

  suite(id: SuiteId): SuiteKey {
    let state = this.suites.get(id);
    if (!state) {
      if (!this.key) throw new ArgumentError('envelope key has been destroyed');
      const key = this.key;
      state = createSuiteKey(id, key, this.backend, () => (this.cipher ??= this.backend.createBlockCipher(key)));
      this.suites.set(id, state);
    }
    return state;
  }

  /**
   * The AAD for this context with `headerBytes` written in. The returned array is reused by the next call on this
   * key; seal and open consume it synchronously.
   */
  aad(headerBytes: Uint8Array, direction: Direction, deviceId: string, topic: string): Uint8Array {
    const last = this.lastAad;
    if (last && last.topic === topic && last.deviceId === deviceId && last.direction === direction) {
      last.bytes.set(headerBytes, 0);
      return last.bytes;
    }
    // U+0000 cannot occur in MQTT client ids or topic names [MQTT-1.5.3-2], so the cache key is unambiguous.
    const id = `${direction}\u0000${deviceId}\u0000${topic}`;
    let template = this.aadTemplates.get(id);
    if (template) {
      this.aadTemplates.delete(id);
    } else {
      template = buildAad(headerBytes, direction, deviceId, topic);
      if (this.aadTemplates.size >= AAD_CACHE_ENTRIES) {
        this.aadTemplates.delete(this.aadTemplates.keys().next().value as string);
      }
    }
    this.aadTemplates.set(id, template);
    this.lastAad = { direction, deviceId, topic, bytes: template };
    template.set(headerBytes, 0);
    return template;
  }

  destroy(): void {
    for (const s of this.suites.values()) s.destroy();
    this.suites.clear();
    this.aadTemplates.clear();
    this.lastAad = undefined;
    this.cipher = undefined;
    if (this.key) clean(this.key);
    this.key = undefined;
  }
}

const AAD_CACHE_ENTRIES = 8;

function toKey(key: EnvelopeKey | Uint8Array, backend?: CryptoBackend | BackendChoice): EnvelopeKey {
  return key instanceof EnvelopeKey ? key : new EnvelopeKey(key, backend);
}

export interface EnvelopeContext {
  /** The device the envelope belongs to (the MQTT client id), or for `app-up`/`app-down` the application id (§22.5). */
  deviceId: string;
  /** The MQTT topic the envelope is published on, bound into the AAD. */
  topic: string;
  direction: Direction;
  /** Largest payload accepted or produced; defaults to DEFAULT_MAX_PAYLOAD. */
  maxPayload?: number;
  /** Backend for a raw key; ignored when `key` is an EnvelopeKey. */
  backend?: CryptoBackend | BackendChoice;
}

export interface SealParams extends EnvelopeContext {
  key: EnvelopeKey | Uint8Array;
  keyIndex: number;
  seq: number;
  suite?: SuiteId;
}

export interface OpenParams extends EnvelopeContext {
  key: EnvelopeKey | Uint8Array;
  /** Checked before decryption and updated only after the tag verifies (§5). */
  replay?: ReplayWindow;
  /** Suites this receiver accepts; default: all. */
  allowedSuites?: readonly SuiteId[];
}

function maxPayloadOf(ctx: { maxPayload?: number | undefined }): number {
  return ctx.maxPayload === undefined ? DEFAULT_MAX_PAYLOAD : aint(ctx.maxPayload, 'maxPayload', 1, MAX_PAYLOAD_LIMIT);
}

function directionCode(direction: Direction): number {
  const code = Object.hasOwn(DIRECTION_CODES, direction) ? DIRECTION_CODES[direction] : undefined;
  if (code === undefined)
    throw new ArgumentError("direction must be 'up', 'down', 'will', 'app-up', 'app-down' or 'e2e-down'");
  return code;
}

/** Big-endian uint32, as every integer in the header and nonce (§2, §3). */
function writeU32(out: Uint8Array, offset: number, value: number): void {
  out[offset] = value >>> 24;
  out[offset + 1] = (value >>> 16) & 0xff;
  out[offset + 2] = (value >>> 8) & 0xff;
  out[offset + 3] = value & 0xff;
}

function readU32(bytes: Uint8Array, offset: number): number {
  return ((bytes[offset]! << 24) | (bytes[offset + 1]! << 16) | (bytes[offset + 2]! << 8) | bytes[offset + 3]!) >>> 0;
}

/** §2: writes the 10-byte header at the start of `out`. */
function writeHeader(out: Uint8Array, suite: number, keyIndex: number, seq: number): void {
  if (!isSuiteId(suite)) throw new ProtocolError('PROTO_ERR_SUITE', `suite ${suite}`);
  out[0] = ENVELOPE_VERSION;
  out[1] = suite;
  writeU32(out, 2, aint(keyIndex, 'keyIndex', 0, MAX_KEY_INDEX));
  writeU32(out, 6, aint(seq, 'seq', 0, MAX_SEQ));
}

/** §2: the 10-byte header. */
export function encodeHeader(header: Omit<EnvelopeHeader, 'version'>): Uint8Array {
  const out = new Uint8Array(HEADER_LENGTH);
  writeHeader(out, header.suite, header.keyIndex, header.seq);
  return out;
}

/** §3: nonce = direction (1) | 0x000000 (3) | key index (4, BE) | sequence number (4, BE). */
export function buildNonce(direction: Direction, keyIndex: number, seq: number): Uint8Array {
  const nonce = new Uint8Array(12);
  nonce[0] = directionCode(direction);
  writeU32(nonce, 4, aint(keyIndex, 'keyIndex', 0, MAX_KEY_INDEX));
  writeU32(nonce, 8, aint(seq, 'seq', 0, MAX_SEQ));
  return nonce;
}

function encodeField(text: string, name: string): Uint8Array {
  if (typeof text !== 'string' || text.length === 0) throw new ArgumentError(`${name} must be a non-empty string`);
  const bytes = utf8Bytes(text);
  if (bytes.length > MAX_FIELD_BYTES) throw new ArgumentError(`${name} must be at most 65535 UTF-8 bytes`);
  return bytes;
}

/**
 * §4: AAD = header (10) | direction (1) | len(deviceId) (2, BE) | deviceId (UTF-8) | len(topic) (2, BE) | topic (UTF-8).
 * Binds version, suite, key index and sequence number (through the header), direction, device and topic.
 */
export function buildAad(headerBytes: Uint8Array, direction: Direction, deviceId: string, topic: string): Uint8Array {
  abytes(headerBytes, 'header', HEADER_LENGTH);
  const device = encodeField(deviceId, 'deviceId');
  const topicBytes = encodeField(topic, 'topic');
  const aad = new Uint8Array(HEADER_LENGTH + 1 + 2 + device.length + 2 + topicBytes.length);
  const view = new DataView(aad.buffer);
  let o = 0;
  aad.set(headerBytes, o);
  o += HEADER_LENGTH;
  aad[o++] = directionCode(direction);
  view.setUint16(o, device.length);
  o += 2;
  aad.set(device, o);
  o += device.length;
  view.setUint16(o, topicBytes.length);
  o += 2;
  aad.set(topicBytes, o);
  return aad;
}

/** True for the payloads that must pass through unsealed: the empty payload, MQTT's retained-message delete marker. */
export function isPassthroughPayload(payload: Uint8Array): boolean {
  return payload.length === 0;
}

/** Seals `payload` into an envelope (§2-§4). Throws PROTO_ERR_EMPTY for an empty payload: send that as is. */
export function sealEnvelope(payload: Uint8Array, params: SealParams): Uint8Array {
  abytes(payload, 'payload');
  if (payload.length === 0) throw new ProtocolError('PROTO_ERR_EMPTY');
  const max = maxPayloadOf(params);
  if (payload.length > max) throw new ProtocolError('PROTO_ERR_TOO_LARGE', `${payload.length} > ${max} bytes`);
  const suite = params.suite ?? SUITE_SM4_GCM;
  const out = new Uint8Array(HEADER_LENGTH + payload.length + TAG_LENGTH);
  writeHeader(out, suite, params.keyIndex, params.seq);
  const nonce = buildNonce(params.direction, params.keyIndex, params.seq);
  const key = toKey(params.key, params.backend);
  try {
    const aad = key.aad(out.subarray(0, HEADER_LENGTH), params.direction, params.deviceId, params.topic);
    key.suite(suite).sealInto(out, HEADER_LENGTH, nonce, aad, payload);
    return out;
  } finally {
    if (key !== params.key) key.destroy();
  }
}

/** Parses the framing without any key (§2, §6): what a receiver needs to find the key by its index. */
export function parseEnvelope(envelope: Uint8Array, options: { maxPayload?: number } = {}): ParsedEnvelope {
  abytes(envelope, 'envelope');
  if (envelope.length < ENVELOPE_OVERHEAD + 1) {
    throw new ProtocolError('PROTO_ERR_TRUNCATED', `${envelope.length} bytes`);
  }
  const version = envelope[0] as number;
  if (version !== ENVELOPE_VERSION) throw new ProtocolError('PROTO_ERR_VERSION', `version ${version}`);
  const suite = envelope[1] as number;
  if (!isSuiteId(suite)) throw new ProtocolError('PROTO_ERR_SUITE', `suite ${suite}`);
  const max = maxPayloadOf(options);
  const payloadLength = envelope.length - ENVELOPE_OVERHEAD;
  if (payloadLength > max) throw new ProtocolError('PROTO_ERR_TOO_LARGE', `${payloadLength} > ${max} bytes`);
  const { buffer, byteOffset } = envelope;
  // Plain Uint8Array views, also when the envelope is a Buffer: Buffer#subarray constructs through Buffer's species
  // (a measurable share of the broker's per-message work at 10,000 messages a second).
  const bytes = (start: number, length: number) => new Uint8Array(buffer, byteOffset + start, length);
  return {
    version,
    suite,
    keyIndex: readU32(envelope, 2), // §2: key index at offset 2, sequence number at 6
    seq: readU32(envelope, 6),
    headerBytes: bytes(0, HEADER_LENGTH),
    ciphertext: bytes(HEADER_LENGTH, payloadLength),
    tag: bytes(HEADER_LENGTH + payloadLength, TAG_LENGTH),
  };
}

/**
 * Opens an envelope (§5): framing, suite policy, replay check, tag verification in constant time, then
 * decryption; the replay window is updated only after the tag verified.
 */
export function openEnvelope(
  envelope: Uint8Array | ParsedEnvelope,
  params: OpenParams,
): { header: EnvelopeHeader; payload: Uint8Array } {
  const parsed = envelope instanceof Uint8Array ? parseEnvelope(envelope, params) : envelope;
  if (params.allowedSuites && !params.allowedSuites.includes(parsed.suite)) {
    throw new ProtocolError('PROTO_ERR_SUITE', `suite ${parsed.suite} not allowed here`);
  }
  params.replay?.check(parsed.seq);
  const nonce = buildNonce(params.direction, parsed.keyIndex, parsed.seq);
  const key = toKey(params.key, params.backend);
  let payload: Uint8Array | undefined;
  try {
    const aad = key.aad(parsed.headerBytes, params.direction, params.deviceId, params.topic);
    payload = key.suite(parsed.suite).open(nonce, aad, parsed.ciphertext, parsed.tag);
  } finally {
    if (key !== params.key) key.destroy();
    clean(nonce);
  }
  if (!payload) throw new ProtocolError('PROTO_ERR_TAG');
  params.replay?.accept(parsed.seq);
  const { version, suite, keyIndex, seq } = parsed;
  return { header: { version, suite, keyIndex, seq }, payload };
}
