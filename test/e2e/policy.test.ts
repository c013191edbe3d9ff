// The policy table end to end: a change set through the admin API reaches the running broker without a restart,
// and each limit is enforced on real devices (emulated chips) and applications over MQTT, refused and counted.
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PolicyBodyJson } from '../../kms-api/policy-schemas.js';
import { parseEnvelope, SUITE_SM4_CTR_HMAC_SM3 } from '../../protocol/index.js';
import { closed, nextMessage, startTestSystem, type TestSystem } from '../helpers/system.js';

let sys: TestSystem;
let app: MqttClient;

beforeAll(async () => {
  sys = await startTestSystem();
  app = await sys.connectApp('app-policy', { subscribe: ['devices/+/up/#'], publish: ['devices/+/down/#'] });
  await app.subscribeAsync('devices/+/up/#', { qos: 1 });
});
afterAll(async () => {
  await sys.stop();
});

/** Sets an entry and waits until the running broker's own poll has brought it in (no restart, no nudge). */
async function setPolicy(id: string, body: PolicyBodyJson): Promise<number> {
  const { version } = await sys.kms.admin.setPolicy(id, body);
  for (let i = 0; sys.broker.policy.current.version < version; i++) {
    if (i > 200) throw new Error(`the broker did not pick up policy version ${version}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return version;
}

async function metric(name: string, labels: string): Promise<number> {
  const text = await sys.broker.registry.metrics();
  return Number(new RegExp(`^${name}\\{${labels}\\} (\\d+)`, 'm').exec(text)?.[1] ?? 0);
}

const violations = (leg: string, rule: string) =>
  metric('broker_policy_violations_total', `leg="${leg}",rule="${rule}"`);

/** A device publishes; the broker refuses by policy: the connection closes, the device is told, it is counted. */
async function expectRefused(
  deviceId: string,
  rule: string,
  publish: (dev: MqttClient, seal: (text: string, topic: string) => Buffer) => void,
): Promise<void> {
  const chip = await sys.device(deviceId);
  const dev = await sys.connectDevice(chip);
  await dev.subscribeAsync(`devices/${deviceId}/status`);
  const notice = nextMessage(dev, 5000, (t) => t.endsWith('/status'));
  const before = await violations('publish', rule);
  const rejected = await metric('broker_publish_rejected_total', 'reason="policy"');
  publish(dev, (text, topic) => Buffer.from(chip.sealUplink(Buffer.from(text), topic)));
  expect(JSON.parse((await notice).payload.toString())).toMatchObject({ reason: 'policy' });
  await closed(dev);
  expect(await violations('publish', rule)).toBe(before + 1);
  expect(await metric('broker_publish_rejected_total', 'reason="policy"')).toBe(rejected + 1);
}

describe('the broker follows the table', () => {
  it('picks up a change within its poll interval, without a restart, and reports the version', async () => {
    const version = await setPolicy('pickup', { role: 'app', filter: 'nothing/#', encryption: 'plaintext' });
    expect(await sys.broker.registry.getSingleMetricAsString('broker_policy_version')).toMatch(
      new RegExp(`broker_policy_version ${version}$`, 'm'),
    );
    const after = await sys.kms.admin.deletePolicy('pickup');
    for (let i = 0; sys.broker.policy.current.version < after.version; i++) {
      if (i > 200) throw new Error('the deletion did not arrive');
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(sys.broker.policy.current.byRole.get('app') ?? []).toEqual([]);
  });

  it('a limit set while a device is connected applies to its next message on the same connection', async () => {
    const chip = await sys.device('dev-live');
    const dev = await sys.connectDevice(chip);
    const topic = 'devices/dev-live/up/t';
    const got = nextMessage(app, 5000, (t) => t === topic);
    dev.publish(topic, Buffer.from(chip.sealUplink(Buffer.from('before'), topic)), { qos: 1 });
    expect((await got).payload.toString()).toBe('before');
    await setPolicy('live', {
      role: 'device',
      principal: 'dev-live',
      filter: 'devices/dev-live/up/#',
      encryption: 'required',
      max_qos: 0,
    });
    const before = await violations('publish', 'qos');
    dev.publish(topic, Buffer.from(chip.sealUplink(Buffer.from('after'), topic)), { qos: 1 });
    await closed(dev);
    expect(await violations('publish', 'qos')).toBe(before + 1);
  });
});

describe('each limit on a device publish', () => {
  it('largest payload: checked on the envelope before its key is claimed', async () => {
    await setPolicy('size', {
      role: 'device',
      principal: 'dev-size',
      filter: 'devices/dev-size/up/#',
      encryption: 'required',
      max_payload: 8,
    });
    const chip = await sys.device('dev-size-ok');
    await setPolicy('size-ok', {
      role: 'device',
      principal: 'dev-size-ok',
      filter: 'devices/dev-size-ok/up/#',
      encryption: 'required',
      max_payload: 8,
    });
    const dev = await sys.connectDevice(chip);
    const got = nextMessage(app, 5000, (t) => t === 'devices/dev-size-ok/up/t');
    dev.publish(
      'devices/dev-size-ok/up/t',
      Buffer.from(chip.sealUplink(Buffer.from('12345678'), 'devices/dev-size-ok/up/t')),
    );
    expect((await got).payload.toString()).toBe('12345678');
    await expectRefused('dev-size', 'payload', (d, seal) =>
      d.publish('devices/dev-size/up/t', seal('123456789', 'devices/dev-size/up/t')),
    );
    // The refused envelope's key was never claimed: the key service still has it.
    const keys = (await sys.kms.admin.deviceKeys('dev-size')).keys.filter((k) => k.direction === 'up');
    expect(keys.every((k) => k.state === 'filled')).toBe(true);
  });

  it('QoS limit', async () => {
    await setPolicy('qos', {
      role: 'device',
      principal: 'dev-qos',
      filter: 'devices/dev-qos/up/#',
      encryption: 'required',
      max_qos: 0,
    });
    await expectRefused('dev-qos', 'qos', (d, seal) =>
      d.publish('devices/dev-qos/up/t', seal('x', 'devices/dev-qos/up/t'), { qos: 1 }),
    );
  });

  it('retain limit', async () => {
    await setPolicy('retain', {
      role: 'device',
      principal: 'dev-retain',
      filter: 'devices/dev-retain/up/#',
      encryption: 'required',
      retain: false,
    });
    await expectRefused('dev-retain', 'retain', (d, seal) =>
      d.publish('devices/dev-retain/up/t', seal('x', 'devices/dev-retain/up/t'), { retain: true }),
    );
  });

  it('allowed suites: an envelope in another suite is refused', async () => {
    await setPolicy('suite', {
      role: 'device',
      principal: 'dev-suite',
      filter: 'devices/dev-suite/up/#',
      encryption: 'required',
      suites: [SUITE_SM4_CTR_HMAC_SM3],
    });
    await expectRefused('dev-suite', 'suite', (d, seal) =>
      d.publish('devices/dev-suite/up/t', seal('x', 'devices/dev-suite/up/t')),
    );
  });

  it('encryption required (the default): plaintext is refused as before', async () => {
    const chip = await sys.device('dev-plain-refused');
    const dev = await sys.connectDevice(chip);
    const before = await metric('broker_publish_rejected_total', 'reason="plaintext"');
    dev.publish('devices/dev-plain-refused/up/t', '{"t":1}');
    await closed(dev);
    expect(await metric('broker_publish_rejected_total', 'reason="plaintext"')).toBe(before + 1);
  });

  it('encryption plaintext: the device publishes plaintext and applications receive it as sent', async () => {
    await setPolicy('plain', {
      role: 'device',
      principal: 'dev-plain',
      filter: 'devices/dev-plain/up/open/#',
      encryption: 'plaintext',
    });
    const chip = await sys.device('dev-plain');
    const dev = await sys.connectDevice(chip);
    const got = nextMessage(app, 5000, (t) => t === 'devices/dev-plain/up/open/t');
    dev.publish('devices/dev-plain/up/open/t', '{"t":1}');
    expect((await got).payload.toString()).toBe('{"t":1}');
    // Outside the entry's filter the default still holds.
    dev.publish('devices/dev-plain/up/other', '{"t":2}');
    await closed(dev);
  });

  it('encryption optional: an envelope is opened, plaintext passes', async () => {
    await setPolicy('optional', {
      role: 'device',
      principal: 'dev-opt',
      filter: 'devices/dev-opt/up/#',
      encryption: 'optional',
    });
    const chip = await sys.device('dev-opt');
    const dev = await sys.connectDevice(chip);
    const topic = 'devices/dev-opt/up/t';
    let got = nextMessage(app, 5000, (t) => t === topic);
    dev.publish(topic, Buffer.from(chip.sealUplink(Buffer.from('sealed'), topic)));
    expect((await got).payload.toString()).toBe('sealed');
    got = nextMessage(app, 5000, (t) => t === topic);
    dev.publish(topic, 'plain');
    expect((await got).payload.toString()).toBe('plain');
    // A forged envelope is still refused: optional is not "anything goes" for what claims to be sealed.
    const forged = Buffer.from(chip.sealUplink(Buffer.from('x'), topic));
    forged[forged.length - 1]! ^= 1;
    dev.publish(topic, forged);
    await closed(dev);
  });
});

describe('wills', () => {
  it('a will that breaks the policy when it is due is refused and counted; one that keeps it is published', async () => {
    await setPolicy('will-retain', { role: 'app', filter: 'apps/status/#', encryption: 'plaintext', retain: false });
    const watcher = await sys.connectApp('app-will-watch', { subscribe: ['apps/status/#'] });
    await watcher.subscribeAsync('apps/status/#');
    const refused = await metric('broker_wills_total', 'outcome="refused"');
    const before = await violations('publish', 'retain');
    const retained = await sys.connectApp(
      'app-will',
      { publish: ['apps/status/#'] },
      {
        will: { topic: 'apps/status/app-will', payload: Buffer.from('gone'), qos: 0, retain: true },
      },
    );
    (retained as unknown as { stream: { destroy(): void } }).stream.destroy();
    for (let i = 0; (await metric('broker_wills_total', 'outcome="refused"')) < refused + 1; i++) {
      if (i > 100) throw new Error('the will was not refused');
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(await violations('publish', 'retain')).toBe(before + 1);
    // A will without the retain flag keeps the policy and reaches the watcher.
    const got = nextMessage(watcher, 5000, (t) => t === 'apps/status/app-will');
    const plain = await sys.connectApp(
      'app-will-2',
      { publish: ['apps/status/#'] },
      {
        will: { topic: 'apps/status/app-will', payload: Buffer.from('gone'), qos: 0, retain: false },
      },
    );
    (plain as unknown as { stream: { destroy(): void } }).stream.destroy();
    expect((await got).payload.toString()).toBe('gone');
  });
});

describe('on delivery and for applications', () => {
  it('an application publish over its largest payload closes its connection', async () => {
    await setPolicy('app-size', {
      role: 'app',
      principal: 'app-size',
      filter: 'devices/+/down/#',
      encryption: 'plaintext',
      max_payload: 4,
    });
    const a = await sys.connectApp('app-size', { publish: ['devices/+/down/#'] });
    const before = await violations('publish', 'payload');
    a.publish('devices/dev-any/down/cmd', '12345');
    await closed(a);
    expect(await violations('publish', 'payload')).toBe(before + 1);
  });

  it('encryption required for an application: its deliveries are dropped and counted, others still receive', async () => {
    await setPolicy('app-sealed', {
      role: 'app',
      principal: 'app-sealed',
      filter: 'devices/dev-to-sealed/up/#',
      encryption: 'required',
    });
    const sealedOnly = await sys.connectApp('app-sealed', { subscribe: ['devices/+/up/#'] });
    await sealedOnly.subscribeAsync('devices/+/up/#', { qos: 1 });
    const seen: string[] = [];
    sealedOnly.on('message', (t) => seen.push(t));
    const chip = await sys.device('dev-to-sealed');
    const dev = await sys.connectDevice(chip);
    const before = await violations('forward', 'encryption');
    const topic = 'devices/dev-to-sealed/up/t';
    const got = nextMessage(app, 5000, (t) => t === topic);
    dev.publish(topic, Buffer.from(chip.sealUplink(Buffer.from('secret'), topic)), { qos: 1 });
    expect((await got).payload.toString()).toBe('secret');
    for (let i = 0; (await violations('forward', 'encryption')) < before + 1; i++) {
      if (i > 100) throw new Error('the drop was not counted');
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(seen).toEqual([]);
  });

  it('encryption plaintext for a device downlink: the device receives the command unsealed', async () => {
    await setPolicy('down-plain', {
      role: 'device',
      principal: 'dev-down-plain',
      filter: 'devices/dev-down-plain/down/public/#',
      encryption: 'plaintext',
    });
    const chip = await sys.device('dev-down-plain');
    const dev = await sys.connectDevice(chip);
    await dev.subscribeAsync('devices/dev-down-plain/down/#', { qos: 1 });
    let got = nextMessage(dev, 5000, (t) => t.endsWith('/public/x'));
    app.publish('devices/dev-down-plain/down/public/x', 'hello', { qos: 1 });
    expect((await got).payload.toString()).toBe('hello');
    got = nextMessage(dev, 5000, (t) => t.endsWith('/down/cmd'));
    app.publish('devices/dev-down-plain/down/cmd', 'sealed', { qos: 1 });
    const envelope = (await got).payload;
    expect(envelope.toString()).not.toContain('sealed');
    expect(Buffer.from(chip.openDownlink(envelope, 'devices/dev-down-plain/down/cmd')).toString()).toBe('sealed');
  });

  it('rotation limits: a session rotates its downlink key after the policy allows, sooner than the broker would', async () => {
    await setPolicy('rotate', {
      role: 'device',
      principal: 'dev-rotate',
      filter: 'devices/dev-rotate/down/#',
      encryption: 'required',
      rotation: { messages: 2 },
    });
    const chip = await sys.device('dev-rotate');
    const dev = await sys.connectDevice(chip);
    const topic = 'devices/dev-rotate/down/cmd';
    await dev.subscribeAsync(topic, { qos: 1 });
    const indices: number[] = [];
    for (let i = 0; i < 3; i++) {
      const got = nextMessage(dev, 5000, (t) => t === topic);
      app.publish(topic, `c${i}`, { qos: 1 });
      const envelope = (await got).payload;
      indices.push(parseEnvelope(envelope).keyIndex);
      expect(Buffer.from(chip.openDownlink(envelope, topic)).toString()).toBe(`c${i}`);
    }
    expect(indices[0]).toBe(indices[1]);
    expect(indices[2]).not.toBe(indices[1]);
  });

  it('a downlink larger than the device entry allows is dropped for the device and counted', async () => {
    await setPolicy('down-size', {
      role: 'device',
      principal: 'dev-down-size',
      filter: 'devices/dev-down-size/down/#',
      encryption: 'required',
      max_payload: 3,
    });
    const chip = await sys.device('dev-down-size');
    const dev = await sys.connectDevice(chip);
    const topic = 'devices/dev-down-size/down/cmd';
    await dev.subscribeAsync(topic, { qos: 0 });
    const before = await violations('forward', 'payload');
    app.publish(topic, 'long one');
    for (let i = 0; (await violations('forward', 'payload')) < before + 1; i++) {
      if (i > 100) throw new Error('the drop was not counted');
      await new Promise((r) => setTimeout(r, 20));
    }
    const got = nextMessage(dev, 5000, (t) => t === topic);
    app.publish(topic, 'ok');
    expect(Buffer.from(chip.openDownlink((await got).payload, topic)).toString()).toBe('ok');
  });
});
