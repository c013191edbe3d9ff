// The per-device downlink claim budget: a token bucket (unit), and at the broker a stolen token reconnecting a
// persistent session with an unacknowledged command cannot claim more downlink keys than the budget allows.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClaimBudget } from '../../broker/claim-budget.js';
import { RawMqtt } from '../helpers/raw-mqtt.js';
import { startTestSystem, type TestSystem } from '../helpers/system.js';

describe('ClaimBudget', () => {
  it('allows perMinute claims at once, then one per 60/perMinute seconds, per device', () => {
    let now = 0;
    const budget = new ClaimBudget(3, () => now);
    expect([1, 2, 3, 4].map(() => budget.take('a'))).toEqual([true, true, true, false]);
    expect(budget.take('b')).toBe(true);
    now += 19_000;
    expect(budget.take('a')).toBe(false);
    now += 1_000;
    expect([budget.take('a'), budget.take('a')]).toEqual([true, false]);
    now += 10 * 60_000;
    expect([1, 2, 3, 4].map(() => budget.take('a'))).toEqual([true, true, true, false]);
  });
});

describe('at the broker', () => {
  let sys: TestSystem;
  beforeAll(async () => {
    sys = await startTestSystem({ maxDownlinkClaimsPerMinute: 2 });
  });
  afterAll(async () => {
    await sys.stop();
  });

  it('a token thief reconnecting a persistent session with a queued command claims at most the budget', async () => {
    const chip = await sys.device('dev-drain', 1, 20);
    const first = await sys.connectDevice(chip, { clean: false });
    await first.subscribeAsync('devices/dev-drain/down/#', { qos: 1 });
    await first.endAsync();
    const app = await sys.connectApp('ops-drain', { publish: ['devices/+/down/#'] });
    await app.publishAsync('devices/dev-drain/down/cmd', 'never acknowledged', { qos: 1 });
    const password = await sys.deviceToken(chip);
    const codes: number[] = [];
    for (let i = 0; i < 5; i++) {
      const { raw, returnCode } = await RawMqtt.connect(sys.mqttUrl, {
        clientId: 'dev-drain',
        username: 'dev-drain',
        password,
        clean: false,
      });
      codes.push(returnCode);
      await new Promise((r) => setTimeout(r, 100));
      raw.destroy(); // never PUBACK: the command stays queued
      await raw.closed;
    }
    expect(codes).toEqual([0, 0, 3, 3, 3]);
    const claimed = (await sys.kms.admin.deviceKeys('dev-drain')).keys.filter(
      (k) => k.direction === 'down' && k.state !== 'filled',
    );
    expect(claimed).toHaveLength(2);
  });
});
