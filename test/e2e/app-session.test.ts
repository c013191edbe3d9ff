// Application sessions end to end with the real broker and key service: the Node client's handshake, sealed traffic
// both ways, `encryption: required` satisfied for a sealed app, rotation, and what a hostile app tries.
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AppSession } from '../../device-sim/app-session.js';
import { sm2KeyPair } from '../../hsm-emulator/sm2.js';
import { APP_SESSION_TOPIC, parseEnvelope } from '../../protocol/index.js';
import { sealTelemetryForApps } from '../helpers/app-sessions.js';
import { closed, nextMessage, startTestSystem, type TestSystem } from '../helpers/system.js';

let sys: TestSystem;
const sessions: AppSession[] = [];
const ACL = { publish: ['devices/+/down/#'], subscribe: ['devices/+/up/#'] };

async function newApp(appId: string, rotateAfterMessages?: number) {
  const sm2 = sm2KeyPair();
  const { client_secret } = await sys.kms.admin.registerApp(appId, { ...ACL, sm2_public_key: sm2.publicKey });
  const session = await AppSession.start({
    brokerUrl: sys.mqttUrl,
    kmsUrl: sys.kms.url,
    brokerId: 'test-broker',
    appId,
    secret: client_secret,
    sm2,
    ...(rotateAfterMessages ? { rotateAfterMessages } : {}),
  });
  sessions.push(session);
  return session;
}

/** The next plaintext the session opens on `topic`, with the envelope it came in. */
function nextOpened(app: AppSession, topic: string): Promise<{ plaintext: string; envelope: Buffer }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`nothing opened on ${topic}`)), 5000);
    app.onMessage((t, plaintext, envelope) => {
      if (t !== topic) return;
      clearTimeout(timer);
      resolve({ plaintext: plaintext.toString(), envelope });
    });
  });
}

/** The reason the broker logged for refusing a publish of `clientId` (the connection then closed). */
function refusal(clientId: string): string | undefined {
  for (const line of sys.logs().split('\n').reverse()) {
    if (!line.includes('"publish refused"')) continue;
    const entry = JSON.parse(line) as { client?: string; reason?: string };
    if (entry.client === clientId) return entry.reason;
  }
  return undefined;
}

beforeAll(async () => {
  sys = await startTestSystem();
  // Applications' view of device telemetry requires encryption: only apps with a session key receive it.
  await sealTelemetryForApps(sys, 40);
});
afterAll(async () => {
  await Promise.all(sessions.map((s) => s.client.endAsync(true).catch(() => undefined)));
  await sys.stop();
});

describe('an application with a session key', () => {
  it('receives device telemetry sealed under its key (policy required), and its commands reach the device', async () => {
    const app = await newApp('app-e2e');
    await app.client.subscribeAsync('devices/+/up/#', { qos: 1 });
    const chip = await sys.device('dev-app-e2e');
    const dev = await sys.connectDevice(chip);
    await dev.subscribeAsync('devices/dev-app-e2e/down/#', { qos: 1 });
    const topic = 'devices/dev-app-e2e/up/t';
    const got = nextOpened(app, topic);
    dev.publish(topic, Buffer.from(chip.sealUplink(Buffer.from('21.5'), topic)), { qos: 1 });
    const { plaintext, envelope } = await got;
    expect(plaintext).toBe('21.5');
    expect(envelope.toString()).not.toContain('21.5');
    expect(parseEnvelope(envelope).keyIndex).toBe(0);

    const cmd = nextMessage(dev, 5000, (t) => t.endsWith('/down/cmd'));
    await app.publish('devices/dev-app-e2e/down/cmd', 'reboot', { qos: 1 });
    const sealedForDevice = (await cmd).payload;
    expect(Buffer.from(chip.openDownlink(sealedForDevice, 'devices/dev-app-e2e/down/cmd')).toString()).toBe('reboot');
    await app.close();
  });

  it('rotates: a new key (generation 1) after its message share, the broker following without a gap', async () => {
    const app = await newApp('app-rotate', 2);
    const chip = await sys.device('dev-rotate-app');
    const dev = await sys.connectDevice(chip);
    await dev.subscribeAsync('devices/dev-rotate-app/down/#', { qos: 1 });
    const seen: string[] = [];
    dev.on('message', (t, p) => seen.push(Buffer.from(chip.openDownlink(p, t)).toString()));
    for (const text of ['a', 'b', 'c', 'd', 'e'])
      await app.publish('devices/dev-rotate-app/down/cmd', text, { qos: 1 });
    expect(app.keyIndex).toBe(2);
    for (let i = 0; seen.length < 5 && i < 100; i++) await new Promise((r) => setTimeout(r, 20));
    expect(seen).toEqual(['a', 'b', 'c', 'd', 'e']);
    await app.close();
  });

  it("the policy's largest payload applies to a sealed app's plaintext, not its envelope", async () => {
    const { version } = await sys.kms.admin.setPolicy('app-size', {
      role: 'app',
      principal: 'app-size',
      filter: 'devices/+/down/#',
      encryption: 'optional',
      max_payload: 8,
    });
    for (let i = 0; sys.broker.policy.current.version < version; i++) {
      if (i > 200) throw new Error('policy not picked up');
      await new Promise((r) => setTimeout(r, 50));
    }
    const app = await newApp('app-size');
    const chip = await sys.device('dev-size-app');
    const dev = await sys.connectDevice(chip);
    await dev.subscribeAsync('devices/dev-size-app/down/#', { qos: 1 });
    const cmd = nextMessage(dev, 5000, (t) => t.endsWith('/down/cmd'));
    await app.publish('devices/dev-size-app/down/cmd', '12345678', { qos: 1 }); // 8 bytes: within, its envelope is 34
    expect(Buffer.from(chip.openDownlink((await cmd).payload, 'devices/dev-size-app/down/cmd')).toString()).toBe(
      '12345678',
    );
    app.client.publish(
      'devices/dev-size-app/down/cmd',
      Buffer.from(app.seal('devices/dev-size-app/down/cmd', Buffer.from('123456789'))),
      { qos: 1 },
    );
    await closed(app.client);
    expect(refusal('app-size/session')).toBe('policy');
  });

  it('an app without a session key gets nothing on a required topic', async () => {
    const plain = await sys.connectApp('app-plain-e2e', ACL);
    await plain.subscribeAsync('devices/+/up/#', { qos: 1 });
    const seen: string[] = [];
    plain.on('message', (t) => seen.push(t));
    const sealed = await newApp('app-sealed-e2e');
    await sealed.client.subscribeAsync('devices/+/up/#', { qos: 1 });
    const chip = await sys.device('dev-plain-e2e');
    const dev = await sys.connectDevice(chip);
    const topic = 'devices/dev-plain-e2e/up/t';
    const got = nextOpened(sealed, topic);
    dev.publish(topic, Buffer.from(chip.sealUplink(Buffer.from('x'), topic)), { qos: 1 });
    expect((await got).plaintext).toBe('x');
    expect(seen).toEqual([]);
    await sealed.close();
  });
});

