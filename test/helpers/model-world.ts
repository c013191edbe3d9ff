// The real system the key-agreement model test drives: one key service (restartable on its data dir) and two
// brokers (A and B, each restartable) on it, an application on each broker, and the observers the model's checks
// read: envelope headers each broker accepted, in-flight hooks, and the key service's own SQLite (claims, audit).
import type { Duplex } from 'node:stream';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import Database from 'better-sqlite3';
import mqtt, { type MqttClient } from 'mqtt';
import { pino } from 'pino';
import type { Client, PublishPacket } from 'aedes';
import { loadBrokerConfig } from '../../broker/config.js';
import { DROPPED_PAYLOAD } from '../../broker/hooks/context.js';
import { type RunningBroker, startBroker } from '../../broker/server.js';
import { DB_FILE } from '../../key-service/data-dir.js';
import { SINGLE_HOST_LOGIN_LIMITS } from '../../device-sim/local-system.js';
import { parseEnvelope } from '../../protocol/index.js';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { initDataDir } from '../../key-service/data-dir.js';
import { removeDir, startTestKms, type TestKms } from './kms.js';

/**
 * Temp folders on tmpfs where there is one: the chip and the key service fsync every state change, and on a
 * disk that is most of a step's time. What a crash can leave is modelled by the chip's crash points, not by fsync.
 */
export function fastTempDir(prefix: string): string {
  return mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), prefix));
}

export type BrokerName = 'A' | 'B';
export const BROKERS: readonly BrokerName[] = ['A', 'B'];

/** One envelope a broker let through: a device's uplink message or will, as its header named it. */
export interface AcceptedHeader {
  broker: BrokerName;
  /** Which run of that broker (a restart is a new one). */
  generation: number;
  deviceId: string;
  direction: 'up' | 'will';
  keyIndex: number;
  seq: number;
}

/** One key claim as the key service's audit log recorded it. */
export interface ClaimRecord {
  kind: 'dec' | 'enc';
  actor: string;
  session: string | null;
  keyIndices: number[];
}

const APP_ID = 'model-app';

interface BrokerSlot {
  name: BrokerName;
  brokerId: string;
  secret: string;
  running: RunningBroker;
  app: MqttClient;
  /** Server-side streams by the peer's port, open ones only. */
  streams: Map<number, Duplex>;
  /** Hooks (authenticate, authorizePublish) that have not answered yet. */
  inflight: number;
  /** Called when the next CONNECT reaches the authenticate hook. */
  onAuthenticate: Array<() => void>;
  generation: number;
}

type Listener = (topic: string, payload: Buffer) => void;

/**
 * The shared system. Processes are reused across the model's runs (each run has its own device), which keeps a
 * run cheap; a broker or key-service restart in one run is a real restart that later runs simply live with.
 */
export class ModelWorld {
  kms!: TestKms;
  readonly accepted: AcceptedHeader[] = [];
  private readonly slots = new Map<BrokerName, BrokerSlot>();
  private readonly listeners = new Set<Listener>();
  private appSecret = '';
  private appToken: string | undefined;
  /** Key id -> key index, per device (a device's keys do not change after its fill). */
  private readonly keyIndices = new Map<string, Map<string, number>>();
  private kmsPort = 0;
  private readonly logLines: string[] = [];
  private db:
    | { db: Database.Database; claims: Database.Statement; keyIds: Database.Statement; pool: Database.Statement }
    | undefined;

  private constructor(readonly dataDir: string) {}

  static async start(): Promise<ModelWorld> {
    const dir = fastTempDir('qkey-model-kms-');
    initDataDir(dir);
    const w = new ModelWorld(dir);
    await w.startKms();
    w.kmsPort = Number(new URL(w.kms.url).port);
    const app = await w.kms.admin.registerApp(APP_ID, {
      publish: ['devices/+/down/#'],
      subscribe: ['devices/+/up/#', 'devices/+/status'],
    });
    w.appSecret = app.client_secret;
    for (const name of BROKERS) {
      const brokerId = `model-broker-${name.toLowerCase()}`;
      const { client_secret } = await w.kms.admin.registerBroker(brokerId);
      w.slots.set(name, await w.startBroker(name, brokerId, client_secret, 0));
    }
    return w;
  }

  url(name: BrokerName): string {
    return this.slot(name).running.urls.mqtt!;
  }

  /** The running broker (its Aedes instance and plugin), for the harness' observers. */
  broker(name: BrokerName): RunningBroker {
    return this.slot(name).running;
  }

  generation(name: BrokerName): number {
    return this.slot(name).generation;
  }

  /** Resolves when the next CONNECT on broker `name` reaches its authenticate hook. */
  nextAuthentication(name: BrokerName): Promise<void> {
    return new Promise((resolve) => this.slot(name).onAuthenticate.push(resolve));
  }

