// Attacks on the key service's newer boundaries over real HTTP: end-to-end claims and retirements, broker abandons, and
// CORS, with other URL spellings, other principals' tokens, other devices' keys, malformed bodies and races.
import { request as httpRequest } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KmsClient, UplinkProof } from '../../kms-api/client.js';
import { keyIdFor, loginProof } from '../../protocol/index.js';
import {
  brokerClient,
  provisionDevice,
  type ProvisionedDevice,
  removeDir,
  startTestKms,
  type TestKms,
  uplinkProof,
} from '../helpers/kms.js';

const PAGE = 'https://app.example';
let t: TestKms;
let host: string;
let port: number;
let b1: KmsClient;
let b2: KmsClient;
const tokens: Record<'vault' | 'thief' | 'b1' | 'b2' | 'device' | 'admin', string> = {
  vault: '',
  thief: '',
  b1: '',
  b2: '',
  device: '',
  admin: 'test-admin-token',
};

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  json(): any; // eslint-disable-line @typescript-eslint/no-explicit-any -- answers of many shapes, read field by field
}

/** One HTTP request with `path` sent byte for byte (no client-side URL normalisation). */
function raw(
  method: string,
  path: string,
  options: { token?: string; body?: string | Buffer; headers?: Record<string, string | string[]> } = {},
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | string[]> = { ...(options.headers ?? {}) };
    if (options.token) headers.authorization = `Bearer ${options.token}`;
    if (options.body !== undefined) {
      headers['content-type'] ??= 'application/json';
      headers['content-length'] = String(Buffer.byteLength(options.body));
    }
    const req = httpRequest({ host, port, method, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks).toString();
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, json: () => JSON.parse(body) });
      });
    });
    req.on('error', reject);
    if (options.body !== undefined) req.write(options.body);
    req.end();
  });
}

const proofJson = (p: UplinkProof) => ({
  envelope: Buffer.from(p.envelope).toString('base64'),
  topic: p.topic,
  direction: p.direction,
});
const claimBody = (keyId: string, proof: UplinkProof) =>
  JSON.stringify({ key_IDs: [{ key_ID: keyId, key_ID_extension: { qkey_proof: proofJson(proof) } }] });
const vaultTopic = (dev: ProvisionedDevice) => `devices/${dev.deviceId}/up/vault/t`;
const e2ePath = (deviceId: string, action = 'dec_keys') => `/api/v1/end-to-end/keys/${deviceId}/${action}`;

const stateOf = async (deviceId: string, index: number) =>
  (await t.admin.deviceKeys(deviceId)).keys.find((k) => k.key_index === index);

async function appToken(appId: string): Promise<string> {
  const { client_secret } = await t.admin.registerApp(appId);
  return (await t.anon.clientToken(appId, client_secret)).access_token;
}

/** A device whose `devices/{id}/up/vault/#` topics are end-to-end for app `app`. */
async function e2eDevice(id: string, up = 4, app = 'vault'): Promise<ProvisionedDevice> {
  const dev = await provisionDevice(t.admin, id, up, 1);
  await t.admin.setPolicy(`${id}-e2e`, {
    principal: id,
    role: 'device',
    filter: `devices/${id}/up/vault/#`,
    encryption: 'end-to-end',
    app,
  });
  return dev;
}

beforeAll(async () => {
  t = await startTestKms({ corsOrigins: [PAGE] });
  const u = new URL(t.url);
  host = u.hostname;
  port = Number(u.port);
  b1 = await brokerClient(t, 'atk-b1');
  b2 = await brokerClient(t, 'atk-b2');
  tokens.vault = await appToken('vault');
  tokens.thief = await appToken('thief');
  // Broker tokens, fetched again so the test holds the strings.
  for (const id of ['atk-b1x', 'atk-b2x'] as const) {
    const { client_secret } = await t.admin.registerBroker(id);
    const tok = (await t.anon.clientToken(id, client_secret)).access_token;
    if (id === 'atk-b1x') tokens.b1 = tok;
    else tokens.b2 = tok;
  }
  const dev = await provisionDevice(t.admin, 'atk-login', 1, 1);
  const { challenge } = await t.anon.challenge(dev.deviceId);
  const mac = Buffer.from(loginProof(dev.loginKey, dev.deviceId, Buffer.from(challenge, 'base64'))).toString('base64');
  tokens.device = (await t.anon.deviceToken(dev.deviceId, challenge, mac)).access_token;
});
afterAll(async () => {
  await t.stop();
  removeDir(t.dataDir);
});

