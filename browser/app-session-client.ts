// The browser's application-session client (docs/PROTOCOL.md §22), an ES module a page imports without a bundler:
// token login and SM2 challenge-response at the key service (fetch), the SM4 session key unwrapped from its SM2
// ciphertext (GB/T 32918.4), its announcement to the broker, and seal/open of the app's traffic over mqtt.js on
// WebSocket. It runs the same protocol/ modules as the Node client (device-sim/app-session.ts); only the crypto
// backend differs (browser/backend.ts). README "Applications in a browser" shows a page using it.
//
// The SM2 private key is the caller's: the page passes it in (from wherever it keeps it) and this module holds it in
// a private field, uses it for the signature and the unwrap, and never logs, sends or returns it. The app token comes
// either from the client secret (held the same way, for the logins a rotation needs once the token has expired) or,
// so that no long-lived secret sits in the page, from the caller's `token` function (e.g. the page's own server).
import mqtt, { type IClientPublishOptions, type IClientSubscribeOptions, type MqttClient } from 'mqtt';
import { APP_SESSION_TOPIC, challengeMessage, signChallenge, unwrapSessionKey } from '../protocol/app-session.js';
import { EnvelopeKey, openEnvelope, parseEnvelope, sealEnvelope } from '../protocol/envelope.js';
import { ReplayWindow } from '../protocol/replay-window.js';
import { followRotationNotices } from '../common/rotation-notices.js';
import type { SessionChallengeJson, SessionKeyJson } from '../kms-api/app-session-schemas.js';

export { unwrapSessionKey } from '../protocol/app-session.js';

export interface BrowserAppSessionOptions {
  /** The broker's WebSocket listener, ws:// or wss:// (wss:// off loopback: SECURITY.md). */
  brokerUrl: string;
  /** The key service's base URL; '' for the page's own origin (behind the same reverse proxy). */
  kmsUrl: string;
  /** The broker's id at the key service: the session key is issued for that broker alone. */
  brokerId: string;
  appId: string;
  /** The app's client secret; or instead `token`. */
  secret?: string;
  /** Instead of `secret`: a fresh app token (and its lifetime in seconds) whenever the client needs one. */
  token?: () => Promise<AppToken>;
  /** The app's SM2 key pair (hex); the public key is the one registered at the key service. */
  sm2: { privateKey: string; publicKey: string };
  /**
   * The MQTT client id is `<appId>/<clientName>` (docs/PROTOCOL.md §14). Default: `browser-` and 16 random hex digits,
   * so two tabs of one app do not take each other's connection over [MQTT-3.1.4-2].
   */
  clientName?: string;
  /** Envelopes sealed under one key before the client rotates on its own (keep it below the broker's limit). */
  rotateAfterMessages?: number;
}

export interface AppToken {
  access_token: string;
  expires_in: number;
}

/** A token this close to its expiry is replaced before a handshake (and the broker's CONNECT). */
const TOKEN_MARGIN_MS = 30_000;

/** A key-service answer other than success: the status and the error code, never a request body or secret. */
export class KmsRequestError extends Error {
  constructor(
    readonly status: number,
    readonly code: string | undefined,
    path: string,
  ) {
    super(`key service ${path}: HTTP ${status}${code ? ` ${code}` : ''}`);
    this.name = 'KmsRequestError';
  }
}

export type BrowserMessageHandler = (topic: string, plaintext: Uint8Array, envelope: Uint8Array) => void;

interface Generation {
  key: EnvelopeKey;
  /** What the broker sealed for this app under this key (app-down): a replayed envelope does not open twice. */
  replay: ReplayWindow;
  nextSeq: number;
}

function randomHex(bytes: number): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, '0')).join('');
}

