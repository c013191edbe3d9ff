// Which WebSocket upgrades the broker accepts (broker/ws-upgrade.ts), on the real ws listener: the "mqtt" subprotocol
// only [MQTT-6.0.0-3]/[MQTT-6.0.0-4], and from a page only a listed Origin; a client without Origin (not a browser) as
// before. The frame-size bound (close 1009) is in input-bounds.test.ts.
import mqtt from 'mqtt';
import { WebSocket } from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadBrokerConfig } from '../../broker/config.js';
import { startTestSystem, type TestSystem } from '../helpers/system.js';

const PAGE = 'https://app.example';
let sys: TestSystem;

beforeAll(async () => {
  sys = await startTestSystem({ ws: { port: 0 }, wsOrigins: [PAGE] });
});
afterAll(() => sys.stop());

/** The HTTP status of the upgrade answer, or 101 and the selected subprotocol. */
function upgrade(protocols: string[] | undefined, origin?: string): Promise<{ status: number; protocol?: string }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(sys.broker.urls.ws!, protocols, origin ? { origin } : {});
    ws.once('open', () => {
      resolve({ status: 101, protocol: ws.protocol });
      ws.terminate();
    });
    ws.once('unexpected-response', (_req, res) => {
      resolve({ status: res.statusCode ?? 0 });
      res.resume();
    });
    ws.once('error', () => undefined);
  });
}

describe('WebSocket upgrades', () => {
  it('"mqtt" offered, no Origin: accepted, and the server selects "mqtt"', async () => {
    expect(await upgrade(['mqtt'])).toEqual({ status: 101, protocol: 'mqtt' });
    expect(await upgrade(['mqttv3.1', 'mqtt'])).toEqual({ status: 101, protocol: 'mqtt' });
  });

  it('no subprotocol, or only others: 400 before any MQTT byte', async () => {
    expect((await upgrade(undefined)).status).toBe(400);
    expect((await upgrade(['mqttv3.1'])).status).toBe(400);
    expect((await upgrade(['MQTT'])).status).toBe(400);
    expect((await upgrade(['chat', 'superchat'])).status).toBe(400);
  });

  it('a listed Origin is accepted (any letter case), any other refused 403', async () => {
    expect((await upgrade(['mqtt'], PAGE)).status).toBe(101);
    expect((await upgrade(['mqtt'], 'https://APP.example')).status).toBe(101);
    for (const origin of ['https://evil.example', 'http://app.example', `${PAGE}:444`, `${PAGE}.evil.example`, 'null'])
      expect((await upgrade(['mqtt'], origin)).status, origin).toBe(403);
    expect(sys.logs()).toMatch(/"reason":"origin".*"websocket upgrade refused"/);
  });

  it('mqtt.js over WebSocket connects as before', async () => {
    const c = await mqtt
      .connectAsync(sys.broker.urls.ws!, { reconnectPeriod: 0, connectTimeout: 3000 })
      .catch((e) => e);
    // No credentials: the broker answers CONNACK "not authorized" — the upgrade itself went through.
    expect(String(c)).toMatch(/Not authorized|Bad username/i);
  });

  it('wsOrigins takes origins only', () => {
    for (const bad of ['*', `${PAGE}/`, 'null', 'app.example'])
      expect(() => loadBrokerConfig({ wsOrigins: [bad] }, { env: {} }), bad).toThrow();
  });
});
