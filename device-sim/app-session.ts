// A Node application with a session key (docs/PROTOCOL.md §22): the key-service handshake (app token + SM2
// signature, session key under SM2), the announcement to the broker, and seal/open of its traffic over mqtt.js.
import mqtt, { type IClientPublishOptions, type MqttClient } from 'mqtt';
import { appSessionChallenge, appSessionKey } from '../kms-api/app-session-client.js';
import { followRotationNotices } from '../common/rotation-notices.js';
import { KmsClient } from '../kms-api/client.js';
import {
  APP_SESSION_TOPIC,
  challengeMessage,
  EnvelopeKey,
  openEnvelope,
  parseEnvelope,
  ReplayWindow,
  sealEnvelope,
  signChallenge,
  unwrapSessionKey,
} from '../protocol/index.js';

export interface AppSessionOptions {
  brokerUrl: string;
  kmsUrl: string;
  /** The broker's id at the key service: the session key is issued for that broker alone. */
  brokerId: string;
  appId: string;
  secret: string;
  /** The app's SM2 key pair (hex): the public key registered at the key service. */
  sm2: { privateKey: string; publicKey: string };
  /** Messages sealed under one key before the client rotates on its own (below the broker's limit). */
  rotateAfterMessages?: number;
  /** MQTT clean session (default true); false keeps a persistent session whose queue waits for the key (§22.8). */
  clean?: boolean;
  /** Receives from the first delivery on, before start() resolves (a persistent session's queue, §22.8). */
  onMessage?: AppMessageHandler;
}

interface Generation {
  key: EnvelopeKey;
  /** Replay window of what the broker sealed for this app under this key (app-down). */
  replay: ReplayWindow;
  nextSeq: number;
}

/** `packet`: the MQTT header of the delivery (DUP set on a redelivery, [MQTT-3.3.1-1]). */
export type AppMessageHandler = (
  topic: string,
  plaintext: Buffer,
  envelope: Buffer,
  packet: { dup: boolean; qos: number },
) => void;

export class AppSession {
  private readonly generations = new Map<number, Generation>();
  private generation = -1;
  private rotating: Promise<void> | undefined;
  private readonly handlers: AppMessageHandler[] = [];
  /** Deliveries that did not open (forged, replayed, under an unknown key): counted, never passed on. */
  refused = 0;
  /** Handshakes the broker asked for (§22.6, rotation notice) that failed; each is retried (rotation-notices.ts). */
  rotationFailures = 0;
  private readonly onNotice = followRotationNotices({
    current: () => Math.max(this.generation, ...this.generations.keys()),
    alive: () => this.client.connected && !this.client.disconnecting,
    rotate: () => this.rotate(),
    failed: () => this.rotationFailures++,
  });

  private constructor(
    readonly client: MqttClient,
    private readonly kms: KmsClient,
    private readonly o: AppSessionOptions,
  ) {
    if (o.onMessage) this.handlers.push(o.onMessage);
    client.on('message', (topic, payload, packet) => this.receive(topic, payload, packet));
  }

  /** Logs in, connects, and completes the first handshake before resolving. */
  static async start(o: AppSessionOptions): Promise<AppSession> {
    const { access_token } = await new KmsClient(o.kmsUrl).clientToken(o.appId, o.secret);
    const client = await mqtt.connectAsync(o.brokerUrl, {
      clientId: `${o.appId}/session`,
      username: o.appId,
      password: access_token,
      reconnectPeriod: 0,
      clean: o.clean ?? true,
    });
    const session = new AppSession(client, new KmsClient(o.kmsUrl, { token: access_token }), o);
    await session.rotate();
    return session;
  }

  get keyIndex(): number {
    return this.generation;
  }

  /**
   * A new session key: challenge, SM2 signature (§22.2), key unwrapped (§22.3), announced to the broker at QoS 1
   * (its PUBACK comes after the broker claimed the key). The previous key is kept to open deliveries in flight.
   */
  rotate(): Promise<void> {
    this.rotating ??= this.handshake().finally(() => (this.rotating = undefined));
    return this.rotating;
  }

  private async handshake(): Promise<void> {
    const c = await appSessionChallenge(this.kms, this.o.brokerId);
    const message = challengeMessage({
      appId: c.app_id,
      kmeId: c.kme_id,
      brokerId: c.broker_id,
      challenge: Buffer.from(c.challenge, 'base64'),
      expiresAt: c.expires_at,
    });
    const signature = signChallenge(message, this.o.sm2.privateKey, this.o.sm2.publicKey);
    const issued = await appSessionKey(
      this.kms,
      this.o.brokerId,
      c.challenge,
      Buffer.from(signature).toString('base64'),
    );
    const key = unwrapSessionKey(Buffer.from(issued.wrapped_key, 'base64'), this.o.sm2.privateKey);
    if (!key) throw new Error('the session key did not decrypt under this SM2 key');
    const index = this.generation + 1;
    // Opens deliveries under the new key from now: the broker may seal under it before its PUBACK arrives here
    // (a persistent session's held queue goes out as soon as the key is claimed, §22.8). Sealing switches on PUBACK.
    const generation = { key: new EnvelopeKey(key), replay: new ReplayWindow(), nextSeq: 0 };
    key.fill(0);
    this.generations.set(index, generation);
    try {
      await this.client.publishAsync(APP_SESSION_TOPIC, JSON.stringify({ key_ID: issued.key_ID, key_index: index }), {
        qos: 1,
      });
    } catch (err) {
      this.generations.delete(index); // not announced: nothing will come under it
      generation.key.destroy();
      throw err;
    }
    this.generation = index;
    for (const [i, g] of this.generations)
      if (i < index - 1) {
        g.key.destroy();
        this.generations.delete(i);
      }
  }

  /** Seals (app-up) and publishes; rotates first when the current key has sealed its share. */
  async publish(topic: string, plaintext: string | Buffer, options: IClientPublishOptions = {}): Promise<void> {
    if (this.generations.get(this.generation)!.nextSeq >= (this.o.rotateAfterMessages ?? 5000)) await this.rotate();
    await this.client.publishAsync(topic, Buffer.from(this.seal(topic, Buffer.from(plaintext))), options);
  }

  /** The envelope alone, for callers (and tests) that publish it themselves. */
  seal(topic: string, plaintext: Uint8Array): Uint8Array {
    const g = this.generations.get(this.generation)!;
    return sealEnvelope(plaintext, {
      key: g.key,
      keyIndex: this.generation,
      seq: g.nextSeq++,
      deviceId: this.o.appId,
      topic,
      direction: 'app-up',
    });
  }

  onMessage(handler: AppMessageHandler): void {
    this.handlers.push(handler);
  }

  private receive(topic: string, payload: Buffer, packet: { dup: boolean; qos: number }): void {
    if (topic === APP_SESSION_TOPIC) return this.onNotice(payload);
    const header = { dup: packet.dup, qos: packet.qos };
    if (payload.length === 0) return void this.handlers.forEach((h) => h(topic, payload, payload, header));
    let plaintext: Uint8Array;
    try {
      const parsed = parseEnvelope(payload);
      const g = this.generations.get(parsed.keyIndex);
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
      return;
    }
    const out = Buffer.from(plaintext.buffer, plaintext.byteOffset, plaintext.byteLength);
    for (const h of this.handlers) h(topic, out, payload, header);
  }

  async close(): Promise<void> {
    await this.client.endAsync();
    for (const g of this.generations.values()) g.key.destroy();
    this.generations.clear();
  }
}
