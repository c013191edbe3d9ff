// A simulated terminal: its emulated security chip logs in, connects over MQTT (with a will the chip sealed, if
// any), publishes sealed telemetry and opens the commands it receives. One session (fresh uplink key) per
// connection, as a real terminal would.
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
}

export class SimulatedDevice {
  private client: MqttClient | undefined;
  private seq = 0;
  readonly stats = { sent: 0, commands: 0, commandErrors: 0, sessions: 0 };

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
    const kms = new KmsClient(this.o.kmsUrl);
    const { challenge } = await kms.challenge(this.id);
    const mac = Buffer.from(this.chip.loginProof(Buffer.from(challenge, 'base64'))).toString('base64');
    const { access_token } = await kms.deviceToken(this.id, challenge, mac);
    this.chip.beginSession();
    this.stats.sessions++;
    const will = this.o.will;
    const client = await mqtt.connectAsync(this.o.brokerUrl, {
      clientId: this.id,
      username: this.id,
      password: access_token,
      reconnectPeriod: 0,
      clean: true,
      ...(will && {
        will: {
          topic: will.topic,
          payload: Buffer.from(this.chip.sealWill(will.payload, will.topic)),
          qos: will.qos ?? 0,
          retain: will.retain ?? false,
        },
      }),
    });
    client.on('message', (topic, payload) => {
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
    await client.subscribeAsync(`devices/${this.id}/down/#`, { qos: this.o.qos ?? 1 });
    this.client = client;
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
    await this.client?.endAsync();
    this.client = undefined;
    this.chip.endSession();
  }
}
