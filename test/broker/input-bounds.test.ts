// Bounded input on a running broker, driven by raw packets as a hostile client would send them: oversized and
// malformed headers before and after CONNECT, byte-at-a-time delivery, SUBSCRIBE with 10,000 filters, over TCP, TLS
// and WebSocket; memory stays bounded while many sockets try.
import { connect as netConnect } from 'node:net';
import type { Duplex } from 'node:stream';
import { connect as tlsConnect } from 'node:tls';
import mqttPacket from 'mqtt-packet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createWebSocketStream, WebSocket } from 'ws';
import { removeDir, tempDir } from '../helpers/kms.js';
import { nextMessage, startTestSystem, type TestSystem } from '../helpers/system.js';
import { selfSignedLoopbackCert } from '../helpers/certificates.js';

const MAX_PACKET = 128 * 1024;
const MAX_PRE_CONNECT = 2048;
const MAX_FILTERS = 32;
/** A fixed header declaring 268,435,455 bytes (MQTT 3.1.1 §2.2.3's largest), as a CONNECT and as a PUBLISH. */
const HUGE_CONNECT = Buffer.from([0x10, 0xff, 0xff, 0xff, 0x7f]);
const HUGE_PUBLISH = Buffer.from([0x30, 0xff, 0xff, 0xff, 0x7f]);

let sys: TestSystem;
let certDir: string;
beforeAll(async () => {
  certDir = tempDir('qkey-bounds-');
  const { cert, key } = selfSignedLoopbackCert(certDir);
  sys = await startTestSystem({
    maxPacketSize: MAX_PACKET,
    maxPreConnectBytes: MAX_PRE_CONNECT,
    maxTopicFiltersPerPacket: MAX_FILTERS,
    tls: { port: 0, cert, key },
    ws: { port: 0 },
  });
});
afterAll(async () => {
  await sys.stop();
  removeDir(certDir);
});

/** A raw MQTT connection: packets the broker sent, and whether it has closed. */
interface Raw {
  stream: Duplex;
  next(): Promise<mqttPacket.Packet>;
  closed: Promise<void>;
  /** Sends bytes; writes after the broker hung up are ignored. */
  send(bytes: Buffer): void;
}

function raw(kind: 'mqtt' | 'mqtts' | 'ws' = 'mqtt'): Promise<Raw> {
  const url = new URL(
    kind === 'mqtt' ? sys.broker.urls.mqtt! : kind === 'mqtts' ? sys.broker.urls.mqtts! : sys.broker.urls.ws!,
  );
  const port = Number(url.port);
  return new Promise((resolve, reject) => {
    let stream: Duplex;
    const ready = () => {
      const parser = mqttPacket.parser();
      const packets: mqttPacket.Packet[] = [];
      const waiting: Array<(p: mqttPacket.Packet) => void> = [];
      parser.on('packet', (p) => (waiting.length ? waiting.shift()!(p) : packets.push(p)));
      stream.on('data', (d: Buffer) => parser.parse(d));
      stream.on('error', () => undefined);
      // 'end' when the broker hangs up (a WebSocket stream emits no 'close' while its writable side is open).
      const closed = new Promise<void>((r) => stream.once('close', () => r()).once('end', () => r()));
      resolve({
        stream,
        closed,
        next: () => new Promise((r) => (packets.length ? r(packets.shift()!) : waiting.push(r))),
        send: (bytes) => {
          if (!stream.destroyed && stream.writable) stream.write(bytes);
        },
      });
    };
    if (kind === 'mqtt') stream = netConnect(port, '127.0.0.1', ready).setNoDelay(true);
    else if (kind === 'mqtts') stream = tlsConnect({ port, host: '127.0.0.1', rejectUnauthorized: false }, ready);
    else {
      const ws = new WebSocket(url, ['mqtt']);
      stream = createWebSocketStream(ws);
      ws.once('open', ready);
    }
    stream.once('error', reject);
  });
}

const tokens = new Map<string, string>();

