// Broker authentication and authorization with real mqtt.js clients: CONNACK codes, SUBACK 0x80, $SYS, revocation;
// and what /metrics exposes.
import fs from 'node:fs';
import { connect } from 'node:net';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { PER_CONNECTION_DEFAULT_METRICS } from '../../broker/server.js';
import { closed, startTestSystem, type TestSystem } from '../helpers/system.js';
import { fixedHeader } from '../helpers/raw-mqtt.js';

let sys: TestSystem;
beforeAll(async () => {
  sys = await startTestSystem();
});
afterAll(async () => {
  await sys.stop();
});

/** The CONNACK return code a connection attempt gets (0 when accepted). */
async function connackCode(options: mqtt.IClientOptions): Promise<number> {
  try {
    const c = await mqtt.connectAsync(sys.mqttUrl, { reconnectPeriod: 0, connectTimeout: 5000, ...options });
    await c.endAsync(true);
    return 0;
  } catch (err) {
    return (err as { code?: number }).code ?? -1;
  }
}

describe('CONNECT', () => {
  it('a device with its token connects; wrong, garbled or missing tokens get CONNACK 4', async () => {
    const chip = await sys.device('dev-auth');
    const token = await sys.deviceToken(chip);
    expect(await connackCode({ clientId: 'dev-auth', username: 'dev-auth', password: token })).toBe(0);
    expect(
      await connackCode({ clientId: 'dev-auth', username: 'dev-auth', password: `${token.slice(0, -3)}AAA` }),
    ).toBe(4);
    expect(await connackCode({ clientId: 'dev-auth', username: 'dev-auth', password: 'qk1.x.y' })).toBe(4);
    expect(await connackCode({ clientId: 'dev-auth', username: 'dev-auth' })).toBe(4);
    expect(await connackCode({ clientId: 'dev-auth' })).toBe(4);
  });

  it("another device's token, or a device token under another client id, is refused", async () => {
    const a = await sys.device('dev-a');
    const token = await sys.deviceToken(a);
    expect(await connackCode({ clientId: 'dev-b', username: 'dev-b', password: token })).toBe(4);
    expect(await connackCode({ clientId: 'someone', username: 'dev-a', password: token })).toBe(5);
  });

  it('an empty client id with clean session off gets CONNACK 2 [MQTT-3.1.3-8]', async () => {
    // mqtt.js refuses to send such a CONNECT, so this one is written by hand.
    const chip = await sys.device('dev-empty-id');
    const token = await sys.deviceToken(chip);
    const { port } = new URL(sys.mqttUrl);
    const socket = connect(Number(port), '127.0.0.1');
    // CONNACK is 0x20 0x02 <session present> <return code>.
    const connack = new Promise<number>((resolve) =>
      socket.once('data', (d: Buffer) => resolve(d[0] === 0x20 ? d[3]! : -1)),
    );
    // CONNECT, MQTT 3.1.1 §3.1: flags 0xC0 = username + password, clean session 0; client id of length 0.
    const str = (b: Buffer) => Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b]);
    const body = Buffer.concat([
      str(Buffer.from('MQTT')),
      Buffer.from([4, 0xc0, 0, 30]),
      str(Buffer.alloc(0)),
      str(Buffer.from('dev-empty-id')),
      str(Buffer.from(token)),
    ]);
    socket.write(Buffer.concat([fixedHeader(0x10, body.length), body]));
    expect(await connack).toBe(2);
    socket.destroy();
  });

  it('a revoked device connected now is disconnected within 5 seconds, and cannot come back', async () => {
    const chip = await sys.device('dev-revoke');
    const token = await sys.deviceToken(chip);
    chip.beginSession();
    const c = await mqtt.connectAsync(sys.mqttUrl, {
      clientId: 'dev-revoke',
      username: 'dev-revoke',
      password: token,
      reconnectPeriod: 0,
    });
    const started = Date.now();
    await sys.kms.admin.revokeDevice('dev-revoke', 'test');
    await closed(c, 5000);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(await connackCode({ clientId: 'dev-revoke', username: 'dev-revoke', password: token })).toBe(4);
  });
});

describe('topic permissions', () => {
  it("a device's subscription outside its downlink space gets SUBACK 0x80; inside it is granted", async () => {
    const chip = await sys.device('dev-sub');
    const c = await sys.connectDevice(chip);
    // mqtt.js reports a SUBACK holding 0x80 as an error that carries the packet.
    const suback = await c
      .subscribeAsync({
        'devices/dev-sub/down/#': { qos: 1 },
        'devices/other/down/#': { qos: 1 },
        'devices/+/up/#': { qos: 0 },
        '$SYS/#': { qos: 0 },
      })
      .then(
        () => undefined,
        (err: { packet?: { granted: number[] } }) => err.packet?.granted,
      );
    expect(suback).toEqual([1, 128, 128, 128]);
    expect((await c.subscribeAsync('devices/dev-sub/down/cmd', { qos: 1 }))[0]!.qos).toBe(1);
    await c.endAsync();
  });

  it('a device publishing outside its uplink space is disconnected', async () => {
    const chip = await sys.device('dev-pub');
    const c = await sys.connectDevice(chip);
    c.publish('devices/other/up/t', Buffer.from(chip.sealUplink(Buffer.from('x'), 'devices/other/up/t')));
    await closed(c);
  });

  it('an app publishing into a device uplink space, or to $SYS, is disconnected', async () => {
    for (const topic of ['devices/dev-x/up/fake', '$SYS/broker']) {
      const app = await sys.connectApp(`app-bad-${topic.length}`, { publish: ['#'], subscribe: ['#'] });
      app.publish(topic, 'spoof');
      await closed(app);
    }
  });
});

