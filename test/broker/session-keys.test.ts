// A device session's keys at the broker, against a real key service: claims, rotation without waiting,
// uplink claims shared by concurrent messages, foreign keys, an empty pool, and retirement.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { DeviceSessionKeys, type SessionEvent, UplinkKeyError } from '../../broker/session-keys.js';
import { KmsClient } from '../../kms-api/client.js';
import { EnvelopeKey, openEnvelope, parseEnvelope, SUITE_SM4_GCM, sealEnvelope } from '../../protocol/index.js';
import { brokerClient, provisionDevice, removeDir, startTestKms, type TestKms } from '../helpers/kms.js';

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

describe('downlink', () => {
  it('claims current and next before the session starts, rotates after the limit, and prefetches in the background', async () => {
    const dev = await provisionDevice(t.admin, 'dev-sk', 1, 6);
    const events: SessionEvent[] = [];
    const s = new DeviceSessionKeys(broker, 'dev-sk', 'sess-1', { messages: 3, bytes: 1 << 20, seconds: 3600 }, (e) =>
      events.push(e),
    );
    await s.start();
    expect(s.downlinkKeyIndex).toBe(1);
    const topic = 'devices/dev-sk/down/cmd';
    const indices: number[] = [];
    for (let i = 0; i < 7; i++) {
      const env = s.sealDownlink(enc.encode(`cmd ${i}`), topic)!;
      const h = parseEnvelope(env);
      indices.push(h.keyIndex);
      const key = new EnvelopeKey(dev.keys.get(h.keyIndex)!.key);
      expect(dec.decode(openEnvelope(env, { key, deviceId: 'dev-sk', topic, direction: 'down' }).payload)).toBe(
        `cmd ${i}`,
      );
      await new Promise((r) => setTimeout(r, 20)); // let background prefetches land
    }
    expect(indices).toEqual([1, 1, 1, 2, 2, 2, 3]);
    expect(events.filter((e) => e.kind === 'downlink-rotated')).toHaveLength(2);
    await s.close();
    const states = new Map((await t.admin.deviceKeys('dev-sk')).keys.map((k) => [k.key_index, k.state]));
    expect([1, 2, 3, 4].map((i) => states.get(i))).toEqual(['retired', 'retired', 'retired', 'retired']);
    expect(states.get(5)).toBe('filled');
  });

  it('never waits: past the limit with no next key it keeps the current key and reports the rotation overdue', async () => {
    await provisionDevice(t.admin, 'dev-one', 0, 1);
    const events: SessionEvent[] = [];
    const s = new DeviceSessionKeys(broker, 'dev-one', 'sess-2', { messages: 1, bytes: 1 << 20, seconds: 3600 }, (e) =>
      events.push(e),
    );
    await s.start();
    expect(s.sealDownlink(enc.encode('a'), 'devices/dev-one/down/x')).toBeDefined();
    expect(parseEnvelope(s.sealDownlink(enc.encode('b'), 'devices/dev-one/down/x')!).keyIndex).toBe(0);
    expect(events.map((e) => e.kind)).toContain('downlink-overdue');
    await s.close();
  });

  it('an empty downlink pool starts the session without a downlink key; deliveries are dropped and reported', async () => {
    await provisionDevice(t.admin, 'dev-empty', 1, 0);
    const events: SessionEvent[] = [];
    const s = new DeviceSessionKeys(broker, 'dev-empty', 'sess-3', undefined, (e) => events.push(e));
    await s.start();
    expect(s.downlinkKeyIndex).toBeUndefined();
    expect(s.sealDownlink(enc.encode('x'), 'devices/dev-empty/down/x')).toBeUndefined();
    expect(events.map((e) => e.kind)).toContain('downlink-unavailable');
    await s.close();
  });

  it('an unreachable key service fails start (the broker answers CONNACK 3)', async () => {
    const s = new DeviceSessionKeys(new KmsClient('http://127.0.0.1:1', { timeoutMs: 500 }), 'dev-sk', 'sess-4');
    await expect(s.start()).rejects.toMatchObject({ code: 'KMS_UNREACHABLE' });
  });
});

