// Kill the key service with SIGKILL during a stream of claims, restart it: no key is delivered twice, no claim lost.
import { afterAll, expect, it } from 'vitest';
import { KmsClient, KmsHttpError } from '../../kms-api/client.js';
import { keyIdFor } from '../../protocol/index.js';
import { claimUplink, provisionDevice, removeDir, tempDir, uplinkProof } from '../helpers/kms.js';
import { spawnQkey } from '../helpers/process.js';

const dir = tempDir();
afterAll(() => removeDir(dir));

const READY = /qkey kms listening on (\S+)/;
const env = { QKEY_ADMIN_TOKEN: 'crash-admin', QKEY_KMS_LOG_LEVEL: 'warn' };
const UP = 400;
const DOWN = 400;

it('SIGKILL mid-stream: every delivered key stays claimed, none is delivered again, claiming resumes', async () => {
  let kms = await spawnQkey(['kms', '--init', '--port', '0', '--data', dir], READY, env);
  let admin = new KmsClient(kms.ready, { token: 'crash-admin' });
  const dev = await provisionDevice(admin, 'dev-crash', UP, DOWN);
  const { client_secret } = await admin.registerBroker('broker-crash');
  const brokerToken = (await admin.clientToken('broker-crash', client_secret)).access_token;
  let broker = admin.withToken(brokerToken);

  const delivered: string[] = [];
  const refused: KmsHttpError[] = [];
  let nextUp = 0;
  let uplinkDelivered = 0;
  let stop = false;
  // Concurrent clients until the process dies: four claim downlink keys; one claims uplink keys by id, each with its
  // proof of use, in rising order as a chip uses them (a key below one already claimed is superseded, §9.1).
  const worker = async (kind: 'enc' | 'dec') => {
    while (!stop) {
      try {
        const r =
          kind === 'enc' ? await broker.encKeys('dev-crash', 1, 's1') : await claimUplink(broker, dev, nextUp++, 's1');
        delivered.push(...r.keys.map((k) => k.key_ID));
        if (kind === 'dec') uplinkDelivered += r.keys.length;
      } catch (err) {
        // The key service died under us; an answer that refused a claim is a failure of this test.
        if (err instanceof KmsHttpError) refused.push(err);
        return;
      }
    }
  };
  const workers = [...Array.from({ length: 4 }, () => worker('enc')), worker('dec')];
  while (delivered.length < 150) await new Promise((r) => setTimeout(r, 5));
  await kms.stop('SIGKILL');
  stop = true;
  await Promise.all(workers);
  const beforeKill = [...delivered];
  expect(refused).toEqual([]);
  expect(uplinkDelivered).toBeGreaterThan(0);
  expect(new Set(beforeKill).size).toBe(beforeKill.length);

  kms = await spawnQkey(['kms', '--port', '0', '--data', dir], READY, env);
  admin = new KmsClient(kms.ready, { token: 'crash-admin' });
  broker = admin.withToken(brokerToken);
  try {
    const states = new Map((await admin.deviceKeys('dev-crash')).keys.map((k) => [k.key_ID, k.state]));
    // No committed claim is lost: everything delivered before the kill is recorded as claimed.
    for (const id of beforeKill) expect(states.get(id)).toBe('claimed');
    // Claims in flight at the kill either committed (claimed, never delivered) or never happened (still filled).
    expect([...states.values()].every((s) => s === 'claimed' || s === 'filled')).toBe(true);
    // Nothing delivered before can be delivered again, whichever pool it came from, even with a valid proof of use.
    const indexOf = new Map([...dev.keys.keys()].map((i) => [keyIdFor('dev-crash', i), i]));
    for (const id of beforeKill.slice(0, 20)) {
      const proof = uplinkProof(dev, indexOf.get(id)!);
      const e = (await broker
        .decKeys('dev-crash', [id], undefined, [proof])
        .catch((x: KmsHttpError) => x)) as KmsHttpError;
      expect(e.code).toBe('KMS_ERR_KEY_UNAVAILABLE');
      expect(e.details).toEqual([{ key_ID: id, reason: indexOf.get(id)! < UP ? 'claimed' : 'not an uplink key' }]);
    }
    // Claiming resumes with fresh keys only.
    const after = await broker.encKeys('dev-crash', 5);
    for (const k of after.keys) expect(beforeKill).not.toContain(k.key_ID);
    const nextFilledUp = [...indexOf].find(([id, i]) => i < UP && states.get(id) === 'filled')![1];
    expect((await claimUplink(broker, dev, nextFilledUp)).keys[0]!.key_ID).toBe(keyIdFor('dev-crash', nextFilledUp));
    const claimed = [...states.values()].filter((s) => s === 'claimed').length;
    expect(claimed).toBeGreaterThanOrEqual(beforeKill.length);
  } finally {
    await kms.stop();
  }
}, 60_000);
