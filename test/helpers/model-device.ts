// One device of the key-agreement model test: its chip file (filled by the real filling machine), the honest
// firmware's connections, and what an attacker holding its token does. Records what the chip took and sealed.
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { SecurityChip } from '../../hsm-emulator/chip.js';
import { FillingMachine } from '../../hsm-emulator/filling-machine.js';
import { Qrng } from '../../hsm-emulator/qrng.js';
import { encodeHeader, parseEnvelope, SUITE_SM4_GCM, TAG_LENGTH } from '../../protocol/index.js';
import { FAST_KDF, TEST_PIN } from './chip.js';
import { removeDir } from './kms.js';
import { type BrokerName, fastTempDir, type ModelWorld } from './model-world.js';
import { RawMqtt } from './raw-mqtt.js';

export type CrashPoint = 'after-reserve' | 'after-take-key';

/** A power loss the test injects at a chip crash point. */
class PowerLoss extends Error {
  constructor(readonly point: CrashPoint) {
    super(`power loss at ${point}`);
  }
}

/** The broker answered CONNECT with a refusal (its return code), or closed the connection before CONNACK. */
export class ConnectRefused extends Error {
  constructor(
    message: string,
    readonly returnCode: number | undefined,
  ) {
    super(message);
    this.name = 'ConnectRefused';
  }
}

export type ConnectionKind =
  /** The firmware's connection, with a chip session begun for it. */
  | 'honest'
  /** The MQTT library reconnected by itself: the chip's session goes on (no beginSession). */
  | 'resumed'
  /** Someone else with the device's token (stolen, or a second instance of the firmware). */
  | 'intruder';

export interface Connection {
  kind: ConnectionKind;
  broker: BrokerName;
  client: MqttClient;
  socket: Socket;
  /** Status notices (devices/{id}/status, docs/PROTOCOL.md §9.4) received on this connection. */
  statuses: string[];
  /** The text of the will this connection carries, if any. */
  will: string | undefined;
}

export type PublishOutcome =
  | { kind: 'accepted' }
  /** The broker closed the connection instead; the reason is its status message, when it sent one. */
  | { kind: 'refused'; status: string | undefined }
  /** The connection was gone before the message was sent. */
  | { kind: 'not-connected' };

/** How long to wait for an outcome that must come (a message, a close): a hang becomes a failure, not a timing. */
export const WAIT_MS = 10_000;

const qrng = new Qrng();

export class ModelDevice {
  chip: SecurityChip;
  token = '';
  /** beginSession calls so far (the chip's sessions as the harness counts them). */
  session = 0;
  /** The firmware's own connection, if it has one. */
  current: Connection | undefined;
  readonly connections: Connection[] = [];
  /** Key index -> the chip session that took it. */
  readonly takenBy = new Map<number, number>();
  /** (direction, key index, seq) of every envelope the chip sealed. */
  readonly sealed = new Set<string>();
  /** Key indices the chip sealed under. */
  readonly sealedKeys = new Set<number>();
  /**
   * Which broker (and which run of it) first showed that it holds a key: it accepted a message under it, or a
   * CONNECT whose will names it (docs/PROTOCOL.md §9.1, §9.5).
   */
  readonly keyHolder = new Map<number, { broker: BrokerName; generation: number }>();
  /** Envelopes the device sent, for replays. */
  readonly sent: Array<{ topic: string; envelope: Buffer; session: number }> = [];

  /** Uplink key indices filled into the chip, lowest first. */
  readonly uplinkIndices: number[] = [];
  private lastTaken = -1;
  /** The will of the chip session's connections, if it has one. */
  private will: { topic: string; payload: Buffer; text: string } | undefined;
  private armed: CrashPoint | undefined;
  private messages = 0;
  private readonly stopListening: () => void;
  private readonly arrived = new Set<string>();
  /** What the application received from this device, in order (texts). */
  readonly arrivalOrder: string[] = [];
  /** Commands the chip opened, in order (texts). */
  private readonly commandsOpened: string[] = [];
  private readonly waiters = new Map<string, () => void>();
  private readonly commandWaiters = new Map<string, (err?: Error) => void>();
  /** Connections that received at least one command (the only ones allowed a downlink key). */
  readonly commanded = new Set<Connection>();

