// Topics the broker cannot read (docs/PROTOCOL.md §23), end to end: a real key service and broker, a device on an
// emulated chip, and an application that claims the device's end-to-end uplink keys itself and opens the
// envelopes the broker forwarded unopened. The broker's process never claims those keys; attacks are refused.
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AppSession } from '../../device-sim/app-session.js';
import { EndToEndError, EndToEndReader } from '../../device-sim/end-to-end-reader.js';
import { Qrng } from '../../hsm-emulator/qrng.js';
import { sm2KeyPair } from '../../hsm-emulator/sm2.js';
import { fillAppKeys } from '../../kms-api/app-session-client.js';
import { claimEndToEndKey } from '../../kms-api/end-to-end-client.js';
import { decKeysBody, KmsClient, KmsHttpError } from '../../kms-api/client.js';
import type { PolicyBodyJson } from '../../kms-api/policy-schemas.js';
import { keyIdFor, parseEnvelope } from '../../protocol/index.js';
import { RawMqtt } from '../helpers/raw-mqtt.js';
import { closed, nextMessage, startTestSystem, type TestSystem } from '../helpers/system.js';

let sys: TestSystem;
const E2E = 'devices/+/up/secret/#';

/** Sets an entry and waits until the running broker's own poll has brought it in. */
async function setPolicy(id: string, body: PolicyBodyJson): Promise<void> {
  const { version } = await sys.kms.admin.setPolicy(id, body);
  for (let i = 0; sys.broker.policy.current.version < version; i++) {
    if (i > 200) throw new Error('the broker did not pick up the policy');
    await new Promise((r) => setTimeout(r, 50));
  }
}

beforeAll(async () => {
  sys = await startTestSystem();
  await setPolicy('vault-secret', { role: 'device', filter: E2E, encryption: 'end-to-end', app: 'vault' });
  await setPolicy('vault-cmd', {
    role: 'device',
    filter: 'devices/+/down/secret/#',
    encryption: 'end-to-end',
    app: 'vault',
  });
  const vault = await app('vault', []);
  vaultKms = vault.kms;
  await vault.mqtt.endAsync();
});
afterAll(async () => {
  await sys?.stop();
});

const secrets = new Map<string, string>();
/** The key-service client of the application named by the end-to-end entries ('vault'), with its token. */
let vaultKms: KmsClient;

/** An application (registered on first use): its MQTT connection and a key-service client holding its token. */
async function app(appId: string, subscribe: string[]): Promise<{ mqtt: MqttClient; kms: KmsClient }> {
  if (!secrets.has(appId)) {
    const acl = { subscribe: ['devices/#'], publish: ['devices/+/down/#'] };
    secrets.set(appId, (await sys.kms.admin.registerApp(appId, acl)).client_secret);
  }
  const { access_token } = await sys.kms.anon.clientToken(appId, secrets.get(appId)!);
  const client = await mqtt.connectAsync(sys.mqttUrl, {
    clientId: `${appId}/e2e`,
    username: appId,
    password: access_token,
    reconnectPeriod: 0,
  });
  for (const f of subscribe) await client.subscribeAsync(f, { qos: 1 });
  return { mqtt: client, kms: new KmsClient(sys.kms.url, { token: access_token }) };
}

async function keyOf(deviceId: string, index: number) {
  const { keys } = await sys.kms.admin.deviceKeys(deviceId);
  return keys.find((k) => k.key_index === index);
}

async function metric(name: string, labels: string): Promise<number> {
  const text = await sys.broker.registry.metrics();
  return Number(new RegExp(`^${name}\\{${labels}\\} (\\d+)`, 'm').exec(text)?.[1] ?? 0);
}

const secretTopic = (id: string) => `devices/${id}/up/secret/reading`;