/** A CONNECT from application `appId` with a valid token (the app is registered on first use). */
async function appConnect(appId: string, extra: Record<string, unknown> = {}): Promise<Buffer> {
  if (!tokens.has(appId)) {
    const { client_secret: secret } = await sys.kms.admin.registerApp(appId, {
      publish: [`apps/${appId}/#`],
      subscribe: [`apps/${appId}/#`, 'f/#'],
    });
    tokens.set(appId, (await sys.kms.anon.clientToken(appId, secret)).access_token);
  }
  return mqttPacket.generate({
    cmd: 'connect',
    protocolId: 'MQTT',
    protocolVersion: 4,
    clientId: `${appId}/bounds`,
    clean: true,
    keepalive: 60,
    username: appId,
    password: Buffer.from(tokens.get(appId)!),
    ...extra,
  } as mqttPacket.IConnectPacket);
}

async function refusals(reason: string): Promise<number> {
  const metric = await sys.broker.registry.getSingleMetric('broker_input_refused_total')!.get();
  return metric.values.find((v) => v.labels.reason === reason)?.value ?? 0;
}

/** The broker still serves: an application connects, subscribes and receives its own message. */
async function stillServes(tag: string): Promise<void> {
  const app = await sys.connectApp(`app-alive-${tag}`, { publish: ['alive/#'], subscribe: ['alive/#'] });
  await app.subscribeAsync('alive/#', { qos: 1 });
  const got = nextMessage(app);
  await app.publishAsync(`alive/${tag}`, 'ok', { qos: 1 });
  expect((await got).payload.toString()).toBe('ok');
  await app.endAsync();
}

describe('before CONNECT is accepted', () => {
  it.each(['mqtt', 'mqtts', 'ws'] as const)(
    'a 255 MiB CONNECT header over %s is refused at the header, not at the connect timeout',
    async (kind) => {
      const before = await refusals('too_large_before_connect');
      const c = await raw(kind);
      c.send(HUGE_CONNECT);
      c.send(Buffer.alloc(64 * 1024, 0x41));
      await c.closed;
      // Counted by the guard: Aedes' 30 s connect timeout would close it without counting.
      expect(await refusals('too_large_before_connect')).toBe(before + 1);
      await stillServes(kind);
    },
    20_000,
  );

  it('refuses a Remaining Length whose continuation bits never end, at the fourth byte', async () => {
    const before = await refusals('malformed_length');
    const c = await raw();
    for (let i = 0; i < 4; i++) c.send(Buffer.from(i === 0 ? [0x10, 0xff] : [0xff]));
    await c.closed;
    expect(await refusals('malformed_length')).toBe(before + 1);
  });

  it('refuses a first packet that is not CONNECT [MQTT-3.1.0-1]', async () => {
    const before = await refusals('not_connect');
    const c = await raw();
    c.send(HUGE_PUBLISH);
    await c.closed;
    expect(await refusals('not_connect')).toBe(before + 1);
  });

  it('takes a CONNECT of exactly maxPreConnectBytes, also byte at a time, and refuses one byte more', async () => {
    const sized = async (appId: string, size: number) => {
      const base = await appConnect(appId, { will: { topic: `apps/${appId}/will`, payload: Buffer.alloc(0) } });
      // The Remaining Length takes two bytes at both sizes, so the will payload adds exactly its length.
      return appConnect(appId, {
        will: { topic: `apps/${appId}/will`, payload: Buffer.alloc(size - base.length), qos: 0, retain: false },
      });
    };
    const exact = await sized('app-exact', MAX_PRE_CONNECT);
    expect(exact).toHaveLength(MAX_PRE_CONNECT);
    const whole = await raw();
    whole.send(exact);
    expect(await whole.next()).toMatchObject({ cmd: 'connack', returnCode: 0 });
    whole.stream.destroy();

    const slow = await raw();
    for (const b of exact) {
      slow.send(Buffer.from([b]));
      await new Promise((r) => setImmediate(r));
    }
    expect(await slow.next()).toMatchObject({ cmd: 'connack', returnCode: 0 });
    slow.stream.destroy();

    const before = await refusals('too_large_before_connect');
    const over = await raw();
    over.send(await sized('app-over', MAX_PRE_CONNECT + 1));
    await over.closed;
    expect(await refusals('too_large_before_connect')).toBe(before + 1);
  });

  it('keeps memory bounded while many sockets each declare 255 MiB and keep sending', async () => {
    const SOCKETS = 24;
    const body = Buffer.alloc(8 << 20, 0x41); // one buffer, written to every socket
    global.gc?.();
    const rssBefore = process.memoryUsage().rss;
    const conns = await Promise.all(Array.from({ length: SOCKETS }, () => raw()));
    for (const c of conns) {
      c.send(HUGE_CONNECT);
      c.send(body);
    }
    await Promise.all(conns.map((c) => c.closed));
    const grown = process.memoryUsage().rss - rssBefore;
    // 24 x 8 MiB was offered; buffering it would have grown RSS by about 200 MiB.
    expect(grown).toBeLessThan(48 << 20);
    await stillServes('many');
  }, 20_000);
});

