// A simulated back-end application: reads decrypted telemetry and sends plaintext commands through the broker.
import mqtt, { type MqttClient } from 'mqtt';
import { KmsClient } from '../kms-api/client.js';
import type { DeviceTelemetry } from './simulated-device.js';

export class SimulatedApp {
  /** Connections made after the first (mqtt.js reconnects, resubscribing, while the app token is valid). */
  reconnects = 0;

  private constructor(private readonly client: MqttClient) {
    client.on('connect', () => this.reconnects++);
  }

  /**
   * Connects with client credentials (an app token from the key service). A first connection that fails rejects;
   * with `reconnectMs`, a lost connection is retried every that many ms afterwards.
   */
  static async connect(
    brokerUrl: string,
    kmsUrl: string,
    appId: string,
    secret: string,
    options: { reconnectMs?: number } = {},
  ): Promise<SimulatedApp> {
    const { access_token } = await new KmsClient(kmsUrl).clientToken(appId, secret);
    const client = await mqtt.connectAsync(
      brokerUrl,
      {
        clientId: `${appId}/sim`,
        username: appId,
        password: access_token,
        reconnectPeriod: options.reconnectMs ?? 0,
        connectTimeout: 10_000,
      },
      false,
    );
    return new SimulatedApp(client);
  }

  get connected(): boolean {
    return this.client.connected;
  }

  async onTelemetry(
    handler: (t: DeviceTelemetry, topic: string) => void,
    onGarbage?: (topic: string) => void,
  ): Promise<void> {
    this.client.on('message', (topic, payload) => {
      try {
        handler(JSON.parse(payload.toString('utf8')) as DeviceTelemetry, topic);
      } catch {
        onGarbage?.(topic);
      }
    });
    await this.client.subscribeAsync('devices/+/up/#', { qos: 1 });
  }

  async command(deviceId: string, text: string): Promise<void> {
    await this.client.publishAsync(`devices/${deviceId}/down/cmd`, text, { qos: 1 });
  }

  async close(): Promise<void> {
    await this.client.endAsync(true);
  }
}
