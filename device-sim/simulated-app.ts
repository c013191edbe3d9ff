// A simulated back-end application: reads decrypted telemetry and sends plaintext commands through the broker.
import mqtt, { type MqttClient } from 'mqtt';
import { KmsClient } from '../kms-api/client.js';
import type { DeviceTelemetry } from './simulated-device.js';

export class SimulatedApp {
  private constructor(private readonly client: MqttClient) {}

  /** Connects with client credentials (an app token from the key service). */
  static async connect(brokerUrl: string, kmsUrl: string, appId: string, secret: string): Promise<SimulatedApp> {
    const { access_token } = await new KmsClient(kmsUrl).clientToken(appId, secret);
    const client = await mqtt.connectAsync(brokerUrl, {
      clientId: `${appId}/sim`,
      username: appId,
      password: access_token,
      reconnectPeriod: 0,
    });
    return new SimulatedApp(client);
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
    await this.client.endAsync();
  }
}