describe('uplink', () => {
  it('claims each uplink key once per session, shared by concurrent messages, and refuses another session', async () => {
    const dev = await provisionDevice(t.admin, 'dev-up', 3, 2);
    const s = new DeviceSessionKeys(broker, 'dev-up', 'sess-5');
    const [a, b] = await Promise.all([s.uplinkKey(0), s.uplinkKey(0)]);
    expect(a).toBe(b);
    const topic = 'devices/dev-up/up/t';
    const env = sealEnvelope(enc.encode('21.5'), {
      key: dev.keys.get(0)!.key,
      keyIndex: 0,
      seq: 0,
      deviceId: 'dev-up',
      topic,
      direction: 'up',
    });
    expect(
      dec.decode(
        openEnvelope(env, { key: a.key, deviceId: 'dev-up', topic, direction: 'up', replay: a.replay }).payload,
      ),
    ).toBe('21.5');
    const claims = (await t.admin.audit({ device_id: 'dev-up', action: 'key.claim.dec' })).entries;
    expect(claims).toHaveLength(1);
    const other = new DeviceSessionKeys(broker, 'dev-up', 'sess-6');
    await expect(other.uplinkKey(0)).rejects.toMatchObject({ reason: 'foreign_key' });
    await expect(other.uplinkKey(3)).rejects.toBeInstanceOf(UplinkKeyError); // a downlink index is no uplink key
    await s.close();
    await other.close();
  });

  it('a key-service outage is reported as kms_unavailable and not cached', async () => {
    await provisionDevice(t.admin, 'dev-up2', 1, 1);
    const down = new DeviceSessionKeys(new KmsClient('http://127.0.0.1:1', { timeoutMs: 500 }), 'dev-up2', 'sess-7');
    await expect(down.uplinkKey(0)).rejects.toMatchObject({ reason: 'kms_unavailable' });
    (down as unknown as { kms: KmsClient }).kms = broker;
    expect((await down.uplinkKey(0)).key).toBeInstanceOf(EnvelopeKey);
    await down.close();
  });
});

describe('uplink key claimed at connect', () => {
  it("claims the chip's first uplink key before CONNACK; a mismatch wastes one key and shares none", async () => {
    const dev = await provisionDevice(t.admin, 'dev-pre', 4, 4);
    const a = new DeviceSessionKeys(broker, 'dev-pre', 'sess-pre-a');
    const suite = vi.spyOn(EnvelopeKey.prototype, 'suite');
    let built: Array<[unknown, unknown]>;
    try {
      await a.start();
      built = suite.mock.contexts.map((key, i) => [key, suite.mock.calls[i]![0]]);
    } finally {
      suite.mockRestore();
    }
    expect(a.readyUplinkKey(0)).toBeDefined(); // the first publish will not wait
    // ... nor build the key schedule: that happened before CONNACK too.
    expect(built).toContainEqual([a.readyUplinkKey(0)!.key, SUITE_SM4_GCM]);
    await a.close();
    // The chip abandons key 1 in a session that never reached the broker and uses key 2 in the next one.
    const b = new DeviceSessionKeys(broker, 'dev-pre', 'sess-pre-b');
    await b.start(); // prefetches key 1 (the key service's lowest unused), which the chip will never use again
    expect(b.readyUplinkKey(1)).toBeDefined();
    const topic = 'devices/dev-pre/up/t';
    const env = sealEnvelope(enc.encode('x'), {
      key: dev.keys.get(2)!.key,
      keyIndex: 2,
      seq: 0,
      deviceId: 'dev-pre',
      topic,
      direction: 'up',
    });
    const k2 = await b.uplinkKey(2);
    expect(dec.decode(openEnvelope(env, { key: k2.key, deviceId: 'dev-pre', topic, direction: 'up' }).payload)).toBe(
      'x',
    );
    await b.close();
    const states = (await t.admin.deviceKeys('dev-pre')).keys
      .filter((k) => k.direction === 'up')
      .map((k) => [k.key_index, k.claimed_session]);
    expect(states).toEqual([
      [0, 'sess-pre-a'],
      [1, 'sess-pre-b'],
      [2, 'sess-pre-b'],
      [3, null],
    ]);
  });
});