describe('telemetry on an end-to-end topic', () => {
  it('reaches its application sealed; only the application opens it; the broker claims no key of it', async () => {
    const vault = await app('vault', ['devices/+/up/#']);
    const snoop = await app('snoop', ['devices/#']);
    const chip = await sys.device('dev-e2e-1');
    const dev = await sys.connectDevice(chip);
    const reader = new EndToEndReader(vault.kms);
    const forwardedBefore = await metric('broker_uplink_total', 'outcome="forwarded"');

    // The broker-read channel still works beside it: plaintext to every subscriber, opened by the broker.
    const plain = nextMessage(vault.mqtt, 5000, (t) => t.endsWith('/telemetry'));
    const snoopPlain = nextMessage(snoop.mqtt, 5000, (t) => t.endsWith('/telemetry'));
    await dev.publishAsync(
      'devices/dev-e2e-1/up/telemetry',
      Buffer.from(chip.sealUplink(Buffer.from('{"t":1}'), 'devices/dev-e2e-1/up/telemetry')),
      { qos: 1 },
    );
    expect((await plain).payload.toString()).toBe('{"t":1}');
    expect((await snoopPlain).payload.toString()).toBe('{"t":1}');
    const brokerIndex = chip.status().session!.keyIndex!;

    const topic = secretTopic('dev-e2e-1');
    const envelope = Buffer.from(chip.sealUplink(Buffer.from('{"pin":"0000"}'), topic, 'end-to-end'));
    const e2eIndex = parseEnvelope(envelope).keyIndex;
    expect(e2eIndex).not.toBe(brokerIndex);
    const got = nextMessage(vault.mqtt, 5000, (t) => t === topic);
    const snooped = nextMessage(snoop.mqtt, 1500, (t) => t === topic);
    await dev.publishAsync(topic, envelope, { qos: 1 });
    const received = await got;
    expect(received.payload.equals(envelope)).toBe(true); // as the chip sealed it: not opened, not resealed
    await expect(snooped).rejects.toThrow(/no message/); // no other application gets even the envelope
    expect((await reader.open(topic, received.payload)).toString()).toBe('{"pin":"0000"}');
    expect(await metric('broker_uplink_total', 'outcome="forwarded"')).toBe(forwardedBefore + 1);

    // The key service is the witness: the end-to-end key was claimed by the application, the other by the broker,
    // and the broker's claims in the audit log never name the end-to-end key.
    expect(await keyOf('dev-e2e-1', e2eIndex)).toMatchObject({ state: 'claimed', claimed_by: 'vault' });
    expect(await keyOf('dev-e2e-1', brokerIndex)).toMatchObject({ state: 'claimed', claimed_by: 'test-broker' });
    const { entries } = await sys.kms.admin.audit({ device_id: 'dev-e2e-1', action: 'key.claim.dec' });
    const e2eKeyId = keyIdFor('dev-e2e-1', e2eIndex);
    const claimers = entries
      .filter((e) => (e.detail as { key_IDs: string[] }).key_IDs.includes(e2eKeyId))
      .map((e) => e.actor);
    expect(claimers).toEqual(['vault']);

    // A replayed envelope is refused by the application (the broker cannot tell: it holds no key).
    await expect(reader.open(topic, received.payload)).rejects.toMatchObject({ reason: 'replay' });
    expect(reader.refused.replay).toBe(1);

    // Done: the application retires its keys.
    await reader.close();
    expect(await keyOf('dev-e2e-1', e2eIndex)).toMatchObject({ state: 'retired', claimed_by: 'vault' });
    await Promise.all([dev, vault.mqtt, snoop.mqtt].map((c) => c.endAsync()));
  });
});

