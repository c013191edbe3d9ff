// Claims whose answer never reaches the broker (a proxy between broker and key service swallows or delays it): the
// keys are retired and never usable, whether the claim committed before the broker gave up or arrives after.
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { KeyReports } from '../../broker/key-reports.js';
import { DeviceSessionKeys } from '../../broker/session-keys.js';
import { UplinkKeys } from '../../broker/uplink-keys.js';
import { KmsClient, KmsHttpError, KmsUnreachableError } from '../../kms-api/client.js';
import { KmsCoalescer } from '../../kms-api/coalescer.js';
import { keyIdFor } from '../../protocol/index.js';
import {
  brokerClient,
  claimUplink,
  provisionDevice,
  removeDir,
  startTestKms,
  type TestKms,
  uplinkProof,
} from '../helpers/kms.js';

/** What the proxy does with a connection that carried a claim request. */
type Mode = 'pass' | 'swallow' | 'hold';

/**
 * A TCP proxy in front of the key service. A connection whose request is a claim (bulk claims, enc_keys, dec_keys)
 * is, in 'swallow' mode, forwarded but its answers dropped (the claim commits, the broker never hears); in 'hold'
 * mode its request is kept back until release() (a request delayed in the network), and the answer is recorded.
 */
class Proxy {
  mode: Mode = 'pass';
  readonly answers: string[] = [];
  private held: Array<() => void> = [];
  private readonly sockets = new Set<Socket>();
  private constructor(private readonly server: Server) {}

  static async start(upstreamPort: number): Promise<Proxy> {
    const server = createServer();
    const proxy = new Proxy(server);
    server.on('connection', (client) => proxy.relay(client, upstreamPort));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return proxy;
  }