describe('after CONNECT is accepted', () => {
  async function connected(appId: string): Promise<Raw> {
    const c = await raw();
    c.send(await appConnect(appId));
    expect(await c.next()).toMatchObject({ cmd: 'connack', returnCode: 0 });
    return c;
  }

  it('passes a PUBLISH of exactly maxPacketSize and refuses one byte more', async () => {
    const c = await connected('app-big');
    c.send(
      mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'apps/app-big/#', qos: 0 }] }),
    );
    expect(await c.next()).toMatchObject({ cmd: 'suback', granted: [0] });
    const publish = (payload: number) =>
      mqttPacket.generate({
        cmd: 'publish',
        topic: 'apps/app-big/t',
        payload: Buffer.alloc(payload, 7),
        qos: 0,
      } as mqttPacket.IPublishPacket);
    // The largest payload that fits: the Remaining Length takes more bytes as the payload grows.
    let payload = MAX_PACKET - publish(0).length;
    while (publish(payload).length > MAX_PACKET) payload--;
    const exact = publish(payload);
    expect(exact).toHaveLength(MAX_PACKET);
    c.send(exact);
    const echoed = await c.next();
    expect(echoed).toMatchObject({ cmd: 'publish', topic: 'apps/app-big/t' });
    expect((echoed as mqttPacket.IPublishPacket).payload).toHaveLength(payload);

    const before = await refusals('too_large');
    expect(publish(payload + 1)).toHaveLength(MAX_PACKET + 1);
    c.send(publish(payload + 1));
    await c.closed;
    expect(await refusals('too_large')).toBe(before + 1);
  });

  it('refuses a 255 MiB PUBLISH header at the header', async () => {
    const before = await refusals('too_large');
    const c = await connected('app-huge');
    c.send(HUGE_PUBLISH);
    await c.closed;
    expect(await refusals('too_large')).toBe(before + 1);
  });

  it('answers SUBSCRIBE with maxTopicFiltersPerPacket filters, and closes on 10,000 filters', async () => {
    const c = await connected('app-filters');
    const filters = (n: number) => Array.from({ length: n }, (_, i) => ({ topic: `f/${i}`, qos: 0 as const }));
    c.send(mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions: filters(MAX_FILTERS) }));
    expect(((await c.next()) as mqttPacket.ISubackPacket).granted).toHaveLength(MAX_FILTERS);
    c.send(
      mqttPacket.generate({
        cmd: 'unsubscribe',
        messageId: 2,
        unsubscriptions: filters(MAX_FILTERS).map((f) => f.topic),
      }),
    );
    expect(await c.next()).toMatchObject({ cmd: 'unsuback', messageId: 2 });

    const before = await refusals('too_many_filters');
    // About 90 KiB: within maxPacketSize, so the filter count is what refuses it.
    const flood = mqttPacket.generate({ cmd: 'subscribe', messageId: 3, subscriptions: filters(10_000) });
    expect(flood.length).toBeLessThan(MAX_PACKET);
    c.send(flood);
    await c.closed;
    expect(await refusals('too_many_filters')).toBe(before + 1);
  });
});

describe('WebSocket framing', () => {
  it('refuses a WebSocket message larger than the largest packet at its frame header', async () => {
    const ws = new WebSocket(sys.broker.urls.ws!, ['mqtt']);
    await new Promise((r) => ws.once('open', r));
    const code = new Promise<number>((r) => ws.once('close', (c) => r(c)));
    ws.send(Buffer.alloc(MAX_PACKET + 1));
    expect(await code).toBe(1009); // RFC 6455 §7.4.1: message too big
  });
});
