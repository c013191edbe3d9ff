// The QKey plugin for Aedes: token authentication, topic ACLs, uplink envelope opening and per-device downlink
// sealing, as Aedes hooks. Usable on any Aedes instance: createQkeyPlugin(options).attach(aedes).
import { randomUUID } from 'node:crypto';
import type { Aedes, AedesPublishPacket, AuthenticateError, Client, PublishPacket, Subscription } from 'aedes';
import { type KmsClient, KmsHttpError } from '../key-service/client.js';
import {
  type EnvelopeKey,
  isProtocolError,
  openEnvelope,
  type ParsedEnvelope,
  parseEnvelope,
  type ProtocolErrorCode,
  type ReplayWindow,
  type TokenClaims,
  TokenError,
} from '../protocol/index.js';
import {
  DeviceSessionKeys,
  DEFAULT_ROTATION,
  type RotationLimits,
  type SessionEvent,
  UplinkKeyError,
} from './session-keys.js';
import { certificateMismatch, type ClientCertificates } from './client-certificate.js';
import type { TokenAuthority } from './token-authority.js';
import {
  DEFAULT_TOPICS,
  mayPublish,
  mayReceive,
  maySubscribe,
  type Principal,
  type TopicTemplates,
} from './topic-policy.js';

/** Why an uplink publish was refused; each is a metric label. */
export type RejectReason =
  'acl' | 'plaintext' | 'malformed' | 'replay' | 'forged' | 'foreign_key' | 'kms_unavailable' | 'too_large';

export interface PluginEvents {
  rejected?: (reason: RejectReason, clientId: string, topic: string) => void;
  connected?: (principal: Principal) => void;
  authFailed?: (returnCode: number, reason: string) => void;
  downlink?: (outcome: 'sealed' | 'dropped_no_key' | 'resealed') => void;
  session?: (deviceId: string, event: SessionEvent) => void;
}

export interface QkeyPluginOptions {
  /** A key-service client holding this broker's token. */
  kms: KmsClient;
  tokens: TokenAuthority;
  topics?: TopicTemplates;
  rotation?: RotationLimits;
  /** Largest uplink payload after opening, bytes. */
  maxPayload?: number;
  events?: PluginEvents;
  /** Mutual TLS: connections' certificate identities and whether a certificate alone may replace a device token. */
  certificates?: ClientCertificates;
  log?: { info(obj: object, msg: string): void; warn(obj: object, msg: string): void };
}

interface ClientState {
  principal: Principal;
  iat: number;
  keys?: DeviceSessionKeys;
}

function authError(returnCode: 2 | 3 | 4 | 5, message: string): AuthenticateError {
  const err = new Error(message) as AuthenticateError;
  err.returnCode = returnCode;
  return err;
}

const PROTOCOL_REASONS: Partial<Record<ProtocolErrorCode, RejectReason>> = {
  PROTO_ERR_TRUNCATED: 'malformed',
  PROTO_ERR_VERSION: 'malformed',
  PROTO_ERR_SUITE: 'malformed',
  PROTO_ERR_TOO_LARGE: 'too_large',
  PROTO_ERR_REPLAY: 'replay',
  PROTO_ERR_TAG: 'forged',
};

type PublishCallback = (err: Error | null) => void;

/** Nested synchronous authorizePublish callbacks allowed before the next one is deferred to a new tick. */
const MAX_SYNC_DEPTH = 32;

export class QkeyPlugin {
  private readonly states = new Map<Client, ClientState>();
  /** [MQTT-3.1.3-8] clients whose CONNECT had an empty client id with clean session off. */
  private readonly emptyIdPersistent = new WeakSet<Client>();
  /**
   * Sealed downlink payload -> its plaintext. Aedes stores the packet authorizeForward returned for in-flight and
   * queued QoS 1/2 messages and passes that stored packet through authorizeForward again after a reconnect; this
   * lets the broker seal the original plaintext under the new session's key instead of sealing an envelope again.
   */
  private readonly plaintextOf = new WeakMap<Buffer, Buffer>();
  private readonly topics: TopicTemplates;
  private readonly rotation: RotationLimits;
  private readonly parseOptions: { maxPayload?: number };
  /** authorizePublish callbacks running on the current stack (see callBack). */
  private callbackDepth = 0;
  constructor(private readonly o: QkeyPluginOptions) {
    this.topics = o.topics ?? DEFAULT_TOPICS;
    this.rotation = o.rotation ?? DEFAULT_ROTATION;
    this.parseOptions = o.maxPayload === undefined ? {} : { maxPayload: o.maxPayload };
    o.tokens.onRevoked((subject) => this.disconnectSubject(subject));
  }