  private constructor(
    readonly world: ModelWorld,
    readonly deviceId: string,
    readonly dir: string,
    readonly path: string,
    chip: SecurityChip,
  ) {
    this.chip = chip;
    this.stopListening = world.onAppMessage((topic, payload) => {
      if (!topic.startsWith(`devices/${deviceId}/up/`)) return;
      const text = payload.toString();
      this.arrived.add(text);
      this.arrivalOrder.push(text);
      this.waiters.get(text)?.();
    });
  }

  /** A new device with a chip filled through the real filling machine (key service first, then the chip). */
  static async create(world: ModelWorld, deviceId: string, up: number, down: number): Promise<ModelDevice> {
    const dir = fastTempDir('qkey-model-chip-');
    const path = join(dir, `${deviceId}.chip`);
    const options = { crashPoint: (p: CrashPoint) => d.crashPoint(p) };
    const chip = SecurityChip.create(path, { deviceId, pin: TEST_PIN, kdfIterations: FAST_KDF }, options);
    const d: ModelDevice = new ModelDevice(world, deviceId, dir, path, chip);
    const first = chip.status().nextKeyIndex;
    await new FillingMachine(qrng, world.kms.admin).fill(chip, { up, down });
    for (let i = 0; i < up; i++) d.uplinkIndices.push(first + i);
    await d.login();
    return d;
  }

  /** Logs in with the chip's login key (challenge-response); the token is reused across connections. */
  async login(): Promise<void> {
    const { challenge } = await this.world.kms.anon.challenge(this.deviceId);
    const mac = Buffer.from(this.chip.loginProof(Buffer.from(challenge, 'base64'))).toString('base64');
    this.token = (await this.world.kms.anon.deviceToken(this.deviceId, challenge, mac)).access_token;
  }

  /** Whether the chip session's connections carry a will. */
  get hasWill(): boolean {
    return this.will !== undefined;
  }

  get hasChipSession(): boolean {
    return this.chip.status().session !== null;
  }

  /** The lowest uplink index the chip has not taken yet (what a forger would aim at). */
  get nextUplinkIndex(): number {
    return this.uplinkIndices.find((i) => i > this.lastTaken) ?? this.lastTaken + 1;
  }

  /** Arms a power loss at the chip's next crash point `point`. */
  arm(point: CrashPoint): void {
    this.armed = point;
  }

  disarm(): void {
    this.armed = undefined;
  }

  /**
   * Power loss: the device resets. Its connections die without DISCONNECT, the chip forgets its session, and the
   * firmware reopens the chip file.
   */
  powerLoss(): void {
    for (const c of this.connections) if (c.kind !== 'intruder') c.socket.destroy();
    this.current = undefined;
    this.armed = undefined;
    this.will = undefined;
    const options = { crashPoint: (p: CrashPoint) => this.crashPoint(p) };
    this.chip = SecurityChip.open(this.path, TEST_PIN, options);
  }

  /**
   * The firmware's connect: a new chip session for every new connection (docs/PROTOCOL.md §9), with a will sealed
   * in that session if `will`.
   */
  async connectHonest(broker: BrokerName, will = false): Promise<Connection> {
    this.beginSession();
    this.will = will ? this.sealWill() : undefined;
    const c = await this.open('honest', broker);
    this.current = c;
    return c;
  }

  /** An MQTT library's automatic reconnect: a new connection on which the chip's session simply goes on. */
  async reconnectResumed(broker: BrokerName): Promise<Connection> {
    const c = await this.open('resumed', broker);
    this.current = c;
    return c;
  }

  /** A CONNECT with the device's token whose network goes away while the broker is authenticating it. */
  async connectLostBeforeConnack(broker: BrokerName, newSession: boolean): Promise<void> {
    // A new connection attempt: the firmware's MQTT client has given up its previous connection.
    this.current?.socket.destroy();
    this.current = undefined;
    if (newSession) this.beginSession();
    const raw = await RawMqtt.open(this.world.url(broker));
    const started = this.world.nextAuthentication(broker);
    raw.send({
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: 4,
      clean: true,
      keepalive: 30,
      clientId: this.deviceId,
      username: this.deviceId,
      password: Buffer.from(this.token),
    });
    await started;
    raw.destroy();
    await raw.closed;
  }

  /** Connects as an intruder with the device's token (the broker hands it the device's client id). */
  async connectIntruder(broker: BrokerName): Promise<Connection> {
    return this.open('intruder', broker);
  }

