// The device gate (broker/hooks/forward.ts holdDeliveriesForKey) while the session's first downlink key is claimed:
// a delivery that is not sealed (an empty payload, the device's status topic, an end-to-end envelope) must not
// overtake a held command. Aedes' dedupe remembers the later message and would drop the held one, older, without a
// word when the claim answers (client.js getToForwardPacket: dedupe before authorizeForward).
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestSystem, type TestSystem } from '../helpers/system.js';

let sys: TestSystem;
let app: MqttClient;
const clients: MqttClient[] = [];
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  sys = await startTestSystem();
  app = await sys.connectApp('app-rev2-gate');
});
afterAll(async () => {
  await Promise.all(clients.map((c) => c.endAsync(true).catch(() => undefined)));
  await app.endAsync(true);
  await sys.stop();
});

describe('the device gate while the first downlink key is claimed', () => {
  it('a command held for the claim is not dropped because an unsealed message went out behind it', async () => {
    const chip = await sys.device('dev-rev2-gate', 4, 16);
    const dev = await sys.connectDevice(chip);
    clients.push(dev);
    const got: string[] = [];
    dev.on('message', (topic, payload) =>
      got.push(payload.length === 0 ? `empty:${topic}` : Buffer.from(chip.openDownlink(payload, topic)).toString()),
    );
    const base = `devices/${chip.deviceId}/down`;
    await dev.subscribeAsync(`${base}/#`, { qos: 1 });
    // The first command starts the claim of the session's first downlink key; the empty message needs no key.
    await Promise.all([
      app.publishAsync(`${base}/cmd`, 'first command', { qos: 1 }),
      app.publishAsync(`${base}/clear`, Buffer.alloc(0), { qos: 1 }),
    ]);
    await pause(1500);
    expect(got).toContain('first command');
  });
});