  /** Installs the hooks on an Aedes instance and follows client disconnects to release session keys. */
  attach(aedes: Aedes): void {
    aedes.preConnect = (client, packet, cb) => {
      if (!packet.clientId && packet.clean === false) this.emptyIdPersistent.add(client);
      cb(null, true);
    };
    aedes.authenticate = (client, username, password, cb) => {
      this.authenticate(client, username, password).then(
        () => cb(null, true),
        (err: AuthenticateError) => {
          this.o.events?.authFailed?.(err.returnCode ?? 5, err.message);
          cb(err, false);
        },
      );
    };
    aedes.authorizePublish = (client, packet, cb) => this.authorizePublish(client, packet, cb);
    aedes.authorizeSubscribe = (client, sub, cb) => cb(null, this.authorizeSubscribe(client, sub));
    aedes.authorizeForward = (client, packet) => this.authorizeForward(client, packet);
    aedes.on('clientDisconnect', (client) => void this.release(client));
    aedes.on('clientError', (client) => void this.release(client));
  }

  principalOf(client: Client): Principal | undefined {
    return this.states.get(client)?.principal;
  }

  async close(): Promise<void> {
    await Promise.all([...this.states.keys()].map((c) => this.release(c)));
  }

  private async authenticate(
    client: Client,
    username: string | undefined,
    password: Buffer | undefined,
  ): Promise<void> {
    if (this.emptyIdPersistent.has(client))
      throw authError(2, 'identifier rejected: empty client id with clean session off [MQTT-3.1.3-8]');
    const certificate = this.o.certificates?.of(client.conn);
    const certificateAlone = !password && certificate && this.o.certificates?.policy.tokenRequired === false;
    if (!username || (!password && !certificateAlone))
      throw authError(4, 'bad user name or password: a token is required');
    let claims: Pick<TokenClaims, 'sub' | 'role' | 'iat' | 'acl'>;
    if (certificateAlone) {
      // A device identified by its certificate alone (policy); revoked at the key service since it was issued: 5.
      if (this.o.tokens.isRevoked(username, certificate.notBefore)) throw authError(5, 'not authorized: revoked');
      claims = { sub: username, role: 'device', iat: certificate.notBefore };
    } else {
      try {
        claims = this.o.tokens.verify(password!.toString('utf8'));
      } catch (err) {
        if (err instanceof TokenError) throw authError(4, `bad user name or password: ${err.code}`);
        throw err;
      }
    }
    if (claims.sub !== username) throw authError(4, 'bad user name or password: the username is not the token subject');
    let principal: Principal;
    if (claims.role === 'device') {
      // Device id = username = client id, so topic permissions and the envelope AAD name one identity.
      if (client.id !== username)
        throw authError(5, 'not authorized: a device connects with client id = username = device id');
      principal = { role: 'device', id: claims.sub };
    } else if (claims.role === 'app') {
      principal = {
        role: 'app',
        id: claims.sub,
        publish: claims.acl?.publish ?? [],
        subscribe: claims.acl?.subscribe ?? [],
      };
    } else {
      throw authError(5, 'not authorized: broker tokens cannot connect as MQTT clients');
    }
    const mismatch = certificateMismatch(certificate, principal.id);
    if (mismatch) throw authError(5, `not authorized: ${mismatch}`);
    const state: ClientState = { principal, iat: claims.iat };
    if (principal.role === 'device') {
      const deviceId = principal.id;
      const keys = new DeviceSessionKeys(this.o.kms, deviceId, randomUUID(), this.rotation, (e) =>
        this.o.events?.session?.(deviceId, e),
      );
      try {
        // Aedes' authorizeForward is synchronous: the first downlink keys must be here before CONNACK.
        await keys.start();
      } catch (err) {
        await keys.close();
        // A certificate alone may name a device the key service does not know: that is no one to connect as.
        if (err instanceof KmsHttpError && err.code === 'KMS_ERR_UNKNOWN_DEVICE')
          throw authError(5, 'not authorized: unknown device');
        throw authError(3, `server unavailable: ${(err as Error).message}`);
      }
      state.keys = keys;
    }
    this.states.set(client, state);
    this.o.events?.connected?.(principal);
  }

