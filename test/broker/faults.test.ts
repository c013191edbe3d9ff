// Faults: the key service going away and coming back, and the broker being killed; plus the TLS, WebSocket and
// secure WebSocket listeners.
import mqtt from 'mqtt';
import { afterAll, describe, expect, it, vi } from 'vitest';
import type { SecurityChip } from '../../hsm-emulator/chip.js';
import { newKmsDir, removeDir, startTestKms, tempDir } from '../helpers/kms.js';
import { spawnQkey } from '../helpers/process.js';
import { closed, nextMessage, startTestSystem, systemOn } from '../helpers/system.js';
import { selfSignedLoopbackCert } from '../helpers/certificates.js';

const cleanup: Array<() => Promise<void> | void> = [];
afterAll(async () => {
  for (const f of cleanup.reverse()) await f();
});

/** Retries `check` until it passes or `ms` runs out (for effects that arrive with the next poll). */
async function eventually(check: () => Promise<void>, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

const topic = (id: string) => `devices/${id}/up/t`;
const sealed = (chip: SecurityChip, text: string) =>
  Buffer.from(chip.sealUplink(Buffer.from(text), topic(chip.deviceId)));

describe('key service outage', () => {
  it('connected sessions carry on, a new session is told kms_unavailable, and everything recovers by itself', async () => {
    const dataDir = newKmsDir();
    let kms = await startTestKms({}, dataDir);
    const port = Number(new URL(kms.url).port);
    const sys = await systemOn(kms);
    cleanup.push(() => removeDir(dataDir));
    const app = await sys.connectApp('app-outage');
    await app.subscribeAsync('devices/+/up/#', { qos: 1 });
    const chip = await sys.device('dev-outage');
    const other = await sys.device('dev-latecomer');
    const dev = await sys.connectDevice(chip);
    // Listening before the publish: the broker acknowledges a QoS 1 PUBLISH once it is routed (ack-after-store.ts).
    const first = nextMessage(app);
    await dev.publishAsync(topic('dev-outage'), sealed(chip, 'before'), { qos: 1 });
    expect((await first).payload.toString()).toBe('before');
    const latecomerToken = await sys.deviceToken(other);

    await kms.stop();
    // The session's uplink key is already claimed: telemetry keeps flowing with the key service down.
    const got = nextMessage(app);
    await dev.publishAsync(topic('dev-outage'), sealed(chip, 'during'), { qos: 1 });
    expect((await got).payload.toString()).toBe('during');
    // A CONNECT needs no key service (§9: nothing is claimed there); the new session's first envelope needs its key
    // claimed, so it is refused, and the device is told why on its status topic before the connection closes.
    other.beginSession();
    const late = await mqtt.connectAsync(sys.mqttUrl, {
      clientId: 'dev-latecomer',
      username: 'dev-latecomer',
      password: latecomerToken,
      reconnectPeriod: 0,
    });
    await late.subscribeAsync('devices/dev-latecomer/status', { qos: 0 });
    const notice = nextMessage(late);
    const ended = closed(late);
    late.publish(topic('dev-latecomer'), sealed(other, 'too early'), { qos: 1 });
    expect(JSON.parse((await notice).payload.toString())).toMatchObject({
      reason: 'kms_unavailable',
      topic: topic('dev-latecomer'),
      key_index: 0,
    });
    await ended;
    await eventually(async () => expect((await fetch(`${sys.broker.urls.http}/healthz`)).status).toBe(503));
    const kmsUp = async () =>
      /^broker_kms_up (\d)/m.exec(await (await fetch(`${sys.broker.urls.http}/metrics`)).text())?.[1];
    expect(await kmsUp()).toBe('0');
    // One line when the key service goes away, however many polls fail.
    await new Promise((r) => setTimeout(r, 500));
    expect(sys.logs().match(/"msg":"key service unreachable"/g)).toHaveLength(1);

    kms = await startTestKms({ port }, dataDir);
    // The next revocation-feed poll (every 200 ms here) marks the key service reachable again.
    await eventually(async () => expect((await fetch(`${sys.broker.urls.http}/healthz`)).status).toBe(200));
    expect(await kmsUp()).toBe('1');
    expect(sys.logs().match(/"msg":"key service reachable again"/g)).toHaveLength(1);
    // The honest reaction to any refusal: a new session, which is accepted.
    other.beginSession();
    const back = await mqtt.connectAsync(sys.mqttUrl, {
      clientId: 'dev-latecomer',
      username: 'dev-latecomer',
      password: latecomerToken,
      reconnectPeriod: 0,
    });
    const arrived = nextMessage(app);
    await back.publishAsync(topic('dev-latecomer'), sealed(other, 'after'), { qos: 1 });
    expect((await arrived).payload.toString()).toBe('after');
    await back.endAsync();
    await sys.stop();
  });
});

describe('broker killed', () => {
  it('devices reconnect to a restarted broker and continue on fresh keys; no key serves two sessions', async () => {
    const sys = await startTestSystem();
    cleanup.push(() => sys.stop());
    const { client_secret } = await sys.kms.admin.registerBroker('proc-broker');
    const env = { QKEY_BROKER_SECRET: client_secret, QKEY_BROKER_LOG_LEVEL: 'warn' };
    const data = tempDir();
    cleanup.push(() => removeDir(data));
    const args = [
      ...['broker', '--port', '0', '--http-port', 'off', '--kms', sys.kms.url, '--broker-id', 'proc-broker'],
      ...['--data', data],
    ];
    let broker = await spawnQkey(args, /mqtt (mqtt:\/\/\S+),?/, env);
    // `qkey broker` runs the broker on a thread whose semi-space V8 really set (reported from inside the thread).
    await vi.waitFor(() => expect(broker.output()).toMatch(/broker thread with 128 MiB semi-space/));
    const chip = await sys.device('dev-phoenix');
    const connect = async (url: string) => {
      chip.beginSession();
      const password = await sys.deviceToken(chip);
      return mqtt.connectAsync(url, { clientId: 'dev-phoenix', username: 'dev-phoenix', password, reconnectPeriod: 0 });
    };
    let dev = await connect(broker.ready);
    await dev.publishAsync(topic('dev-phoenix'), sealed(chip, 'one'), { qos: 1 });
    await broker.stop('SIGKILL');
    dev.end(true);
    broker = await spawnQkey(args, /mqtt (mqtt:\/\/\S+),?/, env);
    cleanup.push(() => void broker.stop());
    dev = await connect(broker.ready);
    await dev.publishAsync(topic('dev-phoenix'), sealed(chip, 'two'), { qos: 1 });
    await dev.endAsync();
    const keys = (await sys.kms.admin.deviceKeys('dev-phoenix')).keys.filter((k) => k.state !== 'filled');
    const up = keys.filter((k) => k.direction === 'up');
    expect(up).toHaveLength(2); // one uplink key per session
    expect(new Set(keys.map((k) => k.claimed_session)).size).toBe(2);
  });
});

describe('listeners', () => {
  it('MQTT over TLS, WebSocket and secure WebSocket carry the same protected traffic', async () => {
    const dir = tempDir('qkey-tls-');
    cleanup.push(() => removeDir(dir));
    const { cert, key } = selfSignedLoopbackCert(dir);
    const sys = await startTestSystem({ tls: { port: 0, cert, key }, ws: { port: 0 }, wss: { port: 0, cert, key } });
    cleanup.push(() => sys.stop());
    const app = await sys.connectApp('app-listeners');
    await app.subscribeAsync('devices/+/up/#', { qos: 1 });
    for (const url of [sys.broker.urls.mqtts!, sys.broker.urls.ws!, sys.broker.urls.wss!]) {
      const chip = await sys.device(`dev-${new URL(url).protocol.replace(':', '')}`);
      chip.beginSession();
      const password = await sys.deviceToken(chip);
      const dev = await mqtt.connectAsync(url, {
        clientId: chip.deviceId,
        username: chip.deviceId,
        password,
        reconnectPeriod: 0,
        rejectUnauthorized: false,
      });
      const got = nextMessage(app);
      await dev.publishAsync(topic(chip.deviceId), sealed(chip, url), { qos: 1 });
      expect((await got).payload.toString()).toBe(url);
      const sessions = sys.broker.plugin.sessions;
      await dev.endAsync();
      // The session is released when its connection closes, on every kind of listener.
      await eventually(async () => expect(sys.broker.plugin.sessions).toBe(sessions - 1));
    }
    // The WebSocket listeners pass the upgrade request along: the peer's address is logged.
    expect(sys.logs()).toMatch(/"client":"dev-ws","role":"device","principal":"dev-ws","source":"127\.0\.0\.1:\d+"/);
  });
});