describe('end-to-end claim route', () => {
  it('only the named application gets the key; a thief learns nothing and burns nothing', async () => {
    const dev = await e2eDevice('atk-e1');
    const id0 = keyIdFor(dev.deviceId, 0);
    const proof = uplinkProof(dev, 0, { topic: vaultTopic(dev) });
    // Another app with a valid proof (it read the envelope somewhere): not_granted, key untouched.
    const stolen = await raw('POST', e2ePath(dev.deviceId), { token: tokens.thief, body: claimBody(id0, proof) });
    expect(stolen.status).toBe(400);
    expect(stolen.json()).toMatchObject({ code: 'KMS_ERR_KEY_UNAVAILABLE', details: [{ reason: 'not_granted' }] });
    expect(stolen.body).not.toMatch(/"key"\s*:/);
    expect((await stateOf(dev.deviceId, 0))?.state).toBe('filled');
    // The answer to a thief is the same whatever the key's state: an unused key and a nonexistent index look alike.
    const ghost = await raw('POST', e2ePath(dev.deviceId), {
      token: tokens.thief,
      body: claimBody(keyIdFor(dev.deviceId, 3), uplinkProof(dev, 3, { topic: vaultTopic(dev) })),
    });
    expect(ghost.json().details).toEqual([expect.objectContaining({ reason: 'not_granted' })]);
    // Brokers, devices and the admin token are not applications: 401 on the app route, before the body.
    for (const who of ['b1', 'device', 'admin'] as const) {
      const r = await raw('POST', e2ePath(dev.deviceId), { token: tokens[who], body: claimBody(id0, proof) });
      expect(r.status, who).toBe(401);
    }
    expect((await raw('POST', e2ePath(dev.deviceId), { body: claimBody(id0, proof) })).status).toBe(401);
    // A broker is refused end_to_end on its own route, and its abandon with the valid proof spends nothing.
    await expect(b1.decKeys(dev.deviceId, [id0], undefined, [proof])).rejects.toMatchObject({ status: 400 });
    expect(
      (await b1.bulkAbandon([{ SAE_ID: dev.deviceId, key_IDs: [{ key_ID: id0, qkey_proof: proofJson(proof) }] }]))
        .results,
    ).toEqual([{ retired: 0 }]);
    expect((await stateOf(dev.deviceId, 0))?.state).toBe('filled');
    // The named application gets it, once.
    const ok = await raw('POST', e2ePath(dev.deviceId), { token: tokens.vault, body: claimBody(id0, proof) });
    expect(ok.status).toBe(200);
    expect(ok.json().keys).toMatchObject([{ key_ID: id0, key: dev.keys.get(0)!.key.toString('base64') }]);
    const again = await raw('POST', e2ePath(dev.deviceId), { token: tokens.vault, body: claimBody(id0, proof) });
    expect(again.json().details).toEqual([expect.objectContaining({ reason: 'claimed' })]);
  });

  it('the named application may not claim the device’s keys off its topics, nor with a re-addressed or will proof', async () => {
    const dev = await e2eDevice('atk-e2');
    const id = (i: number) => keyIdFor(dev.deviceId, i);
    const reason = async (body: string) => {
      const r = await raw('POST', e2ePath(dev.deviceId), { token: tokens.vault, body });
      expect(r.status).toBe(400);
      return r.json().details[0].reason as string;
    };
    // A broker-decrypted topic of the same device: not the vault's.
    expect(await reason(claimBody(id(0), uplinkProof(dev, 0)))).toBe('not_granted');
    // The envelope sealed for a plain topic, presented as if on the vault topic: the AAD binds the topic.
    const moved = { ...uplinkProof(dev, 0), topic: vaultTopic(dev) };
    expect(await reason(claimBody(id(0), moved))).toBe('proof_failed');
    // A will is the broker's.
    expect(await reason(claimBody(id(0), uplinkProof(dev, 0, { topic: vaultTopic(dev), direction: 'will' })))).toBe(
      'not_granted',
    );
    // A downlink key, with any proof.
    expect(await reason(claimBody(id(4), uplinkProof(dev, 4, { topic: vaultTopic(dev) })))).not.toBe('');
    expect((await stateOf(dev.deviceId, 0))?.state).toBe('filled');
    expect((await stateOf(dev.deviceId, 4))?.state).toBe('filled');
  });

  it('a key of another device, named under this device or under its own, is not delivered', async () => {
    const dev = await e2eDevice('atk-e3');
    const other = await e2eDevice('atk-e3-other', 2, 'thief');
    const otherProof = uplinkProof(other, 0, { topic: vaultTopic(other) });
    // Under the vault's device, with the other device's valid proof.
    const crossed = await raw('POST', e2ePath(dev.deviceId), {
      token: tokens.vault,
      body: claimBody(keyIdFor(other.deviceId, 0), otherProof),
    });
    expect(crossed.status).toBe(400);
    // Under its own device, whose end-to-end topics belong to another app.
    const direct = await raw('POST', e2ePath(other.deviceId), {
      token: tokens.vault,
      body: claimBody(keyIdFor(other.deviceId, 0), otherProof),
    });
    expect(direct.json().details[0].reason).toBe('not_granted');
    // The device id spelled in another case is another (unknown) device.
    const upper = await raw('POST', e2ePath(dev.deviceId.toUpperCase()), {
      token: tokens.vault,
      body: claimBody(keyIdFor(dev.deviceId, 0), uplinkProof(dev, 0, { topic: vaultTopic(dev) })),
    });
    expect(upper.status).toBe(400);
    expect(upper.body).not.toMatch(/"key"\s*:/);
    expect((await stateOf(other.deviceId, 0))?.state).toBe('filled');
    expect((await stateOf(dev.deviceId, 0))?.state).toBe('filled');
  });

  it('other spellings of the route are the same route: same refusal for the thief, 401 for a broker', async () => {
    const dev = await e2eDevice('atk-e4');
    const body = claimBody(keyIdFor(dev.deviceId, 0), uplinkProof(dev, 0, { topic: vaultTopic(dev) }));
    const spellings = [
      `/api/v1/end-to-end/keys/${dev.deviceId}/dec_keys/`,
      `/API/V1/END-TO-END/KEYS/${dev.deviceId}/DEC_KEYS`,
      `/api/v1/end-to-end/keys/${dev.deviceId}/%64ec_keys`,
      `/api/v1/%65nd-to-end/keys/${dev.deviceId}/dec_keys`,
      `//api/v1//end-to-end/keys//${dev.deviceId}/dec_keys`,
      `/api/v1/x/../end-to-end/./keys/${dev.deviceId}/dec_keys`,
      `/api/v1/end-to-end/keys/${dev.deviceId};p=1/dec_keys`,
      `/api/v1/end-to-end%2Fkeys%2F${dev.deviceId}%2Fdec_keys`,
      `/api/v1/keys/../end-to-end/keys/${dev.deviceId}/dec_keys`,
      `/api/v1/end-to-end/keys/${dev.deviceId}/dec_keys?SAE_ID=x`,
    ];
    for (const path of spellings) {
      const thief = await raw('POST', path, { token: tokens.thief, body });
      expect([400, 401, 404], path).toContain(thief.status);
      expect(thief.body, path).not.toMatch(/"key"\s*:/);
      const broker = await raw('POST', path, { token: tokens.b1, body });
      expect([401, 404], path).toContain(broker.status);
    }
    // Other methods deliver nothing (a GET cannot carry a proof of use).
    for (const method of ['GET', 'PUT', 'PATCH', 'DELETE']) {
      const r = await raw(method, `${e2ePath(dev.deviceId)}?key_ID=${keyIdFor(dev.deviceId, 0)}`, {
        token: tokens.vault,
        ...(method === 'GET' || method === 'DELETE' ? {} : { body }),
      });
      expect(r.status, method).not.toBe(200);
      expect(r.body, method).not.toMatch(/"key"\s*:/);
    }
    // And spellings of the broker's claim route do not take an app token.
    for (const path of [
      `/api/v1/keys/${dev.deviceId}/dec_keys`,
      `/API/v1/Keys/${dev.deviceId}/dec_keys/`,
      `/api/v1/end-to-end/../keys/${dev.deviceId}/dec_keys`,
      `/api/v1/bulk/abandons`,
      `/api/v1/BULK/%61bandons/`,
    ]) {
      expect((await raw('POST', path, { token: tokens.vault, body })).status, path).toBe(401);
    }
    expect((await stateOf(dev.deviceId, 0))?.state).toBe('filled');
  });

  it('two claims of one key race: exactly one delivers it', async () => {
    const dev = await e2eDevice('atk-e5', 1);
    const body = claimBody(keyIdFor(dev.deviceId, 0), uplinkProof(dev, 0, { topic: vaultTopic(dev) }));
    const answers = await Promise.all(
      Array.from({ length: 8 }, () => raw('POST', e2ePath(dev.deviceId), { token: tokens.vault, body })),
    );
    expect(answers.filter((a) => a.status === 200)).toHaveLength(1);
    expect(answers.filter((a) => a.status !== 200).every((a) => a.json().details[0].reason === 'claimed')).toBe(true);
  });

  it('retirement counts only the caller’s own claims, on any route spelling', async () => {
    const dev = await e2eDevice('atk-e6', 2);
    const id0 = keyIdFor(dev.deviceId, 0);
    await raw('POST', e2ePath(dev.deviceId), {
      token: tokens.vault,
      body: claimBody(id0, uplinkProof(dev, 0, { topic: vaultTopic(dev) })),
    });
    const retireBody = JSON.stringify({ key_IDs: [{ key_ID: id0 }, { key_ID: keyIdFor(dev.deviceId, 1) }] });
    const byThief = await raw('POST', e2ePath(dev.deviceId, 'retire'), { token: tokens.thief, body: retireBody });
    expect(byThief.json()).toEqual({ retired: 0 });
    const byThiefSpelled = await raw('POST', `/api/v1/END-TO-END/keys/${dev.deviceId}/retire/`, {
      token: tokens.thief,
      body: retireBody,
    });
    expect(byThiefSpelled.json()).toEqual({ retired: 0 });
    expect((await b1.retire(dev.deviceId, [id0])).retired).toBe(0);
    expect((await b1.bulkRetire([{ SAE_ID: dev.deviceId, key_IDs: [{ key_ID: id0 }] }])).results).toEqual([
      { retired: 0 },
    ]);
    expect((await raw('POST', e2ePath(dev.deviceId, 'retire'), { token: tokens.b1, body: retireBody })).status).toBe(
      401,
    );
    expect((await stateOf(dev.deviceId, 0))?.state).toBe('claimed');
    expect((await stateOf(dev.deviceId, 1))?.state).toBe('filled');
    // The owner retires its one claimed key, once; the filled key is not spent.
    const own = await raw('POST', e2ePath(dev.deviceId, 'retire'), { token: tokens.vault, body: retireBody });
    expect(own.json()).toEqual({ retired: 1 });
    expect(
      (await raw('POST', e2ePath(dev.deviceId, 'retire'), { token: tokens.vault, body: retireBody })).json(),
    ).toEqual({ retired: 0 });
    expect((await stateOf(dev.deviceId, 1))?.state).toBe('filled');
  });

  it('malformed, truncated and oversized bodies are refused and the service keeps serving', async () => {
    const dev = await e2eDevice('atk-e7', 1);
    const good = claimBody(keyIdFor(dev.deviceId, 0), uplinkProof(dev, 0, { topic: vaultTopic(dev) }));
    const bad = [
      good.slice(0, good.length - 7),
      '{}',
      '{"key_IDs": []}',
      '{"key_IDs": [{"key_ID": "not-a-uuid"}]}',
      JSON.stringify({ ...JSON.parse(good), extra: 1 }),
      '[]',
      'null',
      '\u0000',
    ];
    for (const body of bad) {
      const r = await raw('POST', e2ePath(dev.deviceId), { token: tokens.vault, body });
      expect(r.status, body.slice(0, 40)).toBe(400);
      expect(r.body).not.toMatch(/"key"\s*:/);
    }
    // 8 MiB of JSON: refused by size, not parsed.
    const huge = JSON.stringify({ key_IDs: [{ key_ID: 'a'.repeat(8 << 20) }] });
    expect([413, 400]).toContain(
      (await raw('POST', e2ePath(dev.deviceId), { token: tokens.vault, body: huge })).status,
    );
    // An unauthenticated oversized body is answered 401 (credential first).
    expect((await raw('POST', e2ePath(dev.deviceId), { body: huge })).status).toBe(401);
    // A body shorter than its Content-Length, then the connection closed: nothing claimed, the service still answers.
    await new Promise<void>((resolve) => {
      const req = httpRequest({
        host,
        port,
        method: 'POST',
        path: e2ePath(dev.deviceId),
        headers: {
          authorization: `Bearer ${tokens.vault}`,
          'content-type': 'application/json',
          'content-length': String(good.length + 100),
        },
      });
      req.on('error', () => resolve());
      req.on('response', (res) => {
        res.resume();
        resolve();
      });
      req.write(good);
      setTimeout(() => {
        req.destroy();
        resolve();
      }, 300);
    });
    expect((await stateOf(dev.deviceId, 0))?.state).toBe('filled');
    expect((await raw('POST', e2ePath(dev.deviceId), { token: tokens.vault, body: good })).status).toBe(200);
  });

  it('all or nothing: a granted key beside a refused one is not delivered; the same key twice is not delivered twice', async () => {
    const dev = await e2eDevice('atk-e9', 3);
    const other = await e2eDevice('atk-e9-other', 1, 'thief');
    const item = (id: string, p: UplinkProof) => ({ key_ID: id, key_ID_extension: { qkey_proof: proofJson(p) } });
    const granted = item(keyIdFor(dev.deviceId, 0), uplinkProof(dev, 0, { topic: vaultTopic(dev) }));
    const mixed = await raw('POST', e2ePath(dev.deviceId), {
      token: tokens.vault,
      body: JSON.stringify({
        key_IDs: [granted, item(keyIdFor(dev.deviceId, 1), uplinkProof(dev, 1))],
      }),
    });
    expect(mixed.status).toBe(400);
    expect(mixed.body).not.toMatch(/"key"\s*:/);
    const crossed = await raw('POST', e2ePath(dev.deviceId), {
      token: tokens.vault,
      body: JSON.stringify({
        key_IDs: [granted, item(keyIdFor(other.deviceId, 0), uplinkProof(other, 0, { topic: vaultTopic(other) }))],
      }),
    });
    expect(crossed.status).toBe(400);
    expect((await stateOf(dev.deviceId, 0))?.state).toBe('filled');
    const twice = await raw('POST', e2ePath(dev.deviceId), {
      token: tokens.vault,
      body: JSON.stringify({ key_IDs: [granted, granted] }),
    });
    if (twice.status === 200) expect(twice.json().keys).toHaveLength(1);
    else expect(twice.status).toBe(400);
  });

  it('the application’s claims and the broker’s rise on their own: neither supersedes the other’s channel', async () => {
    const dev = await e2eDevice('atk-e10', 4);
    // The application claims a high index on its topic; the broker can still claim a lower one on its own.
    const app3 = await raw('POST', e2ePath(dev.deviceId), {
      token: tokens.vault,
      body: claimBody(keyIdFor(dev.deviceId, 3), uplinkProof(dev, 3, { topic: vaultTopic(dev) })),
    });
    expect(app3.status).toBe(200);
    await expect(
      b1.decKeys(dev.deviceId, [keyIdFor(dev.deviceId, 1)], undefined, [uplinkProof(dev, 1)]),
    ).resolves.toMatchObject({
      keys: [{ key_ID: keyIdFor(dev.deviceId, 1) }],
    });
    // And the broker's high claim does not supersede the application's lower one.
    await b1.decKeys(dev.deviceId, [keyIdFor(dev.deviceId, 2)], undefined, [uplinkProof(dev, 2)]);
    const app0 = await raw('POST', e2ePath(dev.deviceId), {
      token: tokens.vault,
      body: claimBody(keyIdFor(dev.deviceId, 0), uplinkProof(dev, 0, { topic: vaultTopic(dev) })),
    });
    // Index 0 < 3 the application already claimed: superseded on the application's own channel, by design.
    expect(app0.json().details?.[0]?.reason ?? 'delivered').toBe('superseded');
    // A broker cannot retire or abandon the application's claimed key, even with its valid proof.
    const p3 = uplinkProof(dev, 3, { topic: vaultTopic(dev) });
    expect(
      (
        await b1.bulkAbandon([
          { SAE_ID: dev.deviceId, key_IDs: [{ key_ID: keyIdFor(dev.deviceId, 3), qkey_proof: proofJson(p3) }] },
        ])
      ).results,
    ).toEqual([{ retired: 0 }]);
    expect((await b1.retire(dev.deviceId, [keyIdFor(dev.deviceId, 3)])).retired).toBe(0);
    expect(await stateOf(dev.deviceId, 3)).toMatchObject({ state: 'claimed', claimed_by: 'vault' });
    // Nor claim an end-to-end key through a bulk claim item.
    const p0 = uplinkProof(dev, 0, { topic: vaultTopic(dev) });
    const bulk = await b1.bulkClaims([
      {
        SAE_ID: dev.deviceId,
        dec_keys: { key_IDs: [{ key_ID: keyIdFor(dev.deviceId, 0), key_ID_extension: { qkey_proof: proofJson(p0) } }] },
      } as never,
    ]);
    expect(bulk.results[0]).toMatchObject({ error: { status: 400 } });
    expect(JSON.stringify(bulk)).not.toMatch(/"key"\s*:/);
  });

  it('a revoked application’s token claims nothing', async () => {
    const dev = await e2eDevice('atk-e8', 1, 'fleeting');
    const tok = await appToken('fleeting');
    await t.admin.revokeClient('app', 'fleeting');
    const r = await raw('POST', e2ePath(dev.deviceId), {
      token: tok,
      body: claimBody(keyIdFor(dev.deviceId, 0), uplinkProof(dev, 0, { topic: vaultTopic(dev) })),
    });
    expect(r.status).toBe(401);
    expect((await stateOf(dev.deviceId, 0))?.state).toBe('filled');
  });
});