function fromBase64(text: string): Uint8Array {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

function toBase64(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

async function post<T>(kmsUrl: string, path: string, body: unknown, token?: string): Promise<T> {
  const res = await fetch(`${kmsUrl}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(body),
    // Bearer tokens only: no cookie goes along, so no CORS credentials are needed (or allowed) for this API.
    credentials: 'omit',
  });
  if (!res.ok) {
    const err = (await res.json().catch(() => ({}))) as { error?: string; code?: string };
    throw new KmsRequestError(res.status, err.code ?? err.error, path);
  }
  return (await res.json()) as T;
}

/** Logs in with the secret, or asks the caller; refuses options that give both or neither. */
function tokenSource(o: BrowserAppSessionOptions): () => Promise<AppToken> {
  if ((o.secret === undefined) === (o.token === undefined)) throw new TypeError('give either secret or token');
  if (o.token) return o.token;
  const { appId, kmsUrl, secret } = o;
  return () =>
    post<AppToken>(kmsUrl, '/api/v1/auth/token', {
      grant_type: 'client_credentials',
      client_id: appId,
      client_secret: secret,
    });
}

export class BrowserAppSession {
  readonly #sm2: { privateKey: string; publicKey: string };
  readonly #login: () => Promise<AppToken>;
  #token: string;
  #tokenExpiresAt: number;
  readonly #generations = new Map<number, Generation>();
  #generation = -1;
  #rotating: Promise<void> | undefined;
  readonly #handlers: BrowserMessageHandler[] = [];
  /** Deliveries that did not open (forged, replayed, under an unknown key): counted, never passed on. */
  refused = 0;
  /** Handshakes the broker asked for (§22.6, rotation notice) that failed; each is retried (rotation-notices.ts). */
  rotationFailures = 0;
  readonly #onNotice = followRotationNotices({
    current: () => Math.max(this.#generation, ...this.#generations.keys()),
    alive: () => this.client.connected && !this.client.disconnecting,
    rotate: () => this.rotate(),
    failed: () => this.rotationFailures++,
  });

  private constructor(
    readonly client: MqttClient,
    private readonly o: Omit<BrowserAppSessionOptions, 'secret' | 'sm2' | 'token'>,
    sm2: { privateKey: string; publicKey: string },
    login: () => Promise<AppToken>,
    token: AppToken,
  ) {
    this.#sm2 = { ...sm2 };
    this.#login = login;
    this.#token = token.access_token;
    this.#tokenExpiresAt = Date.now() + token.expires_in * 1000;
    client.on('message', (topic, payload) =>
      topic === APP_SESSION_TOPIC ? this.#onNotice(payload) : void this.open(topic, payload),
    );
  }

  /** Logs in, connects over WebSocket, and completes the first handshake before resolving. */
  static async start(options: BrowserAppSessionOptions): Promise<BrowserAppSession> {
    const { secret: _secret, token: _token, sm2, ...o } = options;
    const login = tokenSource(options);
    const token = await login();
    const { access_token } = token;
    const client = await mqtt.connectAsync(o.brokerUrl, {
      clientId: `${o.appId}/${o.clientName ?? `browser-${randomHex(8)}`}`,
      username: o.appId,
      password: access_token,
      reconnectPeriod: 0,
      // mqtt.js offers the "mqtt" WebSocket subprotocol [MQTT-6.0.0-3]; the broker refuses any other.
      protocolVersion: 4,
    });
    const session = new BrowserAppSession(client, o, sm2, login, token);
    try {
      await session.rotate();
    } catch (err) {
      await client.endAsync(true);
      throw err;
    }
    return session;
  }

  /** The generation of the newest session key (0 for the first, one more per rotation). */
  get keyIndex(): number {
    return this.#generation;
  }

  /**
   * A new session key: challenge, SM2 signature over the §22.2 message, key unwrapped (§22.3) and announced to the
   * broker at QoS 1, whose PUBACK comes after it claimed the key (§22.6). The previous key stays for deliveries in
   * flight; older ones are wiped.
   */
  rotate(): Promise<void> {
    this.#rotating ??= this.#handshake().finally(() => (this.#rotating = undefined));
    return this.#rotating;
  }

  /** The app token, logged in again when it is about to expire (a connection outlives its token, §18). */
  async #freshToken(): Promise<string> {
    if (Date.now() > this.#tokenExpiresAt - TOKEN_MARGIN_MS) {
      const t = await this.#login();
      this.#token = t.access_token;
      this.#tokenExpiresAt = Date.now() + t.expires_in * 1000;
    }
    return this.#token;
  }

  async #handshake(): Promise<void> {
    const token = await this.#freshToken();
    const c = await post<SessionChallengeJson>(
      this.o.kmsUrl,
      '/api/v1/apps/session/challenge',
      { broker_id: this.o.brokerId },
      token,
    );
    // The key service names the ids the signature binds; a challenge for another app or broker is not signed.
    if (c.app_id !== this.o.appId || c.broker_id !== this.o.brokerId) throw new Error('challenge for another session');
    const message = challengeMessage({
      appId: c.app_id,
      kmeId: c.kme_id,
      brokerId: c.broker_id,
      challenge: fromBase64(c.challenge),
      expiresAt: c.expires_at,
    });
    const signature = signChallenge(message, this.#sm2.privateKey, this.#sm2.publicKey);
    const issued = await post<SessionKeyJson>(
      this.o.kmsUrl,
      '/api/v1/apps/session',
      { broker_id: this.o.brokerId, challenge: c.challenge, signature: toBase64(signature) },
      token,
    );
    const key = unwrapSessionKey(fromBase64(issued.wrapped_key), this.#sm2.privateKey);
    if (!key) throw new Error('the session key did not decrypt under this SM2 key');
    const index = this.#generation + 1;
    // Opens deliveries under the new key from now: the broker seals under it as soon as it has claimed it, before its
    // PUBACK arrives here (a held queue, §22.8, or deliveries after a rotation notice, §22.6). Sealing switches on
    // PUBACK; if the announcement fails, the key is dropped again.
    const generation = { key: new EnvelopeKey(key), replay: new ReplayWindow(), nextSeq: 0 };
    key.fill(0);
    this.#generations.set(index, generation);
    try {
      await this.client.publishAsync(APP_SESSION_TOPIC, JSON.stringify({ key_ID: issued.key_ID, key_index: index }), {
        qos: 1,
      });
    } catch (err) {
      this.#generations.delete(index);
      generation.key.destroy();
      throw err;
    }
    this.#generation = index;
    for (const [i, g] of this.#generations)
      if (i < index - 1) {
        g.key.destroy();
        this.#generations.delete(i);
      }
  }

  subscribe(filter: string | string[], options: IClientSubscribeOptions = { qos: 1 }): Promise<unknown> {
    return this.client.subscribeAsync(filter, options);
  }

  /** Seals (app-up) and publishes; rotates first when the current key has sealed its share. */
  async publish(topic: string, plaintext: string | Uint8Array, options: IClientPublishOptions = {}): Promise<void> {
    if (this.#generations.get(this.#generation)!.nextSeq >= (this.o.rotateAfterMessages ?? 5000)) await this.rotate();
    const bytes = typeof plaintext === 'string' ? new TextEncoder().encode(plaintext) : plaintext;
    // mqtt.js takes a string or its Buffer; a Uint8Array is written as the same bytes.
    await this.client.publishAsync(topic, this.seal(topic, bytes) as Parameters<MqttClient['publish']>[1], options);
  }

  /** The envelope alone (app-up, §22.5), for callers that publish it themselves. */
  seal(topic: string, plaintext: Uint8Array): Uint8Array {
    const g = this.#generations.get(this.#generation);
    if (!g) throw new Error('no session key');
    return sealEnvelope(plaintext, {
      key: g.key,
      keyIndex: this.#generation,
      seq: g.nextSeq++,
      deviceId: this.o.appId,
      topic,
      direction: 'app-up',
    });
  }

  onMessage(handler: BrowserMessageHandler): void {
    this.#handlers.push(handler);
  }

  /**
   * Opens a delivery (app-down) in the order of §5: framing, key by its generation, replay window, tag. Returns the
   * plaintext and passes it to the handlers, or counts the refusal and returns undefined. Empty payloads (MQTT's
   * retained-message delete marker) pass as they are.
   */
  open(topic: string, payload: Uint8Array): Uint8Array | undefined {
    let plaintext: Uint8Array;
    if (payload.length === 0) plaintext = payload;
    else
      try {
        const parsed = parseEnvelope(payload);
        const g = this.#generations.get(parsed.keyIndex);
        if (!g) throw new Error('unknown key');
        plaintext = openEnvelope(parsed, {
          key: g.key,
          deviceId: this.o.appId,
          topic,
          direction: 'app-down',
          replay: g.replay,
        }).payload;
      } catch {
        this.refused++;
        return undefined;
      }
    for (const h of this.#handlers) h(topic, plaintext, payload);
    return plaintext;
  }

  /** Ends the connection and wipes every session key. */
  async close(): Promise<void> {
    await this.client.endAsync();
    for (const g of this.#generations.values()) g.key.destroy();
    this.#generations.clear();
  }
}
