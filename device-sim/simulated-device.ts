// A simulated terminal: its emulated security chip logs in, connects over MQTT (with a will the chip sealed, if
// any), publishes sealed telemetry and opens the commands it receives. One chip session per connection, as
// docs/PROTOCOL.md §9.1 asks of a real terminal; the broker's status notices say why a message was refused.
import mqtt, { type MqttClient } from 'mqtt';
import type { SecurityChip } from '../hsm-emulator/chip.js';
import { KmsClient } from '../kms-api/client.js';

export interface DeviceTelemetry {
  device: string;
  seq: number;
  sentAt: number;
  temperature: number;
}

export interface SimulatedDeviceOptions {
  brokerUrl: string;
  kmsUrl: string;
  qos?: 0 | 1;
  onCommand?: (command: string) => void;
  onError?: (kind: string, err: Error) => void;
  /** A will in the device's uplink space: sealed by the chip at each CONNECT, opened by the broker if published. */
  will?: { topic: string; payload: Uint8Array; qos?: 0 | 1 | 2; retain?: boolean };
  /**
   * Reconnect after a lost connection (a broker restart, a network cut): log in again and start a new chip session
   * after a backoff that doubles from minMs to maxMs, with jitter so a fleet does not return in one instant.
   */
  reconnect?: { minMs: number; maxMs: number };
  /** Called after each successful reconnect. */
  onReconnect?: () => void;
}

/** How long to wait before reconnect attempt `attempt` (0-based): doubling from min to max, then 50-100% of it. */
export function backoffMs(attempt: number, minMs: number, maxMs: number, random = Math.random()): number {
  return Math.round(Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30)) * (0.5 + random / 2));
}

export class SimulatedDevice {
  private client: MqttClient | undefined;
  private seq = 0;
  private stopped = false;
  private attempt = 0;
  private retry: NodeJS.Timeout | undefined;
  readonly stats = { sent: 0, commands: 0, commandErrors: 0, sessions: 0, refusals: 0, reconnects: 0 };
  /** The broker's last status notice (docs/PROTOCOL.md §9.4): why it refused a message of this device. */
  lastRefusal: { reason: string; topic: string; key_index?: number } | undefined;

  constructor(
    readonly chip: SecurityChip,
    private readonly o: SimulatedDeviceOptions,
  ) {}

  get id(): string {
    return this.chip.deviceId;
  }

  get uplinkTopic(): string {
    return `devices/${this.id}/up/telemetry`;
  }

  /** Login (challenge-response with the chip's login key), new chip session, MQTT CONNECT, subscribe to commands. */
  async connect(): Promise<void> {
    this.stopped = false;
    const kms = new KmsClient(this.o.kmsUrl);
    const { challenge } = await kms.challenge(this.id);
    const mac = Buffer.from(this.chip.loginProof(Buffer.from(challenge, 'base64'))).toString('base64');
    const { access_token } = await kms.deviceToken(this.id, challenge, mac);
    this.chip.beginSession();
    this.stats.sessions++;
    const will = this.o.will;
    const client = await mqtt.connectAsync(
      this.o.brokerUrl,
      {
        clientId: this.id,
        username: this.id,
        password: access_token,
        reconnectPeriod: 0,
        connectTimeout: 10_000,
        clean: true,
        ...(will && {
          will: {
            topic: will.topic,
            payload: Buffer.from(this.chip.sealWill(will.payload, will.topic)),
            qos: will.qos ?? 0,
            retain: will.retain ?? false,
          },
        }),
        // Without retries a refused or failed connection rejects instead of leaving the promise unsettled.
      },
      false,
    );
    const statusTopic = `devices/${this.id}/status`;
    client.on('message', (topic, payload) => {
      if (topic === statusTopic) {
        this.stats.refusals++;
        this.lastRefusal = parseNotice(payload);
        return;
      }
      try {
        const command = Buffer.from(this.chip.openDownlink(payload, topic)).toString('utf8');
        this.stats.commands++;
        this.o.onCommand?.(command);
      } catch (err) {
        this.stats.commandErrors++;
        this.o.onError?.('command', err as Error);
      }
    });
    client.on('error', (err) => this.o.onError?.('mqtt', err));
    client.once('close', () => {
      // Publishes still waiting for their PUBACK fail now rather than never settle.
      client.end(true);
      if (this.client === client) this.client = undefined;
      if (!this.stopped && this.o.reconnect) this.scheduleReconnect();
    });
    this.client = client;
    await client.subscribeAsync({ [`devices/${this.id}/down/#`]: { qos: this.o.qos ?? 1 }, [statusTopic]: { qos: 0 } });
  }

  private scheduleReconnect(): void {
    const { minMs, maxMs } = this.o.reconnect!;
    clearTimeout(this.retry);
    this.retry = setTimeout(
      () => {
        this.retry = undefined;
        if (this.stopped) return;
        this.connect().then(
          () => {
            this.attempt = 0;
            this.stats.reconnects++;
            this.o.onReconnect?.();
          },
          (err: Error) => {
            this.attempt++;
            this.o.onError?.('reconnect', err);
            if (!this.stopped && !this.client && !this.retry) this.scheduleReconnect();
          },
        );
      },
      backoffMs(this.attempt, minMs, maxMs),
    );
  }

  get connected(): boolean {
    return this.client?.connected ?? false;
  }

  /** Seals one telemetry reading in the chip and publishes it. */
  async publishTelemetry(): Promise<DeviceTelemetry> {
    if (!this.client) throw new Error(`${this.id} is not connected`);
    const reading: DeviceTelemetry = {
      device: this.id,
      seq: this.seq++,
      sentAt: Date.now(),
      temperature: 20 + Math.round(Math.random() * 80) / 10,
    };
    const envelope = this.chip.sealUplink(Buffer.from(JSON.stringify(reading)), this.uplinkTopic);
    await this.client.publishAsync(this.uplinkTopic, Buffer.from(envelope), { qos: this.o.qos ?? 1 });
    this.stats.sent++;
    return reading;
  }

  async disconnect(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retry);
    await this.client?.endAsync();
    this.client = undefined;
    this.chip.endSession();
  }
}

function parseNotice(payload: Buffer): { reason: string; topic: string; key_index?: number } | undefined {
  try {
    const n = JSON.parse(payload.toString('utf8')) as { reason?: unknown; topic?: unknown; key_index?: unknown };
    if (typeof n.reason !== 'string' || typeof n.topic !== 'string') return undefined;
    return { reason: n.reason, topic: n.topic, ...(typeof n.key_index === 'number' && { key_index: n.key_index }) };
  } catch {
    return undefined;
  }
}