  get url(): string {
    const a = this.server.address();
    return `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
  }

  release(): void {
    for (const go of this.held.splice(0)) go();
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((r) => this.server.close(r));
  }

  private relay(client: Socket, port: number): void {
    const upstream = connect(port, '127.0.0.1');
    this.sockets.add(client).add(upstream);
    let claim = false;
    let mode: Mode = 'pass';
    client.on('data', (chunk: Buffer) => {
      if (!claim && /^POST \S*(\/bulk\/claims|\/enc_keys|\/dec_keys) /.test(chunk.toString('latin1'))) {
        claim = true;
        mode = this.mode;
      }
      if (claim && mode === 'hold') this.held.push(() => upstream.write(chunk));
      else upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      if (!claim || mode === 'pass') client.write(chunk);
      else if (mode === 'hold') this.answers.push(chunk.toString());
      // 'swallow': the claim committed at the key service; its answer is dropped.
    });
    // The broker gives up and closes: the held request still goes out when released, as a delayed segment would.
    client.on('close', () => {
      if (!(claim && mode === 'hold')) upstream.destroy();
    });
    upstream.on('close', () => client.destroy());
    client.on('error', () => undefined);
    upstream.on('error', () => undefined);
  }
}

let t: TestKms;
let direct: KmsClient;
let token: string;
let proxy: Proxy;
beforeAll(async () => {
  t = await startTestKms();
  const { client_secret } = await t.admin.registerBroker('broker-lost');
  token = (await t.anon.clientToken('broker-lost', client_secret)).access_token;
  direct = t.anon.withToken(token);
});
afterAll(async () => {
  await t.stop();
  removeDir(t.dataDir);
});
afterEach(async () => {
  await proxy?.stop();
});

/** The broker's key path as the plugin builds it, through the proxy, with a short timeout. */
async function brokerKeys(options: { firstDelayMs?: number } = {}) {
  proxy = await Proxy.start(Number(new URL(t.url).port));
  // A client of the proxy's origin (pools are per origin), with a 300 ms timeout.
  const client = new KmsClient(proxy.url, { token, timeoutMs: 300, connections: 3 });
  const coalescer = new KmsCoalescer(client);
  const reports = new KeyReports(coalescer, { firstDelayMs: options.firstDelayMs ?? 20, maxDelayMs: 200 });
  return { coalescer, reports, uplinks: new UplinkKeys(reports) };
}

const states = async (deviceId: string) =>
  new Map((await t.admin.deviceKeys(deviceId)).keys.map((k) => [k.key_index, k]));

async function until(what: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await what())) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 25));
  }
}

const reasonOf = (p: Promise<unknown>) =>
  p.then(
    () => 'delivered',
    (e: KmsHttpError) => (e.details as Array<{ reason?: string }>).map((d) => d.reason).join(','),
  );

describe('an uplink claim whose answer is lost', () => {
  it('committed, answer swallowed: the broker reports it abandoned and the key is retired, never usable', async () => {
    const dev = await provisionDevice(t.admin, 'lost-up-1', 2, 0);
    const { uplinks } = await brokerKeys();
    proxy.mode = 'swallow';
    await expect(uplinks.claim(dev.deviceId, 0, uplinkProof(dev, 0), 's-1')).rejects.toMatchObject({
      reason: 'kms_unavailable',
    });
    proxy.mode = 'pass';
    // The claim did commit (the scenario this is about) ...
    const audit = await t.admin.audit({ device_id: dev.deviceId, action: 'key.claim.dec' });
    expect(audit.entries.map((e) => e.actor)).toEqual(['broker-lost']);
    // ... and the broker's report retired it.
    await until(async () => (await states(dev.deviceId)).get(0)?.state === 'retired');
    // Never usable again: not by this broker, not by another.
    expect(await reasonOf(claimUplink(direct, dev, 0))).toBe('retired');
    const other = await brokerClient(t, 'broker-other-1');
    expect(await reasonOf(claimUplink(other, dev, 0))).toBe('retired');
    // The device's next key is untouched.
    expect((await states(dev.deviceId)).get(1)?.state).toBe('filled');
  });

  it('delayed past the broker giving up: the key is retired first and the late claim delivers nothing', async () => {
    const dev = await provisionDevice(t.admin, 'lost-up-2', 2, 0);
    const { uplinks } = await brokerKeys();
    proxy.mode = 'hold';
    await expect(uplinks.claim(dev.deviceId, 0, uplinkProof(dev, 0), 's-2')).rejects.toMatchObject({
      reason: 'kms_unavailable',
    });
    proxy.mode = 'pass';
    // The report arrives before the claim: the key, still filled, is retired unclaimed on the claim's proof.
    await until(async () => (await states(dev.deviceId)).get(0)?.state === 'retired');
    expect((await states(dev.deviceId)).get(0)?.claimed_by).toBe('broker-lost');
    proxy.release();
    await until(async () => proxy.answers.join('').includes('\r\n\r\n{'));
    const answer = proxy.answers.join('');
    expect(answer).toMatch(/^HTTP\/1\.1 400/); // a lone claim goes through dec_keys: refused
    expect(answer).toContain('"reason":"retired"');
    expect(answer).not.toContain('"key":');
    expect(await reasonOf(claimUplink(direct, dev, 0))).toBe('retired');
  });

  it('a claim refused by the key service (a forged envelope) is not reported: nothing was claimed', async () => {
    const dev = await provisionDevice(t.admin, 'lost-up-3', 2, 0);
    const { uplinks, coalescer } = await brokerKeys();
    const forged = uplinkProof(dev, 1); // names key 1: refused for key 0
    const sent: string[] = [];
    const abandon = coalescer.abandon.bind(coalescer);
    coalescer.abandon = (item) => (sent.push(item.SAE_ID), abandon(item));
    await expect(uplinks.claim(dev.deviceId, 0, { ...forged }, 's-3')).rejects.toMatchObject({ reason: 'forged' });
    await new Promise((r) => setTimeout(r, 100));
    expect(sent).toEqual([]);
    expect((await states(dev.deviceId)).get(0)?.state).toBe('filled');
  });
});

describe('a downlink claim whose answer is lost', () => {
  it('the session retires every downlink key claimed for it when it ends', async () => {
    const dev = await provisionDevice(t.admin, 'lost-down-1', 1, 3);
    const { reports, uplinks } = await brokerKeys();
    const session = new DeviceSessionKeys(reports, uplinks, dev.deviceId, 'session-lost-down');
    proxy.mode = 'swallow';
    await expect(session.prepareDownlink()).rejects.toBeInstanceOf(KmsUnreachableError);
    proxy.mode = 'pass';
    await session.prepareDownlink(); // the retry gets a key: the session goes on
    const claimed = [...(await states(dev.deviceId)).values()].filter((k) => k.state === 'claimed');
    expect(claimed.map((k) => k.key_index)).toEqual([1, 2]); // the lost one and the delivered one
    await session.close();
    await uplinks.close();
    const after = await states(dev.deviceId);
    expect([1, 2].map((i) => after.get(i)?.state)).toEqual(['retired', 'retired']);
    expect(after.get(3)?.state).toBe('filled');
  });
});

describe('retirements the key service does not answer', () => {
  it('are sent again with backoff until it answers', async () => {
    const dev = await provisionDevice(t.admin, 'lost-retire-1', 1, 1);
    const key = await claimUplink(direct, dev, 0);
    expect(key.keys).toHaveLength(1);
    const { reports } = await brokerKeys({ firstDelayMs: 50 });
    const port = Number(new URL(proxy.url).port);
    await proxy.stop(); // the key service is unreachable: connections refused
    const { retired } = await reports.retire(dev.deviceId, [keyIdFor(dev.deviceId, 0)]);
    expect(retired).toBe(0);
    expect(reports.pending).toBe(1);
    expect((await states(dev.deviceId)).get(0)?.state).toBe('claimed');
    // The key service is back (a plain relay listens again on the proxy's port).
    const back = createServer((c) => {
      const u = connect(Number(new URL(t.url).port), '127.0.0.1');
      c.pipe(u).pipe(c);
      c.on('error', () => u.destroy());
      u.on('error', () => c.destroy());
    });
    await new Promise<void>((r) => back.listen(port, '127.0.0.1', r));
    try {
      await until(async () => (await states(dev.deviceId)).get(0)?.state === 'retired');
      expect(reports.pending).toBe(0);
    } finally {
      await reports.close();
      back.close();
    }
  });
});
