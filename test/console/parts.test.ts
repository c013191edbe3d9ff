// The console's parts on their own: escaping, sessions and cookies, the Prometheus parser, the bounded broker
// reads, and the configuration rules (off by default; off loopback only with TLS).
import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadKmsConfig } from '../../key-service/config.js';
import { readBroker } from '../../key-service/console/broker-figures.js';
import { hostAllowed } from '../../key-service/console/guard.js';
import { escapeHtml, html } from '../../key-service/console/html.js';
import { brokerFigures, parsePrometheusText } from '../../key-service/console/prometheus.js';
import { ConsoleSessions, readCookie } from '../../key-service/console/sessions.js';

describe('html', () => {
  it('escapes every interpolated value, in text and in quoted attributes, and keeps nested templates', () => {
    expect(escapeHtml(`<a href="x" onclick='y'>&amp;</a>`)).toBe(
      '&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;amp;&lt;/a&gt;',
    );
    const evil = '"><script>x</script>';
    const out = html`<p title="${evil}">${evil}${html`<b>${evil}</b>`}${[evil, html`<i></i>`]}${null}${false}${3}</p>`;
    expect(out.text).toBe(
      '<p title="&quot;&gt;&lt;script&gt;x&lt;/script&gt;">&quot;&gt;&lt;script&gt;x&lt;/script&gt;' +
        '<b>&quot;&gt;&lt;script&gt;x&lt;/script&gt;</b>&quot;&gt;&lt;script&gt;x&lt;/script&gt;<i></i>3</p>',
    );
  });
});

describe('sessions', () => {
  it('expires on idle and on age, closes on request, and holds at most maxSessions', () => {
    let now = 0;
    const book = new ConsoleSessions({ idleMs: 100, maxMs: 250, maxSessions: 3 }, () => now);
    const a = book.open();
    expect(book.find(a.cookie)).toBe(a.session);
    now = 99;
    expect(book.find(a.cookie)).toBe(a.session);
    now = 198;
    expect(book.find(a.cookie)).toBe(a.session);
    now = 250;
    expect(book.find(a.cookie)).toBeUndefined(); // age
    const b = book.open();
    now = 350;
    expect(book.find(b.cookie)).toBeUndefined(); // idle
    const c = book.open();
    book.close(c.cookie);
    expect(book.find(c.cookie)).toBeUndefined();
    const [d, e, f] = [book.open(), book.open(), book.open()];
    book.find(d.cookie); // d used last: e is the least recently used
    const g = book.open();
    expect(book.size).toBe(3);
    expect(book.find(e.cookie)).toBeUndefined();
    for (const s of [d, f, g]) expect(book.find(s.cookie)).toBe(s.session);
    expect(new Set([d, f, g].map((s) => s.session.csrf)).size).toBe(3);
  });

  it('reads one cookie by exact name, and none when the name is given twice', () => {
    expect(readCookie('a=1; qkey_console=abc; b=2', 'qkey_console')).toBe('abc');
    expect(readCookie('xqkey_console=abc', 'qkey_console')).toBeUndefined();
    expect(readCookie('qkey_console=abc; qkey_console=def', 'qkey_console')).toBeUndefined();
    expect(readCookie(undefined, 'qkey_console')).toBeUndefined();
  });
});

describe('Prometheus text', () => {
  it('parses labels with escapes, special values and timestamps, and skips comments and malformed lines', () => {
    const samples = parsePrometheusText(
      [
        '# HELP x help',
        'a 1',
        'b{l="v\\"q\\\\\\n",m="2"} 2.5 1700000000000',
        'c +Inf',
        'd NaN',
        'e{l="unterminated} 1',
        'f{} 3',
        '{} 4',
        'g notanumber',
        '',
      ].join('\n'),
    );
    expect(samples.map((s) => [s.name, s.labels, s.value])).toEqual([
      ['a', {}, 1],
      ['b', { l: 'v"q\\\n', m: '2' }, 2.5],
      ['c', {}, Infinity],
      ['d', {}, NaN],
      ['f', {}, 3],
    ]);
  });

  it("reads a broker's figures: clients, messages up and down, refusals by reason, key service reachability", () => {
    const f = brokerFigures(
      parsePrometheusText(`broker_connected_clients{role="device"} 2
broker_connected_clients{role="app"} 1
broker_uplink_total{outcome="opened"} 10
broker_uplink_total{outcome="forged"} 1
broker_uplink_total{outcome="replay"} 0
broker_downlink_total{outcome="sealed"} 4
broker_downlink_total{outcome="dropped_no_key"} 2
broker_auth_failed_total{return_code="5"} 7
broker_kms_up 0
`),
    );
    expect(f).toEqual({
      connectedClients: 3,
      clientsByRole: { device: 2, app: 1 },
      messagesUp: 10,
      messagesDown: 4,
      refusals: [
        { what: 'uplink', reason: 'forged', count: 1 },
        { what: 'downlink', reason: 'dropped_no_key', count: 2 },
        { what: 'connect (CONNACK code)', reason: '5', count: 7 },
      ],
      kmsReachable: false,
    });
    expect(brokerFigures([])).toMatchObject({ connectedClients: null, messagesUp: null, kmsReachable: null });
  });
});