describe('broker abandons', () => {
  it('only brokers may call it, on any spelling', async () => {
    const dev = await provisionDevice(t.admin, 'atk-a1', 1, 1);
    const body = JSON.stringify({
      abandons: [
        {
          SAE_ID: dev.deviceId,
          key_IDs: [{ key_ID: keyIdFor(dev.deviceId, 0), qkey_proof: proofJson(uplinkProof(dev, 0)) }],
        },
      ],
    });
    for (const path of [
      '/api/v1/bulk/abandons',
      '/API/V1/BULK/ABANDONS/',
      '/api/v1/bulk/%61bandons',
      '/api/v1/x/../bulk//abandons',
    ]) {
      for (const who of ['vault', 'device', 'admin'] as const) {
        expect((await raw('POST', path, { token: tokens[who], body })).status, `${who} ${path}`).toBe(401);
      }
      expect((await raw('POST', path, { body })).status).toBe(401);
    }
    expect((await stateOf(dev.deviceId, 0))?.state).toBe('filled');
  });

  it('a broker cannot spend another broker’s claim, another device’s key, or another broker’s downlink session', async () => {
    const dev = await provisionDevice(t.admin, 'atk-a2', 2, 2);
    const id0 = keyIdFor(dev.deviceId, 0);
    const proof = uplinkProof(dev, 0);
    await b1.decKeys(dev.deviceId, [id0], undefined, [proof]);
    await b1.encKeys(dev.deviceId, 1, 'b1-session');
    const r = await b2.bulkAbandon([
      { SAE_ID: dev.deviceId, key_IDs: [{ key_ID: id0, qkey_proof: proofJson(proof) }] },
      { SAE_ID: dev.deviceId, downlink_session_id: 'b1-session' },
    ]);
    expect(r.results).toEqual([{ retired: 0 }, { retired: 0 }]);
    const keys = (await t.admin.deviceKeys(dev.deviceId)).keys;
    expect(keys.find((k) => k.key_index === 0)?.state).toBe('claimed');
    expect(keys.filter((k) => k.direction === 'down' && k.state === 'claimed')).toHaveLength(1);
  });

  it('a downlink session id names that device’s session only', async () => {
    const a = await provisionDevice(t.admin, 'atk-a4', 1, 2);
    const b = await provisionDevice(t.admin, 'atk-a4-b', 1, 2);
    await b1.encKeys(a.deviceId, 1, 'shared-name');
    const r = await b1.bulkAbandon([{ SAE_ID: b.deviceId, downlink_session_id: 'shared-name' }]);
    expect(r.results).toEqual([{ retired: 0 }]);
    const keys = (await t.admin.deviceKeys(a.deviceId)).keys;
    expect(keys.filter((k) => k.direction === 'down' && k.state === 'claimed')).toHaveLength(1);
  });

  it('an oversized or malformed abandon list is refused whole, nothing retired', async () => {
    const dev = await provisionDevice(t.admin, 'atk-a3', 1, 1);
    const valid = {
      SAE_ID: dev.deviceId,
      key_IDs: [{ key_ID: keyIdFor(dev.deviceId, 0), qkey_proof: proofJson(uplinkProof(dev, 0)) }],
    };
    const many = JSON.stringify({
      abandons: [valid, ...Array.from({ length: 20_000 }, () => ({ SAE_ID: 'x', downlink_session_id: 's' }))],
    });
    expect([400, 413]).toContain((await raw('POST', '/api/v1/bulk/abandons', { token: tokens.b1, body: many })).status);
    for (const body of [
      JSON.stringify({ abandons: [valid, { SAE_ID: dev.deviceId }] }),
      JSON.stringify({ abandons: [valid, { SAE_ID: '../x', downlink_session_id: 's' }] }),
      JSON.stringify({ abandons: [{ ...valid, SAE_ID: undefined }] }),
      JSON.stringify({ abandons: [valid], more: 1 }),
      JSON.stringify({ abandons: [] }),
      JSON.stringify({ abandons: [valid] }).slice(0, -3),
    ]) {
      expect((await raw('POST', '/api/v1/bulk/abandons', { token: tokens.b1, body })).status, body.slice(0, 60)).toBe(
        400,
      );
    }
    expect((await stateOf(dev.deviceId, 0))?.state).toBe('filled');
  });
});

