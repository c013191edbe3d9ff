// Every delivery path with real mqtt.js clients: uplink opened for applications, refusals by reason, and downlink
// sealed per device for live, retained, offline-queue and redelivered-after-reconnect messages at QoS 0, 1 and 2.
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SecurityChip } from '../../hsm-emulator/chip.js';
import { parseEnvelope } from '../../protocol/index.js';
import { closed, nextMessage, startTestSystem, type TestSystem } from '../helpers/system.js';

let sys: TestSystem;
let app: MqttClient;
beforeAll(async () => {
  sys = await startTestSystem();
  app = await sys.connectApp('app-main');
  await app.subscribeAsync('devices/+/up/#', { qos: 2 });
});
afterAll(async () => {
  await sys.stop();
});

const up = (id: string, sub = 'telemetry') => `devices/${id}/up/${sub}`;
const down = (id: string, sub = 'cmd') => `devices/${id}/down/${sub}`;
const sealed = (chip: SecurityChip, topic: string, text: string) =>
  Buffer.from(chip.sealUplink(Buffer.from(text), topic));
const opened = (chip: SecurityChip, topic: string, payload: Buffer) =>
  Buffer.from(chip.openDownlink(payload, topic)).toString();

async function metric(name: string, label: string): Promise<number> {
  const text = await (await fetch(`${sys.broker.urls.http}/metrics`)).text();
  return Number(new RegExp(`^${name}\\{${label}\\} (\\d+)`, 'm').exec(text)?.[1] ?? 0);
}

describe('uplink', () => {
  it.each([0, 1, 2] as const)('applications receive the plaintext of a sealed QoS %i publish', async (qos) => {
    const chip = await sys.device(`dev-up-${qos}`);
    const dev = await sys.connectDevice(chip);
    const got = nextMessage(app, 5000, (t) => t === up(chip.deviceId));
    await dev.publishAsync(up(chip.deviceId), sealed(chip, up(chip.deviceId), `{"t":${qos}}`), { qos });
    expect((await got).payload.toString()).toBe(`{"t":${qos}}`);
    await dev.endAsync();
  });

  it('a burst of 20,000 sealed publishes written at once arrives complete and in order', async () => {
    const chip = await sys.device('dev-burst', 2, 8);
    const dev = await sys.connectDevice(chip);
    const topic = up(chip.deviceId, 'burst');
    const n = 20_000;
    const envelopes = Array.from({ length: n }, (_, i) => sealed(chip, topic, String(i)));
    const seen: number[] = [];
    const all = new Promise<void>((resolve) => {
      app.on('message', function onBurst(t, payload) {
        if (t !== topic) return;
        seen.push(Number(payload.toString()));
        if (seen.length === n) {
          app.off('message', onBurst);
          resolve();
        }
      });
    });
    // One synchronous loop: the broker finds thousands of packets buffered on the socket at a time.
    for (const e of envelopes) dev.publish(topic, e, { qos: 0 });
    await all;
    expect(seen).toEqual(Array.from({ length: n }, (_, i) => i));
    await dev.endAsync();
  }, 60_000);

  it('a retained uplink is stored as plaintext, and an empty retained payload clears it', async () => {
    const chip = await sys.device('dev-retain-up');
    const dev = await sys.connectDevice(chip);
    const topic = up('dev-retain-up', 'state');
    await dev.publishAsync(topic, sealed(chip, topic, 'on'), { qos: 1, retain: true });
    const late = await sys.connectApp('app-late');
    const got = nextMessage(late, 5000, (t) => t === topic);
    await late.subscribeAsync(topic, { qos: 1 });
    expect(await got).toMatchObject({ retain: true });
    expect((await got).payload.toString()).toBe('on');
    await dev.publishAsync(topic, Buffer.alloc(0), { qos: 1, retain: true });
    const later = await sys.connectApp('app-later');
    await later.subscribeAsync(topic, { qos: 1 });
    await expect(nextMessage(later, 500, (t) => t === topic)).rejects.toThrow(/no message/);
    await dev.endAsync();
  });

  it.each([
    [
      'replay',
      (chip: SecurityChip, t: string) => {
        const e = sealed(chip, t, 'once');
        return [e, e];
      },
    ],
    [
      'forged',
      (chip: SecurityChip, t: string) => {
        const e = sealed(chip, t, 'x');
        e[e.length - 1]! ^= 1;
        return [e];
      },
    ],
    ['plaintext', () => [Buffer.from('{"t":1}')]],
    ['malformed', () => [Buffer.concat([Buffer.from([9, 1]), Buffer.alloc(30)])]],
  ] as const)(
    'a %s publish is refused: the connection closes, nothing reaches applications, the reason is counted',
    async (reason, make) => {
      const chip = await sys.device(`dev-bad-${reason}`);
      const dev = await sys.connectDevice(chip);
      const topic = up(chip.deviceId);
      const before = await metric('broker_publish_rejected_total', `reason="${reason}"`);
      const seen: string[] = [];
      const onMsg = (t: string, p: Buffer) => t === topic && seen.push(p.toString());
      app.on('message', onMsg);
      for (const payload of make(chip, topic)) dev.publish(topic, payload, { qos: 1 });
      await closed(dev);
      await new Promise((r) => setTimeout(r, 200));
      app.off('message', onMsg);
      expect(seen.filter((s) => s !== 'once')).toEqual([]);
      expect(await metric('broker_publish_rejected_total', `reason="${reason}"`)).toBe(before + 1);
      expect(sys.logs()).not.toMatch(/"payload"/);
    },
  );

  it("an envelope sealed under another session's key is refused (foreign key)", async () => {
    const chip = await sys.device('dev-foreign');
    const first = await sys.connectDevice(chip);
    const topic = up('dev-foreign');
    const old = sealed(chip, topic, 'from session 1');
    await first.publishAsync(topic, old, { qos: 1 });
    await first.endAsync();
    const second = await sys.connectDevice(chip);
    // Session 2 replays session 1's envelope: that key belongs to session 1 for good.
    second.publish(topic, old, { qos: 1 });
    await closed(second);
  });
});