describe('reading a broker', () => {
  let server: Server;
  let base: string;
  beforeAll(async () => {
    server = createServer((req, res) => {
      if (req.url === '/big') {
        // Endless metrics, no length: the read must stop at the bound.
        res.writeHead(200, { 'content-type': 'text/plain' });
        const line = 'broker_connected_clients{role="device"} 1\n'.repeat(1000);
        const pump = () => {
          while (res.write(line));
        };
        res.on('drain', pump);
        pump();
        req.on('close', () => res.destroy());
      } else if (req.url === '/slow') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.write('broker_kms_up 1\n'); // then nothing more
      } else if (req.url === '/redirect') res.writeHead(302, { location: '/metrics' }).end();
      else if (req.url === '/metrics') res.writeHead(200).end('broker_kms_up 1\n');
      else res.writeHead(500).end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  });
  afterAll(() => {
    server.closeAllConnections();
    server.close();
  });

  it('reads figures, and reports a broker that answers too much, too slowly, elsewhere or with an error', async () => {
    expect(await readBroker(`${base}/metrics`, 2000)).toMatchObject({ ok: true, figures: { kmsReachable: true } });
    expect(await readBroker(`${base}/big`, 5000, 64 * 1024)).toEqual({
      url: `${base}/big`,
      ok: false,
      error: `response larger than ${64 * 1024} bytes`,
    });
    expect(await readBroker(`${base}/slow`, 200)).toMatchObject({ ok: false, error: 'no answer in time' });
    expect(await readBroker(`${base}/redirect`, 2000)).toMatchObject({ ok: false });
    expect(await readBroker(`${base}/error`, 2000)).toMatchObject({ ok: false, error: 'HTTP 500' });
  });
});

describe('configuration', () => {
  const load = (overrides: object, env: NodeJS.ProcessEnv = {}) =>
    loadKmsConfig({ dataDir: '/tmp/unused', adminToken: 'x', ...overrides }, { env });

  it('is off by default, on with QKEY_KMS_CONSOLE=true, and off loopback only with TLS', () => {
    expect(load({}).console.enabled).toBe(false);
    expect(load({}, { QKEY_KMS_CONSOLE: 'true' }).console.enabled).toBe(true);
    expect(() => load({ host: '0.0.0.0', console: { enabled: true } })).toThrow(
      /console.enabled on host 0.0.0.0 needs tls/,
    );
    expect(() => load({ host: '192.0.2.1', console: { enabled: true } })).toThrow(/needs tls/);
    expect(load({ host: '127.0.0.2', console: { enabled: true } }).console.enabled).toBe(true);
    expect(() => load({ console: { brokerMetrics: ['file:///etc/passwd'] } })).toThrow(/brokerMetrics/);
  });

  it('answers to the listen host, loopback names on loopback, and configured names only', () => {
    const loop = load({ console: { enabled: true, hostnames: ['kms.example'] } });
    for (const h of ['127.0.0.1:7070', 'localhost', 'LOCALHOST:1', '[::1]:7070', 'kms.example', '127.9.9.9'])
      expect(hostAllowed(loop, h), h).toBe(true);
    for (const h of ['evil.example', 'kms.example.evil', 'localhost.evil', '', undefined, 'a:b:c', 'x@127.0.0.1'])
      expect(hostAllowed(loop, h), String(h)).toBe(false);
  });
});