  /** The session's will: sealed once, sent again unchanged by a library reconnect (it resends its CONNECT). */
  private sealWill(): { topic: string; payload: Buffer; text: string } {
    const topic = `devices/${this.deviceId}/up/will`;
    const text = `${this.deviceId}/w${this.messages++}`;
    const payload = Buffer.from(this.chipCall(() => this.chip.sealWill(Buffer.from(text), topic)));
    const h = parseEnvelope(payload);
    this.sealed.add(`will/${h.keyIndex}/${h.seq}`);
    this.sealedKeys.add(h.keyIndex);
    this.noteTaken();
    return { topic, payload, text };
  }

  /** Seals one new message in the current chip session (the crash points of the chip apply). */
  seal(topic: string): { text: string; envelope: Buffer } {
    const text = `${this.deviceId}/m${this.messages++}`;
    const envelope = Buffer.from(this.chipCall(() => this.chip.sealUplink(Buffer.from(text), topic)));
    const h = parseEnvelope(envelope);
    const id = `up/${h.keyIndex}/${h.seq}`;
    if (this.sealed.has(id)) throw new Error(`the chip sealed (up, key ${h.keyIndex}, seq ${h.seq}) twice`);
    this.sealed.add(id);
    this.sealedKeys.add(h.keyIndex);
    this.noteTaken();
    return { text, envelope };
  }

  /**
   * Publishes one sealed message on connection `c` and tells whether the application received it or the broker
   * closed the connection instead.
   */
  async publish(c: Connection, qos: 0 | 1, count = 1): Promise<PublishOutcome> {
    if (!c.client.connected) return { kind: 'not-connected' };
    const topic = `devices/${this.deviceId}/up/m`;
    const sealed = Array.from({ length: count }, () => this.seal(topic));
    for (const { envelope } of sealed) this.sent.push({ topic, envelope, session: this.session });
    const statusesBefore = c.statuses.length;
    const texts = sealed.map((m) => m.text);
    const arrivedBefore = this.arrivalOrder.length;
    const outcome = await this.race(texts, c, () => {
      for (const { envelope } of sealed) c.client.publish(topic, envelope, { qos });
    });
    if (outcome === 'accepted') {
      this.noteHeld(parseEnvelope(sealed[0]!.envelope).keyIndex, c.broker);
      // One connection, one topic: the application gets them in the order they were sent [MQTT-4.6.0-2].
      const order = this.arrivalOrder.slice(arrivedBefore).filter((t) => texts.includes(t));
      if (order.join() !== texts.join()) throw new Error(`messages arrived out of order: ${order.join(', ')}`);
      return { kind: 'accepted' };
    }
    return { kind: 'refused', status: c.statuses.slice(statusesBefore).join(' ') || undefined };
  }

