// A device connection's keys at the broker, against a real key service: downlink keys claimed at the first command
// (deliveries wait for it, in order) and rotated without waiting; uplink keys claimed with their proof of use,
// shared by the device's connections, retired once the chip moved on or the device stayed away.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceSessionKeys, type SessionEvent } from '../../broker/session-keys.js';
import { UplinkKeyError, UplinkKeys } from '../../broker/uplink-keys.js';
import { KmsClient, type UplinkProof } from '../../kms-api/client.js';
import { EnvelopeKey, openEnvelope, parseEnvelope, sealEnvelope } from '../../protocol/index.js';
import {
  brokerClient,
  type ProvisionedDevice,
  provisionDevice,
  removeDir,
  startTestKms,
  type TestKms,
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

const enc = new TextEncoder();
const dec = new TextDecoder();
const tick = (ms = 20) => new Promise((r) => setTimeout(r, ms));

function session(deviceId: string, sessionId: string, uplinks = new UplinkKeys(broker), events: SessionEvent[] = []) {
  return new DeviceSessionKeys(broker, uplinks, deviceId, sessionId, undefined, (e) => events.push(e));
}

/** An envelope the device's chip could have sealed under uplink key `index`, as its proof of use. */
function proof(dev: ProvisionedDevice, index: number, seq = 0, text = 'x'): UplinkProof & { text: string } {
  const topic = `devices/${dev.deviceId}/up/t`;
  const envelope = sealEnvelope(enc.encode(text), {
    key: dev.keys.get(index)!.key,
    keyIndex: index,
    seq,
    deviceId: dev.deviceId,
    topic,
    direction: 'up',
  });
  return { envelope, topic, direction: 'up', text };
}

async function keyStates(deviceId: string): Promise<Map<number, string>> {
  return new Map((await t.admin.deviceKeys(deviceId)).keys.map((k) => [k.key_index, k.state]));
}

describe('downlink', () => {
  it('claims nothing until the first command; deliveries wait for that claim in order, then rotate without waiting', async () => {
    const dev = await provisionDevice(t.admin, 'dev-sk', 1, 6);
    const events: SessionEvent[] = [];
    const s = new DeviceSessionKeys(
      broker,
      new UplinkKeys(broker),
      'dev-sk',
      'sess-1',
      { messages: 3, bytes: 1 << 20, seconds: 3600 },
      (e) => events.push(e),
    );
    await tick(50);
    expect([...(await keyStates('dev-sk')).values()].every((st) => st === 'filled')).toBe(true);
    const topic = 'devices/dev-sk/down/cmd';
    const sealed: Uint8Array[] = [];
    const deliver = (i: number) =>
      s.whenSealable(
        () => sealed.push(s.sealDownlink(enc.encode(`cmd ${i}`), topic)!),
        () => undefined,
      );
    // The first two wait for the first claim, and go out in order once it lands.
    deliver(0);
    deliver(1);
    expect(sealed).toHaveLength(0);
    for (let i = 0; i < 200 && sealed.length < 2; i++) await tick();
    const prefetching = () => (s as unknown as { prefetching?: Promise<void> }).prefetching;
    for (let i = 2; i < 7; i++) {
      deliver(i);
      await prefetching(); // let a background prefetch land before the next command
    }
    const indices = sealed.map((env, i) => {
      const h = parseEnvelope(env);
      const key = new EnvelopeKey(dev.keys.get(h.keyIndex)!.key);
      expect(dec.decode(openEnvelope(env, { key, deviceId: 'dev-sk', topic, direction: 'down' }).payload)).toBe(
        `cmd ${i}`,
      );
      return h.keyIndex;
    });
    expect(indices).toEqual([1, 1, 1, 2, 2, 2, 3]);
    expect(events.filter((e) => e.kind === 'downlink-rotated')).toHaveLength(2);
    await s.close();
    const states = await keyStates('dev-sk');
    expect([1, 2, 3].map((i) => states.get(i))).toEqual(['retired', 'retired', 'retired']);
    expect([4, 5, 6].map((i) => states.get(i))).not.toContain('claimed');
  });

  it('never waits once keyed: past the limit with no next key it keeps the current key and reports it overdue', async () => {
    await provisionDevice(t.admin, 'dev-one', 0, 1);
    const events: SessionEvent[] = [];
    const s = new DeviceSessionKeys(
      broker,
      new UplinkKeys(broker),
      'dev-one',
      'sess-2',
      { messages: 1, bytes: 1 << 20, seconds: 3600 },
      (e) => events.push(e),
    );
    await s.prepareDownlink();
    expect(s.sealDownlink(enc.encode('a'), 'devices/dev-one/down/x')).toBeDefined();
    expect(parseEnvelope(s.sealDownlink(enc.encode('b'), 'devices/dev-one/down/x')!).keyIndex).toBe(0);
    expect(events.map((e) => e.kind)).toContain('downlink-overdue');
    await s.close();
  });

  it('an empty downlink pool lets the waiting deliveries through (dropped and reported), and retries later', async () => {
    await provisionDevice(t.admin, 'dev-empty', 1, 0);
    const events: SessionEvent[] = [];
    const s = session('dev-empty', 'sess-3', undefined, events);
    const ran: string[] = [];
    s.whenSealable(
      () => ran.push(String(s.sealDownlink(enc.encode('x'), 'devices/dev-empty/down/x'))),
      () => ran.push('released'),
    );
    for (let i = 0; i < 100 && ran.length === 0; i++) await tick();
    expect(ran).toEqual(['undefined']);
    expect(events.map((e) => e.kind)).toContain('downlink-prefetch-failed');
    await expect(s.prepareDownlink()).rejects.toMatchObject({ code: 'KMS_ERR_POOL_EMPTY' });
    await s.close();
  });

  it('deliveries still waiting when the connection ends are released undelivered', async () => {
    await provisionDevice(t.admin, 'dev-gone', 0, 2);
    const s = new DeviceSessionKeys(
      new KmsClient('http://127.0.0.1:1', { timeoutMs: 2000 }),
      new UplinkKeys(broker),
      'dev-gone',
      'sess-gone',
    );
    const ran: string[] = [];
    s.whenSealable(
      () => ran.push('delivered'),
      () => ran.push('released'),
    );
    await s.close();
    expect(ran).toEqual(['released']);
    s.whenSealable(
      () => ran.push('delivered'),
      () => ran.push('released'),
    );
    expect(ran).toEqual(['released', 'released']);
  });

  it('an unreachable key service fails prepareDownlink (a persistent session with queued commands gets CONNACK 3)', async () => {
    const s = new DeviceSessionKeys(
      new KmsClient('http://127.0.0.1:1', { timeoutMs: 500 }),
      new UplinkKeys(broker),
      'dev-sk',
      'sess-4',
    );
    await expect(s.prepareDownlink()).rejects.toMatchObject({ code: 'KMS_UNREACHABLE' });
    await s.close();
  });
});

describe('uplink', () => {
  it('claims a key once, with its proof, shared by concurrent messages and by the device’s next connection', async () => {
    const dev = await provisionDevice(t.admin, 'dev-up', 3, 2);
    const uplinks = new UplinkKeys(broker);
    const s = session('dev-up', 'sess-5', uplinks);
    const p = proof(dev, 0, 0, '21.5');
    const [a, b] = await Promise.all([s.uplinkKey(0, p), s.uplinkKey(0, proof(dev, 0, 1))]);
    expect(a).toBe(b);
    expect(
      dec.decode(openEnvelope(p.envelope, { key: a.key, deviceId: 'dev-up', topic: p.topic, direction: 'up' }).payload),
    ).toBe('21.5');
    expect((await t.admin.audit({ device_id: 'dev-up', action: 'key.claim.dec' })).entries).toHaveLength(1);
    // A reconnect the chip did not see as a new session continues under the same key and replay window.
    await s.close();
    const again = session('dev-up', 'sess-5b', uplinks);
    expect(again.readyUplinkKey(0)).toBe(a);
    await again.close();
    await uplinks.close();
  });

  it('refuses a key another session spent (key_spent), a forged proof without spending the key, and downlink indices', async () => {
    const dev = await provisionDevice(t.admin, 'dev-spent', 3, 2);
    const here = new UplinkKeys(broker);
    const elsewhere = new UplinkKeys(broker); // another broker, or this one after a restart
    await session('dev-spent', 'sess-a', here).uplinkKey(0, proof(dev, 0));
    await expect(session('dev-spent', 'sess-b', elsewhere).uplinkKey(0, proof(dev, 0, 1))).rejects.toMatchObject({
      reason: 'key_spent',
    });
    const forged = proof(dev, 1);
    forged.envelope[forged.envelope.length - 1]! ^= 1; // one bit of the tag
    await expect(session('dev-spent', 'sess-c', elsewhere).uplinkKey(1, forged)).rejects.toMatchObject({
      reason: 'forged',
    });
    expect((await keyStates('dev-spent')).get(1)).toBe('filled'); // a forged envelope spends nothing
    expect((await session('dev-spent', 'sess-c', elsewhere).uplinkKey(1, proof(dev, 1))).index).toBe(1);
    await expect(session('dev-spent', 'sess-d', elsewhere).uplinkKey(3, proof(dev, 3))).rejects.toBeInstanceOf(
      UplinkKeyError,
    ); // a downlink index is no uplink key
    await here.close();
    await elsewhere.close();
  });

  it('retires older keys once the chip moved on, keeps a key a will names, and retires all after the linger time', async () => {
    const dev = await provisionDevice(t.admin, 'dev-linger', 4, 0);
    const uplinks = new UplinkKeys(broker, 200);
    const s = session('dev-linger', 'sess-l', uplinks);
    await s.uplinkKey(0, proof(dev, 0));
    const unpin = s.pinUplinkKey(1);
    await s.uplinkKey(1, proof(dev, 1));
    await s.uplinkKey(2, proof(dev, 2));
    await tick(50);
    let states = await keyStates('dev-linger');
    expect([0, 1, 2, 3].map((i) => states.get(i))).toEqual(['retired', 'claimed', 'claimed', 'filled']);
    // A chip never goes back: an older index is refused without asking the key service.
    await expect(s.uplinkKey(0, proof(dev, 0, 5))).rejects.toMatchObject({ reason: 'key_spent' });
    unpin();
    await tick(50);
    expect((await keyStates('dev-linger')).get(1)).toBe('retired');
    await s.close();
    for (let i = 0; i < 100 && (await keyStates('dev-linger')).get(2) !== 'retired'; i++) await tick(25);
    states = await keyStates('dev-linger');
    expect([0, 1, 2, 3].map((i) => states.get(i))).toEqual(['retired', 'retired', 'retired', 'filled']);
  });

  it('a forged envelope claiming a key first does not take the honest envelope waiting on that claim down with it', async () => {
    const dev = await provisionDevice(t.admin, 'dev-poison', 2, 0);
    const uplinks = new UplinkKeys(broker);
    const forged = proof(dev, 0, 9);
    forged.envelope[forged.envelope.length - 1]! ^= 1;
    const [thief, honest] = await Promise.allSettled([
      uplinks.claim('dev-poison', 0, forged, 'thief'),
      uplinks.claim('dev-poison', 0, proof(dev, 0), 'honest'),
    ]);
    expect(thief).toMatchObject({ status: 'rejected', reason: { reason: 'forged' } });
    expect(honest).toMatchObject({ status: 'fulfilled', value: { index: 0 } });
    await uplinks.close();
  });

  it('at most two new keys of one device are claimed at once: a flood of made-up indices costs the key service little', async () => {
    const dev = await provisionDevice(t.admin, 'dev-flood', 6, 0);
    const uplinks = new UplinkKeys(broker);
    const forgedAt = (i: number) => {
      const p = proof(dev, i);
      p.envelope[p.envelope.length - 1]! ^= 1;
      return p;
    };
    const results = await Promise.allSettled(
      [0, 1, 2, 3, 4].map((i) => uplinks.claim('dev-flood', i, forgedAt(i), 's')),
    );
    const reasons = results.map((r) => (r.status === 'rejected' ? (r.reason as UplinkKeyError).reason : 'ok'));
    expect(reasons).toEqual(['forged', 'forged', 'error', 'error', 'error']);
    expect([...(await keyStates('dev-flood')).values()].every((st) => st === 'filled')).toBe(true);
    await uplinks.close();
  });

  it('a key-service outage is reported as kms_unavailable and not cached', async () => {
    const dev = await provisionDevice(t.admin, 'dev-up2', 1, 1);
    const down = new UplinkKeys(new KmsClient('http://127.0.0.1:1', { timeoutMs: 500 }));
    await expect(down.claim('dev-up2', 0, proof(dev, 0), 's')).rejects.toMatchObject({ reason: 'kms_unavailable' });
    (down as unknown as { kms: KmsClient }).kms = broker;
    expect((await down.claim('dev-up2', 0, proof(dev, 0), 's')).key).toBeInstanceOf(EnvelopeKey);
    await down.close();
  });
});