  /**
   * Opens the envelope without waiting when the session already holds its key (the common case), and after the
   * claim otherwise. Any refusal closes the connection; the reason is counted and logged without payload.
   * Runs for every uplink message: no closures are allocated on the common path.
   */
  private authorizePublish(client: Client | null, packet: PublishPacket, callback: PublishCallback): void {
    const state = client ? this.states.get(client) : undefined;
    if (!client || !state) return this.callBack(callback, new Error('not authorized: unauthenticated publish'));
    if (!mayPublish(state.principal, packet.topic, this.topics))
      return this.refuse(client, packet, callback, 'acl', 'topic not permitted');
    if (state.principal.role !== 'device') return this.callBack(callback, null);
    const payload = packet.payload as Buffer;
    // The empty payload passes: MQTT's retained-message delete marker.
    if (payload.length === 0) return this.callBack(callback, null);
    let parsed: ParsedEnvelope;
    try {
      parsed = parseEnvelope(payload, this.parseOptions);
    } catch (err) {
      if (!isProtocolError(err)) return this.callBack(callback, err as Error);
      const reason = err.code === 'PROTO_ERR_TRUNCATED' ? 'plaintext' : (PROTOCOL_REASONS[err.code] ?? 'malformed');
      return this.refuse(client, packet, callback, reason, err.code);
    }
    const keys = state.keys!;
    const ready = keys.readyUplinkKey(parsed.keyIndex);
    if (ready) return this.openUplink(client, state.principal.id, packet, parsed, ready, callback);
    keys.uplinkKey(parsed.keyIndex).then(
      (uplink) => this.openUplink(client, state.principal.id, packet, parsed, uplink, callback),
      (err: unknown) => {
        if (err instanceof UplinkKeyError) this.refuse(client, packet, callback, err.reason, err.message);
        else this.callBack(callback, err as Error);
      },
    );
  }

  private openUplink(
    client: Client,
    deviceId: string,
    packet: PublishPacket,
    parsed: ParsedEnvelope,
    uplink: { key: EnvelopeKey; replay: ReplayWindow },
    callback: PublishCallback,
  ): void {
    let opened;
    try {
      opened = openEnvelope(parsed, {
        key: uplink.key,
        deviceId,
        topic: packet.topic,
        direction: 'up',
        replay: uplink.replay,
      });
    } catch (err) {
      if (!isProtocolError(err)) return this.callBack(callback, err as Error);
      return this.refuse(client, packet, callback, PROTOCOL_REASONS[err.code] ?? 'forged', err.code);
    }
    // What is retained, queued and forwarded from here on is the plaintext: applications receive plaintext.
    packet.payload = Buffer.from(opened.payload.buffer, opened.payload.byteOffset, opened.payload.byteLength);
    this.callBack(callback, null);
  }

  private refuse(
    client: Client,
    packet: PublishPacket,
    callback: PublishCallback,
    reason: RejectReason,
    detail: string,
  ): void {
    this.o.events?.rejected?.(reason, client.id, packet.topic);
    this.o.log?.warn({ client: client.id, topic: packet.topic, reason }, 'publish refused');
    this.callBack(callback, new Error(`publish refused (${reason}): ${detail}`));
  }

  /**
   * Aedes handles the client's next buffered packets from this callback, so calling back on this stack nests one
   * level per packet: beyond MAX_SYNC_DEPTH the callback goes to the next tick, or a large backlog would overflow
   * the stack. Below it, calling back at once saves a tick per message.
   */
  private callBack(callback: PublishCallback, err: Error | null): void {
    if (this.callbackDepth >= MAX_SYNC_DEPTH) return process.nextTick(callback, err);
    this.callbackDepth++;
    try {
      callback(err);
    } finally {
      this.callbackDepth--;
    }
  }

  private authorizeSubscribe(client: Client, sub: Subscription): Subscription | null {
    const state = this.states.get(client);
    if (!state || !maySubscribe(state.principal, sub.topic, this.topics)) return null; // SUBACK 0x80
    return sub;
  }

  /** Synchronous: seals for this one device subscriber by assigning a new payload to this same packet. */
  private authorizeForward(client: Client, packet: AedesPublishPacket): AedesPublishPacket | null {
    const state = this.states.get(client);
    // Read permission again on every delivery: a negated filter of a persistent session may still be stored.
    if (!state || !mayReceive(state.principal, packet.topic, this.topics)) return null;
    if (state.principal.role !== 'device') return packet;
    let plaintext = packet.payload as Buffer;
    const original = this.plaintextOf.get(plaintext);
    if (original) plaintext = original;
    if (plaintext.length === 0) {
      packet.payload = plaintext;
      return packet;
    }
    const sealed = state.keys!.sealDownlink(plaintext, packet.topic);
    if (!sealed) {
      this.o.events?.downlink?.('dropped_no_key');
      return null;
    }
    const out = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
    this.plaintextOf.set(out, plaintext);
    packet.payload = out;
    this.o.events?.downlink?.(original ? 'resealed' : 'sealed');
    return packet;
  }

  private async release(client: Client): Promise<void> {
    const state = this.states.get(client);
    if (!state) return;
    this.states.delete(client);
    await state.keys?.close();
  }

  /** Revoked at the key service: close that subject's connections now. */
  private disconnectSubject(subject: string): void {
    for (const [client, state] of this.states) {
      if (state.principal.id === subject) {
        this.o.log?.info({ client: client.id, subject }, 'revoked: disconnecting');
        client.close();
        void this.release(client);
      }
    }
  }
}

export function createQkeyPlugin(options: QkeyPluginOptions): QkeyPlugin {
  return new QkeyPlugin(options);
}