  /**
   * The application sends `count` commands at once to the device on the broker of connection `c`: all must be
   * opened by the chip, in order, unless the connection closes first.
   */
  async command(c: Connection, count = 1): Promise<'opened' | 'closed'> {
    const texts = Array.from({ length: count }, () => `${this.deviceId}/c${this.messages++}`);
    const openedBefore = this.commandsOpened.length;
    const outcome = await new Promise<'opened' | 'closed'>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`commands ${texts.join(', ')} never reached the device`)),
        WAIT_MS,
      );
      const done = (v: 'opened' | 'closed') => {
        clearTimeout(timer);
        for (const t of texts) this.commandWaiters.delete(t);
        c.client.off('close', onClose);
        resolve(v);
      };
      const onClose = () => done('closed');
      let pending = count;
      for (const t of texts) {
        this.commandWaiters.set(t, (err) => {
          if (err) {
            clearTimeout(timer);
            reject(err);
          } else if (--pending === 0) done('opened');
        });
      }
      c.client.once('close', onClose);
      for (const t of texts)
        this.world.command(c.broker, `devices/${this.deviceId}/down/c`, Buffer.from(t)).catch(reject);
    });
    if (outcome === 'opened') {
      this.commanded.add(c);
      const order = this.commandsOpened.slice(openedBefore).filter((t) => texts.includes(t));
      if (order.join() !== texts.join()) throw new Error(`commands were opened out of order: ${order.join(', ')}`);
    }
    return outcome;
  }

  /** A command arrived: the chip opens it (a replay or a key it does not hold is an error of the system). */
  private received(topic: string, payload: Buffer): void {
    let text: string;
    try {
      text = Buffer.from(this.chip.openDownlink(payload, topic)).toString();
    } catch (err) {
      for (const w of this.commandWaiters.values()) w(new Error(`the chip could not open a command: ${String(err)}`));
      return;
    }
    this.commandsOpened.push(text);
    this.commandWaiters.get(text)?.();
  }

  /**
   * Sends bytes the chip did not just seal (someone else's, or a resend) on connection `c`: accepted (passed on to
   * the application), dropped (acknowledged, not passed on) or refused (the broker closed the connection).
   */
  async inject(
    c: Connection,
    topic: string,
    payload: Buffer,
    qos: 0 | 1,
    dup = false,
  ): Promise<'accepted' | 'dropped' | 'refused'> {
    const before = this.world.accepted.length;
    c.client.publish(topic, payload, { qos, dup });
    // Refused: the broker closes the connection. Otherwise a PING round trip later the broker has handled it.
    const closed = this.closedPromise(c);
    const pinged = this.pingPromise(c);
    const which = await Promise.race([closed.then(() => 'closed' as const), pinged.then(() => 'pinged' as const)]);
    if (which === 'closed') return 'refused';
    await this.world.settle(this.peers());
    if (!c.client.connected) return 'refused';
    return this.world.accepted.length > before ? 'accepted' : 'dropped';
  }

  /** The last envelope sent in the chip's current session (what a library resends after a reconnect). */
  lastSentInSession(): { topic: string; envelope: Buffer } | undefined {
    const last = this.sent.at(-1);
    return last?.session === this.session ? last : undefined;
  }

  /** An envelope with a well-formed header naming uplink key `keyIndex`, and random ciphertext and tag. */
  static forged(keyIndex: number, seq: number, length: number): Buffer {
    const header = encodeHeader({ suite: SUITE_SM4_GCM, keyIndex, seq });
    return Buffer.concat([header, randomBytes(length + TAG_LENGTH)]);
  }

  /** Sockets of this device's connections by local port, for ModelWorld.settle. */
  peers(): Map<number, { destroyed: boolean }> {
    return new Map(this.connections.filter((c) => c.socket.localPort).map((c) => [c.socket.localPort!, c.socket]));
  }

  /** Drops connections that are closed on both sides from the bookkeeping. */
  prune(): void {
    for (let i = this.connections.length - 1; i >= 0; i--) {
      const c = this.connections[i]!;
      if (c.socket.destroyed && !c.client.connected) {
        this.connections.splice(i, 1);
        if (this.current === c) this.current = undefined;
      }
    }
  }

  /**
   * Between sequences: every connection closed and the chip reopened without a session, as after a power cycle. The
   * records (keys taken, envelopes sealed) stay: the invariants hold over the device's whole life.
   */
  async reset(): Promise<void> {
    for (const c of this.connections) c.socket.destroy();
    await this.world.settle(this.peers());
    this.prune();
    this.connections.length = 0;
    this.powerLoss();
  }

  async close(): Promise<void> {
    for (const c of this.connections) c.socket.destroy();
    await this.world.settle(this.peers());
    this.connections.length = 0;
    this.stopListening();
    this.chip.close();
    removeDir(this.dir);
  }

  private beginSession(): void {
    this.session++;
    this.will = undefined;
    this.willDiscarded = false;
    this.chipCall(() => this.chip.beginSession());
    this.noteTaken();
  }

  /**
   * Ends connection `c` with DISCONNECT: its will is discarded [MQTT-3.14.4-3], and the broker will not take the same
   * will again (broker/hooks/lifecycle.ts).
   */
  async disconnect(c: Connection): Promise<void> {
    await c.client.endAsync(false);
    if (c.will !== undefined && c.will === this.will?.text) this.willDiscarded = true;
  }

  /** The current session's will was discarded by a clean DISCONNECT. */
  willDiscarded = false;

  /** Whether the application received the current session's will (the broker published it). */
  get willPublished(): boolean {
    return this.will !== undefined && this.arrived.has(this.will.text);
  }

  /** The key index of the chip's current session's will, if it has one. */
  get willKeyIndex(): number | undefined {
    return this.will && parseEnvelope(this.will.payload).keyIndex;
  }

  private noteHeld(index: number, broker: BrokerName): void {
    if (!this.keyHolder.has(index)) this.keyHolder.set(index, { broker, generation: this.world.generation(broker) });
  }

  /** Records the key the chip's session holds now, if any, against the session. */
  private noteTaken(): void {
    const index = this.chip.status().session?.keyIndex;
    if (index === undefined || index === null) return;
    const by = this.takenBy.get(index);
    if (by !== undefined && by !== this.session)
      throw new Error(`the chip gave key ${index} to session ${this.session} after session ${by}`);
    if (by === undefined && index <= this.lastTaken)
      throw new Error(`the chip went back to key ${index} after key ${this.lastTaken}`);
    this.takenBy.set(index, this.session);
    this.lastTaken = Math.max(this.lastTaken, index);
  }

  private chipCall<T>(f: () => T): T {
    try {
      return f();
    } catch (err) {
      if (err instanceof PowerLoss) {
        this.powerLoss();
        throw err;
      }
      throw err;
    }
  }

  private crashPoint(point: CrashPoint): void {
    if (this.armed !== point) return;
    this.armed = undefined;
    throw new PowerLoss(point);
  }

  private async open(kind: ConnectionKind, broker: BrokerName): Promise<Connection> {
    const client = mqtt.connect(this.world.url(broker), {
      clientId: this.deviceId,
      username: this.deviceId,
      password: this.token,
      reconnectPeriod: 0,
      clean: true,
      connectTimeout: WAIT_MS,
      ...(kind !== 'intruder' &&
        this.will && { will: { topic: this.will.topic, payload: this.will.payload, qos: 1, retain: false } }),
    });
    let refusal: Error | undefined;
    client.on('error', (err) => (refusal ??= err));
    await new Promise<void>((resolve, reject) => {
      const onClose = () =>
        reject(
          new ConnectRefused(
            `${kind} connection to ${broker} closed before CONNACK${refusal ? ` (${refusal.message})` : ''}`,
            (refusal as { code?: number } | undefined)?.code,
          ),
        );
      client.once('connect', () => {
        client.off('close', onClose);
        resolve();
      });
      client.once('close', onClose);
    });
    if (kind !== 'intruder' && this.will) this.noteHeld(parseEnvelope(this.will.payload).keyIndex, broker);
    const c: Connection = {
      kind,
      broker,
      client,
      socket: client.stream as Socket,
      statuses: [],
      will: kind === 'intruder' ? undefined : this.will?.text,
    };
    this.connections.push(c);
    if (kind !== 'intruder') {
      // The firmware listens for its commands (opened in the chip) and for the broker's reasons for refusing it.
      const status = `devices/${this.deviceId}/status`;
      client.on('message', (topic, payload) => {
        if (topic === status) c.statuses.push(payload.toString());
        else this.received(topic, payload);
      });
      await client.subscribeAsync([`devices/${this.deviceId}/down/#`, status], { qos: 1 });
    }
    // Aedes closes the connection this one took over [MQTT-3.1.4-2]: wait until both ends saw it.
    await this.world.settle(this.peers());
    return c;
  }

  /** Resolves when the application has received `text` from this device (at once if it has). */
  arrival(text: string): Promise<void> {
    if (this.arrived.has(text)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${text} never reached the application`)), WAIT_MS);
      this.waiters.set(text, () => {
        clearTimeout(timer);
        this.waiters.delete(text);
        resolve();
      });
    });
  }

  /** Waits for all of `texts` at the application, or for the broker to close `c` first. */
  private race(texts: string[], c: Connection, send: () => void): Promise<'accepted' | 'closed'> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`messages ${texts.join(', ')} neither arrived nor was their connection closed`)),
        WAIT_MS,
      );
      const all = () => texts.every((t) => this.arrived.has(t));
      const done = (v: 'accepted' | 'closed') => {
        clearTimeout(timer);
        for (const t of texts) this.waiters.delete(t);
        c.client.off('close', onClose);
        resolve(v);
      };
      const onClose = () => {
        // The application may get the last message a moment after a refusal of a later one closed the connection.
        setImmediate(() => done(all() ? 'accepted' : 'closed'));
      };
      for (const t of texts) this.waiters.set(t, () => all() && done('accepted'));
      c.client.once('close', onClose);
      send();
    });
  }

  private closedPromise(c: Connection): Promise<void> {
    return new Promise((resolve) => {
      if (!c.client.connected) return resolve();
      c.client.once('close', () => resolve());
    });
  }

  /** A PINGREQ/PINGRESP round trip: the broker has handled what was sent before it. */
  private pingPromise(c: Connection): Promise<void> {
    return new Promise((resolve) => {
      const client = c.client as unknown as { _sendPacket(p: object): void };
      c.client.once('packetreceive', function on(p: { cmd: string }) {
        if (p.cmd === 'pingresp') resolve();
        else c.client.once('packetreceive', on);
      });
      client._sendPacket({ cmd: 'pingreq' });
    });
  }
}

export { PowerLoss };