describe('attacks', () => {
  it('a broker cannot claim an end-to-end key, even with a valid proof; the application still can', async () => {
    const { client_secret } = await sys.kms.admin.registerBroker('rogue-broker');
    const token = (await sys.kms.anon.clientToken('rogue-broker', client_secret)).access_token;
    const rogue = new KmsClient(sys.kms.url, { token });
    const chip = await sys.device('dev-e2e-2');
    chip.beginSession();
    const topic = secretTopic('dev-e2e-2');
    const envelope = chip.sealUplink(Buffer.from('secret'), topic, 'end-to-end');
    const index = parseEnvelope(envelope).keyIndex;
    const proof = { envelope, topic, direction: 'up' as const };
    const err = await rogue.decKeys('dev-e2e-2', [keyIdFor('dev-e2e-2', index)], undefined, [proof]).catch((e) => e);
    expect(err).toBeInstanceOf(KmsHttpError);
    expect((err as KmsHttpError).details).toEqual([{ key_ID: keyIdFor('dev-e2e-2', index), reason: 'end_to_end' }]);
    // The same through the bulk route the real broker uses.
    const bulk = await rogue.bulkClaims([
      { SAE_ID: 'dev-e2e-2', dec_keys: decKeysBody([keyIdFor('dev-e2e-2', index)], undefined, [proof]) },
    ]);
    expect(JSON.stringify(bulk)).toContain('"end_to_end"');
    expect(JSON.stringify(bulk)).not.toMatch(/"key":"/);
    expect(await keyOf('dev-e2e-2', index)).toMatchObject({ state: 'filled' });

    const probe = await app('probe', []); // an application with no grant
    const stranger = new EndToEndReader(probe.kms);
    await expect(stranger.open(topic, envelope)).rejects.toMatchObject({ reason: 'not_granted' });
    expect(await keyOf('dev-e2e-2', index)).toMatchObject({ state: 'filled' });
    await probe.mqtt.endAsync();

    // Nothing was spent by the refusals: the named application claims the key and reads the message.
    const reader = new EndToEndReader(vaultKms);
    expect((await reader.open(topic, envelope)).toString()).toBe('secret');
    expect(await keyOf('dev-e2e-2', index)).toMatchObject({ state: 'claimed', claimed_by: 'vault' });
    await reader.close();
  });

  it('an application cannot claim a key of a topic not granted to it, nor a broker-read topic', async () => {
    const { client_secret } = await sys.kms.admin.registerApp('vault-b');
    const token = (await sys.kms.anon.clientToken('vault-b', client_secret)).access_token;
    const kms = new KmsClient(sys.kms.url, { token });
    const chip = await sys.device('dev-e2e-3');
    chip.beginSession();
    // A broker-read topic's envelope (which an application never receives, but might obtain): not claimable by apps.
    const telemetry = 'devices/dev-e2e-3/up/telemetry';
    const env = chip.sealUplink(Buffer.from('x'), telemetry);
    const idx = parseEnvelope(env).keyIndex;
    const err = await claimEndToEndKey(kms, 'dev-e2e-3', keyIdFor('dev-e2e-3', idx), {
      envelope: env,
      topic: telemetry,
      direction: 'up',
    }).catch((e: unknown) => e);
    expect((err as KmsHttpError).details).toEqual([{ key_ID: keyIdFor('dev-e2e-3', idx), reason: 'not_granted' }]);
    // The vault's own grant does not stretch to another application's claim of the same end-to-end envelope.
    const topic = secretTopic('dev-e2e-3');
    const e2e = chip.sealUplink(Buffer.from('y'), topic, 'end-to-end');
    const e2eIdx = parseEnvelope(e2e).keyIndex;
    const err2 = await claimEndToEndKey(kms, 'dev-e2e-3', keyIdFor('dev-e2e-3', e2eIdx), {
      envelope: e2e,
      topic,
      direction: 'up',
    }).catch((e: unknown) => e);
    expect((err2 as KmsHttpError).details).toEqual([{ key_ID: keyIdFor('dev-e2e-3', e2eIdx), reason: 'not_granted' }]);
    // A proof claimed for another topic than the one it was sealed for does not open: the topic is in the AAD.
    const err3 = await claimEndToEndKey(kms, 'dev-e2e-3', keyIdFor('dev-e2e-3', idx), {
      envelope: env,
      topic: secretTopic('dev-e2e-3'),
      direction: 'up',
    }).catch((e: unknown) => e);
    expect((err3 as KmsHttpError).details).toEqual([{ key_ID: keyIdFor('dev-e2e-3', idx), reason: 'not_granted' }]);
    expect(await keyOf('dev-e2e-3', idx)).toMatchObject({ state: 'filled' });
    expect(await keyOf('dev-e2e-3', e2eIdx)).toMatchObject({ state: 'filled' });
  });

  it('each key is claimed at most once: a second reader of the same application is refused, the first goes on', async () => {
    const token = (await sys.kms.anon.clientToken('vault', secrets.get('vault')!)).access_token;
    const first = new EndToEndReader(new KmsClient(sys.kms.url, { token }));
    const second = new EndToEndReader(new KmsClient(sys.kms.url, { token }));
    const chip = await sys.device('dev-e2e-4');
    chip.beginSession();
    const topic = secretTopic('dev-e2e-4');
    const a = chip.sealUplink(Buffer.from('a'), topic, 'end-to-end');
    const b = chip.sealUplink(Buffer.from('b'), topic, 'end-to-end');
    const [ra, rb] = await Promise.allSettled([first.open(topic, a), second.open(topic, b)]);
    const won = [ra, rb].filter((r) => r.status === 'fulfilled');
    expect(won).toHaveLength(1);
    const lost = [ra, rb].find((r) => r.status === 'rejected') as PromiseRejectedResult;
    expect(lost.reason).toBeInstanceOf(EndToEndError);
    expect((lost.reason as EndToEndError).reason).toBe('key_spent');
    // A claimer without the right is told so before anything about the key's state (here: claimed already).
    const c = chip.sealUplink(Buffer.from('c'), topic, 'end-to-end');
    const probe = await app('probe', []);
    await expect(new EndToEndReader(probe.kms).open(topic, c)).rejects.toMatchObject({ reason: 'not_granted' });
    await probe.mqtt.endAsync();
    const winner = ra.status === 'fulfilled' ? first : second;
    expect((await winner.open(topic, c)).toString()).toBe('c');
    await first.close();
    await second.close();
  });

  it('the broker refuses plaintext on an end-to-end topic and an envelope under a key it holds, and counts them', async () => {
    const chip = await sys.device('dev-e2e-5');
    const topic = secretTopic('dev-e2e-5');
    const violations = () => metric('broker_policy_violations_total', 'leg="publish",rule="encryption"');

    let dev = await sys.connectDevice(chip);
    await dev.subscribeAsync('devices/dev-e2e-5/status');
    let before = await violations();
    let notice = nextMessage(dev, 5000, (t) => t.endsWith('/status'));
    dev.publish(topic, Buffer.from('{"plaintext":"on an end-to-end topic, long enough to look like one"}'));
    expect(JSON.parse((await notice).payload.toString())).toMatchObject({ reason: 'malformed' });
    await closed(dev);
    expect(await violations()).toBe(before + 1);

    // A device that seals an end-to-end topic under its broker key (which this broker holds: it could read it).
    dev = await sys.connectDevice(chip);
    await dev.subscribeAsync('devices/dev-e2e-5/status');
    await dev.publishAsync(
      'devices/dev-e2e-5/up/telemetry',
      Buffer.from(chip.sealUplink(Buffer.from('1'), 'devices/dev-e2e-5/up/telemetry')),
      { qos: 1 },
    );
    before = await violations();
    notice = nextMessage(dev, 5000, (t) => t.endsWith('/status'));
    dev.publish(topic, Buffer.from(chip.sealUplink(Buffer.from('2'), topic)));
    expect(JSON.parse((await notice).payload.toString())).toMatchObject({ reason: 'policy' });
    await closed(dev);
    expect(await violations()).toBe(before + 1);
  });

  it('an application other than the named one cannot publish into an end-to-end command topic', async () => {
    const intruder = await app('intruder', []);
    const before = await metric('broker_policy_violations_total', 'leg="publish",rule="encryption"');
    intruder.mqtt.publish('devices/dev-e2e-1/down/secret/open', Buffer.alloc(40, 1));
    await closed(intruder.mqtt);
    expect(await metric('broker_policy_violations_total', 'leg="publish",rule="encryption"')).toBe(before + 1);
  });
});

describe('commands on an end-to-end topic', () => {
  it('are sealed by the application under the key it claimed, forwarded unopened, and open in that session only', async () => {
    const chip = await sys.device('dev-e2e-6');
    const down = 'devices/dev-e2e-6/down/secret/unlock';
    const up = secretTopic('dev-e2e-6');
    const vault = await app('vault', []);
    await vault.mqtt.subscribeAsync('devices/dev-e2e-6/up/#', { qos: 1 });
    const reader = new EndToEndReader(vaultKms);
    let dev = await sys.connectDevice(chip);
    await dev.subscribeAsync('devices/dev-e2e-6/down/#', { qos: 1 });

    // Before the device has sealed anything end to end in this session, the application has no key to command with.
    expect(() => reader.sealCommand('dev-e2e-6', down, Buffer.from('open'))).toThrow(EndToEndError);

    // The device's first end-to-end message of the session: the application claims its key and can command.
    const hello = async (client: MqttClient, text: string) => {
      const got = nextMessage(vault.mqtt, 5000, (t) => t === up);
      await client.publishAsync(up, Buffer.from(chip.sealUplink(Buffer.from(text), up, 'end-to-end')), { qos: 1 });
      expect((await reader.open(up, (await got).payload)).toString()).toBe(text);
    };
    await hello(dev, 'hello-1');
    const command = Buffer.from(reader.sealCommand('dev-e2e-6', down, Buffer.from('open')));
    let arrived = nextMessage(dev, 5000, (t) => t === down);
    await vault.mqtt.publishAsync(down, command, { qos: 1 });
    const delivered = (await arrived).payload;
    expect(delivered.equals(command)).toBe(true); // the application's bytes: the broker neither opened nor resealed
    expect(Buffer.from(chip.openEndToEnd(delivered, down)).toString()).toBe('open');
    expect(() => chip.openEndToEnd(delivered, down)).toThrow(/PROTO_ERR_REPLAY|already seen/);
    // A command is bound to its topic (AAD): moved to another end-to-end topic it does not open.
    expect(() => chip.openEndToEnd(delivered, 'devices/dev-e2e-6/down/secret/other')).toThrow();

    // The broker claimed no downlink key for it (it seals nothing there), and no one claimed the end-to-end key but
    // the application.
    const keys = (await sys.kms.admin.deviceKeys('dev-e2e-6')).keys;
    expect(keys.filter((k) => k.direction === 'down').every((k) => k.state === 'filled')).toBe(true);
    expect(keys.find((k) => k.key_index === parseEnvelope(delivered).keyIndex)).toMatchObject({
      state: 'claimed',
      claimed_by: 'vault',
    });

    // A new device session abandons the key: a command sealed under it no longer opens; after the device's next
    // end-to-end message the application commands under the new key.
    await dev.endAsync();
    dev = await sys.connectDevice(chip);
    await dev.subscribeAsync('devices/dev-e2e-6/down/#', { qos: 1 });
    const stale = Buffer.from(reader.sealCommand('dev-e2e-6', down, Buffer.from('stale')));
    arrived = nextMessage(dev, 5000, (t) => t === down);
    await vault.mqtt.publishAsync(down, stale, { qos: 1 });
    const staleArrived = (await arrived).payload;
    expect(() => chip.openEndToEnd(staleArrived, down)).toThrow(/not an end-to-end key/);
    await hello(dev, 'hello-2');
    const fresh = Buffer.from(reader.sealCommand('dev-e2e-6', down, Buffer.from('open again')));
    expect(parseEnvelope(fresh).keyIndex).toBeGreaterThan(parseEnvelope(command).keyIndex);
    arrived = nextMessage(dev, 5000, (t) => t === down);
    await vault.mqtt.publishAsync(down, fresh, { qos: 1 });
    expect(Buffer.from(chip.openEndToEnd((await arrived).payload, down)).toString()).toBe('open again');

    await reader.close();
    await Promise.all([dev.endAsync(), vault.mqtt.endAsync()]);
  });
});

describe('wills', () => {
  it('a will on an end-to-end topic is refused at CONNECT (5), and no key is claimed for it', async () => {
    const chip = await sys.device('dev-e2e-7');
    const topic = secretTopic('dev-e2e-7');
    chip.beginSession();
    const { returnCode } = await RawMqtt.connect(sys.mqttUrl, {
      clientId: chip.deviceId,
      username: chip.deviceId,
      password: await sys.deviceToken(chip),
      will: { topic, payload: Buffer.from(chip.sealWill(Buffer.from('gone'), topic)) },
    });
    expect(returnCode).toBe(5);
    const keys = (await sys.kms.admin.deviceKeys('dev-e2e-7')).keys;
    expect(keys.every((k) => k.state === 'filled')).toBe(true);
  });
});

describe('with an application session (docs/PROTOCOL.md §22)', () => {
  it('the end-to-end envelope travels inside the app-down and app-up envelopes, still unopened by the broker', async () => {
    await fillAppKeys(
      sys.kms.admin,
      'qrng-e2e-s',
      Array.from({ length: 4 }, () => Buffer.from(new Qrng().bytes(16)).toString('base64')),
    );
    const sm2 = sm2KeyPair();
    await sys.kms.admin.request('PUT', '/api/v1/admin/apps/vault/sm2-public-key', { sm2_public_key: sm2.publicKey });
    const session = await AppSession.start({
      brokerUrl: sys.mqttUrl,
      kmsUrl: sys.kms.url,
      brokerId: 'test-broker',
      appId: 'vault',
      secret: secrets.get('vault')!,
      sm2,
    });
    const reader = new EndToEndReader(vaultKms);
    await session.client.subscribeAsync('devices/dev-e2e-8/up/#', { qos: 1 });
    const chip = await sys.device('dev-e2e-8');
    const dev = await sys.connectDevice(chip);
    await dev.subscribeAsync('devices/dev-e2e-8/down/#', { qos: 1 });

    const up = secretTopic('dev-e2e-8');
    const sealed = Buffer.from(chip.sealUplink(Buffer.from('inner'), up, 'end-to-end'));
    const opened = new Promise<{ plaintext: Buffer; envelope: Buffer }>((resolve) =>
      session.onMessage((t, plaintext, envelope) => t === up && resolve({ plaintext, envelope })),
    );
    await dev.publishAsync(up, sealed, { qos: 1 });
    const got = await opened;
    expect(got.plaintext.equals(sealed)).toBe(true); // the app session's layer opened: the device's envelope remains
    expect(got.envelope.equals(sealed)).toBe(false); // on the wire it was wrapped (app-down)
    expect((await reader.open(up, got.plaintext)).toString()).toBe('inner');

    const down = 'devices/dev-e2e-8/down/secret/cmd';
    const command = Buffer.from(reader.sealCommand('dev-e2e-8', down, Buffer.from('go')));
    const arrived = nextMessage(dev, 5000, (t) => t === down);
    await session.publish(down, command, { qos: 1 }); // sealed app-up around it; the broker opens only that layer
    const delivered = (await arrived).payload;
    expect(delivered.equals(command)).toBe(true);
    expect(Buffer.from(chip.openEndToEnd(delivered, down)).toString()).toBe('go');

    await reader.close();
    await session.close();
    await dev.endAsync();
  });
});