describe('a hostile application', () => {
  it('a replayed envelope closes its connection', async () => {
    const app = await newApp('app-replay');
    const topic = 'devices/dev-x/down/cmd';
    const envelope = Buffer.from(app.seal(topic, Buffer.from('once')));
    await app.client.publishAsync(topic, envelope, { qos: 1 });
    app.client.publish(topic, envelope, { qos: 1 });
    await closed(app.client);
    expect(refusal('app-replay/session')).toBe('replay');
  });

  it('plaintext after its session began closes its connection', async () => {
    const app = await newApp('app-plaintext');
    app.client.publish('devices/dev-x/down/cmd', 'not sealed', { qos: 1 });
    await closed(app.client);
    expect(refusal('app-plaintext/session')).toBe('malformed');
  });

  it("another app's envelope (same generation, same topic) does not pass as its traffic", async () => {
    const a = await newApp('app-a');
    const b = await newApp('app-b');
    const topic = 'devices/dev-x/down/cmd';
    b.client.publish(topic, Buffer.from(a.seal(topic, Buffer.from('from a'))), { qos: 1 });
    await closed(b.client);
    expect(refusal('app-b/session')).toBe('forged');
    await a.close();
  });

  it("a device's envelope relayed by an app does not pass as the app's traffic", async () => {
    const app = await newApp('app-relay');
    const chip = await sys.device('dev-relayed');
    chip.beginSession();
    const topic = 'devices/dev-relayed/down/cmd';
    app.client.publish(topic, Buffer.from(chip.sealUplink(Buffer.from('x'), 'devices/dev-relayed/up/t')), { qos: 1 });
    await closed(app.client);
    expect(['foreign_key', 'forged']).toContain(refusal('app-relay/session'));
  });

  it("announcing another app's key id, or a key twice, is refused", async () => {
    const a = await newApp('app-owner');
    const { client_secret } = await sys.kms.admin.registerApp('app-thief', ACL);
    const { access_token } = await sys.kms.anon.clientToken('app-thief', client_secret);
    const thief = await mqtt.connectAsync(sys.mqttUrl, {
      clientId: 'app-thief/x',
      username: 'app-thief',
      password: access_token,
      reconnectPeriod: 0,
    });
    // The owner's generation-0 key id, read from the key service's audit (an attacker who saw it on the wire).
    const audit = await sys.kms.admin.audit({ action: 'app.session.issue' });
    const owned = audit.entries.find((e) => (e.detail as { client_id: string }).client_id === 'app-owner')!;
    const keyId = (owned.detail as { key_ID: string }).key_ID;
    thief.publish(APP_SESSION_TOPIC, JSON.stringify({ key_ID: keyId, key_index: 0 }), { qos: 1 });
    await closed(thief);
    expect(refusal('app-thief/x')).toBe('foreign_key');
    // The owner announcing its claimed key again (a replayed announcement): refused, claimed already.
    a.client.publish(APP_SESSION_TOPIC, JSON.stringify({ key_ID: keyId, key_index: 5 }), { qos: 1 });
    await closed(a.client);
    expect(refusal('app-owner/session')).toBe('foreign_key');
  });

  it('a malformed announcement is refused', async () => {
    const a = await newApp('app-garbled');
    a.client.publish(APP_SESSION_TOPIC, 'x'.repeat(300), { qos: 1 });
    await closed(a.client);
    expect(refusal('app-garbled/session')).toBe('malformed');
  });
});