describe('metrics', () => {
  it('counts connected clients by role, down again when they leave', async () => {
    const gauge = async (role: string) => {
      const text = await (await fetch(`${sys.broker.urls.http}/metrics`)).text();
      return Number(new RegExp(`^broker_connected_clients\\{role="${role}"\\} (-?\\d+)`, 'm').exec(text)?.[1] ?? 0);
    };
    const apps = await gauge('app');
    const devices = await gauge('device');
    const app = await sys.connectApp('app-gauge');
    const chip = await sys.device('dev-gauge');
    const dev = await sys.connectDevice(chip);
    expect([await gauge('app'), await gauge('device')]).toEqual([apps + 1, devices + 1]);
    await app.endAsync();
    await dev.endAsync();
    await new Promise((r) => setTimeout(r, 100));
    expect([await gauge('app'), await gauge('device')]).toEqual([apps, devices]);
  });

  it('a scrape does not walk every connection: no handle listing, no read of /proc/self/fd', async () => {
    const handles = vi.spyOn(process as unknown as { _getActiveHandles(): unknown[] }, '_getActiveHandles');
    const resources = vi.spyOn(process, 'getActiveResourcesInfo');
    const readdir = vi.spyOn(fs, 'readdirSync');
    try {
      const text = await (await fetch(`${sys.broker.urls.http}/metrics`)).text();
      expect(text).toMatch(/^broker_connected_clients/m);
      expect(text).toMatch(/^broker_nodejs_eventloop_lag_max_seconds/m);
      for (const name of PER_CONNECTION_DEFAULT_METRICS) expect(text).not.toMatch(new RegExp(`^${name}[ {]`, 'm'));
      expect(handles).not.toHaveBeenCalled();
      expect(resources).not.toHaveBeenCalled();
      expect(readdir).not.toHaveBeenCalledWith('/proc/self/fd');
    } finally {
      vi.restoreAllMocks();
    }
  });
});

describe('observability', () => {
  const lines = () =>
    sys
      .logs()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);

  it('a refused CONNECT is logged at warn with client id, principal, reason and source; never the token', async () => {
    const chip = await sys.device('dev-logged');
    const token = await sys.deviceToken(chip);
    expect(await connackCode({ clientId: 'dev-logged', username: 'dev-logged', password: `${token}x` })).toBe(4);
    const line = lines().find((l) => l.msg === 'connect refused' && l.client === 'dev-logged');
    expect(line).toMatchObject({ level: 40, principal: 'dev-logged', returnCode: 4 });
    expect(line!.reason).toMatch(/TOKEN_ERR_/);
    expect(line!.source).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(sys.logs()).not.toContain(token);
  });

  it('connects and disconnects are logged at info with the reason the connection ended', async () => {
    const chip = await sys.device('dev-lifecycle');
    const dev = await sys.connectDevice(chip);
    await dev.endAsync();
    await vi.waitFor(() =>
      expect(lines().find((l) => l.msg === 'client disconnected' && l.client === 'dev-lifecycle')).toMatchObject({
        level: 30,
        role: 'device',
        reason: 'disconnect',
      }),
    );
    expect(lines().find((l) => l.msg === 'client connected' && l.client === 'dev-lifecycle')).toMatchObject({
      level: 30,
      principal: 'dev-lifecycle',
    });
  });

  it('/metrics counts uplink messages by outcome, envelope bytes each way, and whether the key service is up', async () => {
    const metric = async (name: string) => {
      const text = await (await fetch(`${sys.broker.urls.http}/metrics`)).text();
      const line = text.split('\n').find((l) => l.startsWith(`${name} `));
      return line ? Number(line.split(' ')[1]) : 0;
    };
    const opened = await metric('broker_uplink_total{outcome="opened"}');
    const up = await metric('broker_payload_bytes_total{direction="up"}');
    const down = await metric('broker_payload_bytes_total{direction="down"}');
    const chip = await sys.device('dev-counted');
    const dev = await sys.connectDevice(chip);
    await dev.subscribeAsync('devices/dev-counted/down/#', { qos: 1 });
    const app = await sys.connectApp('app-counted');
    await app.subscribeAsync('devices/dev-counted/up/#', { qos: 1 });
    const topic = 'devices/dev-counted/up/t';
    const envelope = Buffer.from(chip.sealUplink(Buffer.from('12345'), topic));
    await dev.publishAsync(topic, envelope, { qos: 1 });
    const got = new Promise((r) => dev.once('message', r));
    await app.publishAsync('devices/dev-counted/down/cmd', 'abc', { qos: 1 });
    await got;
    expect(await metric('broker_uplink_total{outcome="opened"}')).toBe(opened + 1);
    expect(await metric('broker_payload_bytes_total{direction="up"}')).toBe(up + envelope.length);
    expect(await metric('broker_payload_bytes_total{direction="down"}')).toBe(down + 3 + 26);
    expect(await metric('broker_kms_up')).toBe(1);
    dev.publish(topic, Buffer.from('plain'), { qos: 1 });
    await closed(dev);
    expect(await metric('broker_uplink_total{outcome="plaintext"}')).toBeGreaterThanOrEqual(1);
    await app.endAsync();
  });
});
