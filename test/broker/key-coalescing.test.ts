// Many devices' sessions at one broker, their key requests through one KmsCoalescer, against a real key service:
// first messages arriving together are claimed in one bulk request, one device's forged envelope refuses that
// device alone, and a broker shutting down retires every key its sessions held before it is done.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { DeviceSessionKeys } from '../../broker/session-keys.js';
import { UplinkKeys } from '../../broker/uplink-keys.js';
import type { KmsClient } from '../../kms-api/client.js';
import { KmsCoalescer } from '../../kms-api/coalescer.js';
import {
  brokerClient,
  type ProvisionedDevice,
  proofFor,
  provisionDevice,
  removeDir,
  startTestKms,
  type TestKms,
  uplinkProof,
} from '../helpers/kms.js';

let t: TestKms;
let broker: KmsClient;
beforeAll(async () => {
  t = await startTestKms();
  broker = await brokerClient(t);
});
afterAll(async () => {
  await t.stop();
  removeDir(t.dataDir);
});

it('claims the first keys of many sessions in one request, refuses a forged one alone, retires all at shutdown', async () => {
  const devs = await Promise.all([0, 1, 2, 3].map((i) => provisionDevice(t.admin, `coal-${i}`, 2, 2)));
  const paths: string[] = [];
  const recorded = Object.create(broker) as KmsClient;
  recorded.requestJson = (method, path, json) => {
    paths.push(path);
    return broker.requestJson(method, path, json);
  };
  const delivery = new KmsCoalescer(recorded);
  const uplinks = new UplinkKeys(delivery);
  const sessions = devs.map((d, i) => new DeviceSessionKeys(delivery, uplinks, d.deviceId, `s-${i}`));

  const forged = proofFor(devs[3]!.deviceId, 0, devs[2]!.keys.get(0)!.key); // sealed under another device's key
  const claims = await Promise.allSettled([
    ...sessions.slice(0, 3).map((s, i) => s.uplinkKey(0, uplinkProof(devs[i]!, 0))),
    sessions[3]!.uplinkKey(0, forged),
  ]);
  expect(claims.map((c) => c.status)).toEqual(['fulfilled', 'fulfilled', 'fulfilled', 'rejected']);
  expect((claims[3] as PromiseRejectedResult).reason).toMatchObject({ reason: 'forged' });
  expect(paths).toEqual(['/api/v1/bulk/claims']);

  // Downlink keys of two sessions, claimed at their first command.
  await Promise.all(sessions.slice(0, 2).map((s) => s.prepareDownlink()));

  // Shutdown as the broker's plugin does it: sessions, then held uplink keys, then the coalescer.
  paths.length = 0;
  await Promise.all(sessions.map((s) => s.close()));
  await uplinks.close();
  await delivery.close();
  expect(paths.every((p) => p === '/api/v1/bulk/retirements')).toBe(true);
  for (const d of devs) {
    const { keys } = await t.admin.deviceKeys(d.deviceId);
    expect(keys.filter((k) => k.state === 'claimed')).toEqual([]);
  }
  const retired = async (d: ProvisionedDevice) =>
    (await t.admin.deviceKeys(d.deviceId)).keys.filter((k) => k.state === 'retired').map((k) => k.key_index);
  expect(await retired(devs[0]!)).toEqual([0, 2]);
  expect(await retired(devs[2]!)).toEqual([0]);
  expect(await retired(devs[3]!)).toEqual([]);
});

it('retires a key whose claim was still in flight when the broker began shutting down', async () => {
  const dev = await provisionDevice(t.admin, 'coal-inflight', 2, 0);
  let unanswered = 0;
  const counting = Object.create(broker) as KmsClient;
  counting.requestJson = <T>(method: string, path: string, json: string | undefined) => {
    unanswered++;
    return broker.requestJson<T>(method, path, json).finally(() => unanswered--);
  };
  const delivery = new KmsCoalescer(counting);
  const uplinks = new UplinkKeys(delivery);
  const session = new DeviceSessionKeys(delivery, uplinks, dev.deviceId, 's-inflight');
  const claim = session.uplinkKey(0, uplinkProof(dev, 0)); // queued at the coalescer, not sent yet
  // Shutdown as the broker's plugin does it, without waiting for the claim: its key must still be retired by the
  // time the coalescer has closed.
  await session.close();
  await uplinks.close();
  await delivery.close();
  expect(unanswered).toBe(0); // the broker's thread may end now: nothing it sent is still waiting
  await claim;
  const { keys } = await t.admin.deviceKeys(dev.deviceId);
  expect(keys.find((k) => k.key_index === 0)!.state).toBe('retired');
});