describe('downlink', () => {
  it.each([0, 1, 2] as const)('a live QoS %i command is sealed for the device, which opens it', async (qos) => {
    const chip = await sys.device(`dev-down-${qos}`);
    const dev = await sys.connectDevice(chip);
    await dev.subscribeAsync(down(chip.deviceId, '#'), { qos });
    const got = nextMessage(dev);
    await app.publishAsync(down(chip.deviceId), `reboot ${qos}`, { qos });
    const m = await got;
    expect(m.payload.toString()).not.toContain('reboot');
    expect(parseEnvelope(m.payload).keyIndex).toBeGreaterThanOrEqual(8); // a downlink-pool key
    expect(opened(chip, m.topic, m.payload)).toBe(`reboot ${qos}`);
    await dev.endAsync();
  });

  it('a retained command is sealed under the session key of whoever subscribes later', async () => {
    const chip = await sys.device('dev-retain-down');
    await app.publishAsync(down('dev-retain-down', 'config'), 'interval=60', { qos: 1, retain: true });
    for (let session = 0; session < 2; session++) {
      const dev = await sys.connectDevice(chip);
      const got = nextMessage(dev);
      await dev.subscribeAsync(down('dev-retain-down', '#'), { qos: 1 });
      const m = await got;
      expect(m.retain).toBe(true);
      expect(opened(chip, m.topic, m.payload)).toBe('interval=60');
      await dev.endAsync();
    }
  });

  it('a command queued while the device was offline arrives once, sealed under the new session key', async () => {
    const chip = await sys.device('dev-offline');
    const dev = await sys.connectDevice(chip, { clean: false });
    await dev.subscribeAsync(down('dev-offline', '#'), { qos: 1 });
    await dev.endAsync();
    await app.publishAsync(down('dev-offline'), 'while away', { qos: 1 });
    const received: string[] = [];
    const back = await sys.connectDevice(chip, { clean: false }, (c) =>
      c.on('message', (t, p) => received.push(opened(chip, t, p))),
    );
    await new Promise((r) => setTimeout(r, 500));
    expect(received).toEqual(['while away']);
    await back.endAsync();
  });

  it('an unacknowledged QoS 1 command is redelivered after reconnect, sealed afresh under the new session key', async () => {
    const chip = await sys.device('dev-redeliver');
    const first = await sys.connectDevice(chip, { clean: false });
    await first.subscribeAsync(down('dev-redeliver', '#'), { qos: 1 });
    // Never acknowledge: mqtt.js sends PUBACK only after handleMessage calls back.
    first.handleMessage = () => undefined;
    const got = nextMessage(first);
    await app.publishAsync(down('dev-redeliver'), 'must arrive', { qos: 1 });
    const m1 = await got;
    const key1 = parseEnvelope(m1.payload).keyIndex;
    await first.endAsync(true);
    let redelivered: ReturnType<typeof nextMessage> | undefined;
    const second = await sys.connectDevice(chip, { clean: false }, (c) => {
      redelivered = nextMessage(c);
    });
    const m2 = await redelivered!;
    const h = parseEnvelope(m2.payload);
    expect(h.keyIndex).not.toBe(key1); // sealed under the new session's key, not re-sent or double-sealed
    expect(opened(chip, m2.topic, m2.payload)).toBe('must arrive');
    await second.endAsync();
  });

  it('a device never receives another device’s commands, and every key is claimed by one session only', async () => {
    const a = await sys.device('dev-iso-a');
    const b = await sys.device('dev-iso-b');
    const ca = await sys.connectDevice(a);
    const cb = await sys.connectDevice(b);
    await ca.subscribeAsync(down('dev-iso-a', '#'), { qos: 1 });
    await cb.subscribeAsync(down('dev-iso-b', '#'), { qos: 1 });
    const gotA = nextMessage(ca);
    await app.publishAsync(down('dev-iso-a'), 'for a', { qos: 1 });
    expect(opened(a, (await gotA).topic, (await gotA).payload)).toBe('for a');
    await expect(nextMessage(cb, 300)).rejects.toThrow(/no message/);
    // Devices that connected twice used disjoint keys: each claimed key names one session. Only connections that
    // carried a message claimed any (§9): dev-offline's first connection carried none, dev-redeliver's both did.
    for (const [id, sessions] of [
      ['dev-redeliver', 2],
      ['dev-offline', 1],
    ] as const) {
      const claimed = (await sys.kms.admin.deviceKeys(id)).keys.filter((k) => k.state !== 'filled');
      expect(claimed.every((k) => k.claimed_by === 'test-broker' && k.claimed_session)).toBe(true);
      expect(new Set(claimed.map((k) => k.claimed_session)).size).toBe(sessions);
    }
  });
});