describe('CORS tricks', () => {
  const preflight = (
    path: string,
    origin: string | string[],
    method = 'POST',
    reqHeaders = 'content-type, authorization',
  ) =>
    raw('OPTIONS', path, {
      headers: { origin, 'access-control-request-method': method, 'access-control-request-headers': reqHeaders },
    });

  it.each([
    'null',
    'https://app.example.',
    'https://app.example:443',
    'https://app.example@evil.example',
    'https://evil.example#https://app.example',
    `${PAGE}, https://evil.example`,
    `https://evil.example ${PAGE}`,
    'https://app.example.evil.example',
    'https://evilapp.example',
    'https://xn--app-example',
  ])('origin %j gets no CORS grant on the app routes', async (origin) => {
    for (const path of ['/api/v1/apps/session', '/api/v1/apps/session/challenge', '/api/v1/auth/token']) {
      const pre = await preflight(path, origin);
      expect(pre.status, path).toBe(403);
      expect(pre.headers['access-control-allow-origin']).toBeUndefined();
      const call = await raw('POST', path, { token: tokens.vault, headers: { origin }, body: '{}' });
      expect(call.headers['access-control-allow-origin'], path).toBeUndefined();
    }
  });

  // Scheme and host of an origin are case-insensitive (RFC 6454 §4, browsers send them lower-case), and HTTP drops the
  // whitespace around a header value: these are the listed origin, answered with the spelling the request used.
  it.each(['https://APP.example', 'HTTPS://app.example', ' https://app.example '])(
    'origin %j is the listed origin, echoed as sent, still without credentials',
    async (origin) => {
      const pre = await preflight('/api/v1/apps/session', origin);
      expect(pre.status).toBe(204);
      expect(pre.headers['access-control-allow-origin']?.toString().toLowerCase()).toBe(PAGE);
      expect(pre.headers['access-control-allow-credentials']).toBeUndefined();
    },
  );

  it('two Origin headers, one listed, get no grant', async () => {
    const pre = await preflight('/api/v1/apps/session', ['https://evil.example', PAGE]);
    expect(pre.headers['access-control-allow-origin'] ?? 'none').not.toBe('https://evil.example');
    expect(pre.headers['access-control-allow-origin']).not.toBe('*');
  });

  it('a listed origin on other spellings of the app routes gets what the route gives, and nothing more', async () => {
    for (const path of ['/API/V1/APPS/SESSION', '/api/v1/apps/session/', '/api/v1//apps/x/../session']) {
      const pre = await preflight(path, PAGE);
      expect(pre.headers['access-control-allow-origin'] ?? PAGE).toBe(PAGE);
      expect(pre.headers['access-control-allow-credentials']).toBeUndefined();
    }
    // Routes outside the three never grant, whatever their spelling suggests.
    for (const path of [
      '/api/v1/apps/session/../../admin/apps',
      '/api/v1/apps/session%2F..%2F..%2Fadmin%2Fapps',
      `/api/v1/end-to-end/keys/atk-e1/dec_keys`,
      '/api/v1/apps/vault/dec_keys',
      '/api/v1/apps/session;/../../bulk/abandons',
    ]) {
      const pre = await preflight(path, PAGE);
      expect(pre.headers['access-control-allow-origin'], path).toBeUndefined();
      const call = await raw('POST', path, { token: tokens.vault, headers: { origin: PAGE }, body: '{}' });
      expect(call.headers['access-control-allow-origin'], path).toBeUndefined();
    }
  });

  it('a listed origin asking for credentials-bearing headers or another method is refused', async () => {
    for (const [m, h] of [
      ['POST', 'content-type, authorization, cookie'],
      ['POST', 'x-forwarded-for'],
      ['post', 'content-type'],
      ['PUT', 'content-type'],
      ['GET', ''],
    ] as const) {
      const pre = await preflight('/api/v1/apps/session', PAGE, m, h);
      if (m === 'post' && pre.status === 204) continue; // method names are case-sensitive; "post" is not POST but harmless
      expect(pre.status, `${m} ${h}`).toBe(403);
    }
  });
});