  /** Called with every message an application receives on any broker. */
  onAppMessage(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Sends a command to a device as the application would, on broker `name`. */
  async command(name: BrokerName, topic: string, payload: Buffer): Promise<void> {
    await this.slot(name).app.publishAsync(topic, payload, { qos: 1 });
  }

  /**
   * A broker crash: from this moment it handles nothing more (no will is published, nothing is claimed), its
   * connections die, and a new instance starts with the same id and no memory of the old one.
   */
  async restartBroker(name: BrokerName): Promise<void> {
    const old = this.slot(name);
    const aedes = old.running.aedes;
    aedes.authenticate = (_client, _username, _password, cb) => cb(null, false);
    aedes.authorizePublish = (_client, _packet, cb) => cb(new Error('crashed'));
    for (const s of old.streams.values()) s.destroy();
    await old.app.endAsync(true).catch(() => undefined);
    await old.running.close();
    const next = await this.startBroker(name, old.brokerId, old.secret, old.generation + 1);
    this.slots.set(name, next);
  }

  /** Stops the key service and starts it again on the same data dir and port. */
  async restartKms(): Promise<void> {
    await this.stopKms();
    await this.resumeKms();
  }

  /** Stops the key service (an outage); resumeKms() brings it back on the same data dir and port. */
  async stopKms(): Promise<void> {
    await this.kms.stop();
  }

  async resumeKms(): Promise<void> {
    await this.startKms(this.kmsPort);
  }

  /**
   * Waits until the brokers have caught up with the harness: no hook still working, and every connection the
   * harness closed also closed at the broker (and the reverse, `peers` being the harness-side sockets by local
   * port). Event-driven; the deadline only turns a hang into a failure with a message.
   */
  async settle(peers: Map<number, { destroyed: boolean }>, ms = 10_000): Promise<void> {
    const deadline = Date.now() + ms;
    for (let round = 0; ; round++) {
      // A few turns of the event loop settle most steps; past those, poll without spinning (the loop is shared
      // with the brokers and the key service the harness waits for).
      await new Promise((r) => (round < 4 ? setImmediate(r) : setTimeout(r, 1)));
      const busy = [...this.slots.values()].filter((s) => s.inflight > 0).map((s) => `${s.name}: ${s.inflight} hooks`);
      for (const [port, socket] of peers) {
        const serverOpen = [...this.slots.values()].some((s) => s.streams.has(port));
        if (socket.destroyed && serverOpen) busy.push(`port ${port} still open at the broker`);
        if (!socket.destroyed && !serverOpen) busy.push(`port ${port} still open at the device`);
      }
      for (const s of this.slots.values()) {
        // The plugin releases a closed client's state once its will (if one is due) is settled.
        const states = (s.running.plugin as unknown as { ctx: { states: Map<Client, unknown> } }).ctx.states;
        for (const client of states.keys()) {
          if (client.conn.destroyed) busy.push(`${s.name}: ${client.id} closed but not released`);
        }
      }
      if (busy.length === 0) {
        // Let the close listeners (the plugin releases the client's state on close) run.
        await new Promise((r) => setImmediate(r));
        return;
      }
      if (Date.now() > deadline) throw new Error(`the system did not settle: ${busy.join('; ')}`);
    }
  }

  /**
   * The key claims of `deviceId` recorded in the key service's audit log after audit row `after` (read-only
   * SQLite, the service keeps running), with the row id to continue from.
   */
  claimsSince(deviceId: string, after: number): { claims: ClaimRecord[]; last: number } {
    const q = this.queries();
    const rows = q.claims.all(deviceId, after) as Array<{ id: number; actor: string; action: string; detail: string }>;
    if (rows.length === 0) return { claims: [], last: after };
    // ETSI key ids are hashes of (device, index) (docs/PROTOCOL.md §7): the keys table maps them back.
    let index = this.keyIndices.get(deviceId);
    if (
      !index ||
      rows.some((r) => !(JSON.parse(r.detail) as { key_IDs: string[] }).key_IDs.every((id) => index!.has(id)))
    ) {
      index = new Map(
        (q.keyIds.all(deviceId) as Array<{ key_id: string; key_index: number }>).map((k) => [k.key_id, k.key_index]),
      );
      this.keyIndices.set(deviceId, index);
    }
    const claims = rows.map((r): ClaimRecord => {
      const d = JSON.parse(r.detail) as { key_IDs: string[]; session: string | null };
      return {
        kind: r.action === 'key.claim.dec' ? 'dec' : 'enc',
        actor: r.actor,
        session: d.session,
        keyIndices: d.key_IDs.map((id) => index.get(id) ?? -1),
      };
    });
    return { claims, last: rows.at(-1)!.id };
  }

  /** The device's unused (filled) keys at the key service, by direction. */
  pool(deviceId: string): { up: number; down: number } {
    const rows = this.queries().pool.all(deviceId) as Array<{ direction: 'up' | 'down'; n: number }>;
    const levels = { up: 0, down: 0 };
    for (const r of rows) levels[r.direction] = r.n;
    return levels;
  }

  /** One read-only connection to the key service's database, kept open across its restarts (same file, WAL). */
  private queries() {
    if (!this.db) {
      const db = new Database(join(this.dataDir, DB_FILE), { readonly: true, fileMustExist: true });
      this.db = {
        db,
        claims: db.prepare(
          `SELECT id, actor, action, detail FROM audit WHERE device_id = ? AND id > ? AND action IN ('key.claim.dec', 'key.claim.enc') ORDER BY id`,
        ),
        keyIds: db.prepare(`SELECT key_id, key_index FROM keys WHERE device_id = ?`),
        pool: db.prepare(
          `SELECT direction, count(*) AS n FROM keys WHERE device_id = ? AND state = 'filled' GROUP BY direction`,
        ),
      };
    }
    return this.db;
  }

  logs(): string {
    return this.logLines.join('');
  }

  async stop(): Promise<void> {
    this.db?.db.close();
    for (const s of this.slots.values()) {
      await s.app.endAsync(true).catch(() => undefined);
      await s.running.close();
    }
    await this.kms.stop();
    removeDir(this.dataDir);
  }

  private slot(name: BrokerName): BrokerSlot {
    return this.slots.get(name)!;
  }

  private async startKms(port = 0): Promise<void> {
    this.kms = await startTestKms({ port, logLevel: 'warn', loginLimits: SINGLE_HOST_LOGIN_LIMITS }, this.dataDir);
  }

  private async startBroker(name: BrokerName, brokerId: string, secret: string, generation: number) {
    const logger = pino(
      { level: 'warn' },
      new Writable({
        write: (c, _e, cb) => {
          if (this.logLines.length < 2000) this.logLines.push(`[${name}${generation}] ${c}`);
          cb();
        },
      }),
    );
    const running = await startBroker(
      loadBrokerConfig(
        {
          mqtt: { port: 0 },
          http: null,
          // The model's broker restart loses the broker's state, as it expects (test/broker/durable.test.ts keeps it).
          persistence: 'memory',
          kmsUrl: `http://127.0.0.1:${this.kmsPort || new URL(this.kms.url).port}`,
          brokerId,
          brokerSecret: secret,
          revocationPollMs: 60_000,
        },
        { env: {} },
      ),
      { logger },
    );
    const slot: BrokerSlot = {
      name,
      brokerId,
      secret,
      running,
      app: undefined as unknown as MqttClient,
      streams: new Map(),
      inflight: 0,
      onAuthenticate: [],
      generation,
    };
    this.observe(slot);
    slot.app = await this.connectApp(running.urls.mqtt!, `${name}${generation}`);
    return slot;
  }

  /** Wraps the plugin's hooks to count what is in flight and record the envelope headers the broker accepted. */
  private observe(slot: BrokerSlot): void {
    const aedes = slot.running.aedes;
    const handle = aedes.handle.bind(aedes);
    aedes.handle = ((stream: Duplex, req?: unknown) => {
      const port = (stream as { remotePort?: number }).remotePort;
      if (port !== undefined) {
        slot.streams.set(port, stream);
        stream.once('close', () => {
          if (slot.streams.get(port) === stream) slot.streams.delete(port);
        });
      }
      return handle(stream, req as never);
    }) as typeof aedes.handle;
    const authenticate = aedes.authenticate;
    aedes.authenticate = (client, username, password, cb) => {
      slot.inflight++;
      slot.onAuthenticate.splice(0).forEach((f) => f());
      authenticate.call(aedes, client, username, password, (err, ok) => {
        slot.inflight--;
        cb(err, ok);
      });
    };
    const authorizePublish = aedes.authorizePublish;
    aedes.authorizePublish = (client: Client | null, packet: PublishPacket, cb: (err?: Error | null) => void) => {
      const header = client && !client.id.includes('/') ? headerOf(packet.payload as Buffer) : undefined;
      const isWill = client ? (client as unknown as { will?: unknown }).will === packet : false;
      slot.inflight++;
      authorizePublish!.call(aedes, client, packet, (err?: Error | null) => {
        slot.inflight--;
        // A duplicate the broker acknowledged and passes on to no one is not accepted (broker/hooks/publish.ts).
        if (!err && header && client && packet.payload !== DROPPED_PAYLOAD) {
          this.accepted.push({
            broker: slot.name,
            generation: slot.generation,
            deviceId: client.id,
            direction: isWill ? 'will' : 'up',
            ...header,
          });
        }
        cb(err);
      });
    };
  }

  private async connectApp(url: string, tag: string): Promise<MqttClient> {
    // The application keeps its token across broker restarts, as a real one would until it expires.
    this.appToken ??= (await this.kms.anon.clientToken(APP_ID, this.appSecret)).access_token;
    const access_token = this.appToken;
    const app = await mqtt.connectAsync(url, {
      clientId: `${APP_ID}/${tag}`,
      username: APP_ID,
      password: access_token,
      reconnectPeriod: 0,
    });
    app.on('message', (topic, payload) => this.listeners.forEach((l) => l(topic, payload)));
    await app.subscribeAsync(['devices/+/up/#', 'devices/+/status'], { qos: 1 });
    return app;
  }
}

function headerOf(payload: Buffer): { keyIndex: number; seq: number } | undefined {
  try {
    const p = parseEnvelope(payload);
    return { keyIndex: p.keyIndex, seq: p.seq };
  } catch {
    return undefined;
  }
}
