// Wills per [MQTT-3.1.2-8]: published when the connection ends in any way but a clean DISCONNECT (keepalive expiry,
// TCP reset, protocol error, revocation, takeover), for applications (plaintext) and devices (sealed by the chip,
// opened by the broker); the endings Mosquitto also has are compared with Mosquitto run by the test.
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SimulatedDevice } from '../../device-sim/simulated-device.js';
import type { SecurityChip } from '../../hsm-emulator/chip.js';
import { type Mosquitto, startMosquitto } from '../helpers/mosquitto.js';
import { RawMqtt } from '../helpers/raw-mqtt.js';
import { nextMessage, startTestSystem, type TestSystem } from '../helpers/system.js';

/** How a connection ends; each returns once the broker has seen the end. */
type Ending = 'keepalive' | 'reset' | 'protocol error' | 'takeover' | 'disconnect';
const MOSQUITTO_ENDINGS: readonly Ending[] = ['keepalive', 'reset', 'protocol error', 'takeover', 'disconnect'];

interface Connector {
  /** Connects with a will on `topic`; keepalive 1 s for the keepalive ending. */
  connect(ending: Ending, topic: string): Promise<RawMqtt>;
  /** A second connection with the same client id (the takeover). */
  takeOver(ending: Ending): Promise<() => void>;
}

async function end(raw: RawMqtt, ending: Ending, connector: Connector): Promise<() => void> {
  switch (ending) {
    case 'keepalive':
      // Nothing is sent: the server closes after 1.5 keepalive periods [MQTT-3.1.2-24].
      await raw.closedWithin(10_000);
      return () => undefined;
    case 'reset':
      raw.reset();
      return () => undefined;
    case 'protocol error':
      raw.write(Buffer.from([0x36, 0x05, 0x00, 0x01, 0x61, 0x00, 0x01])); // PUBLISH with QoS 3 [MQTT-3.3.1-4]
      await raw.closedWithin();
      return () => undefined;
    case 'takeover':
      return connector.takeOver(ending);
    case 'disconnect':
      raw.send({ cmd: 'disconnect' });
      await raw.closedWithin();
      return () => undefined;
  }
}

/**
 * Whether the will arrived at `watcher`. A will that must not come is looked for until a marker published after
 * the end has come through the same broker to the same watcher.
 */
async function willPublished(
  watcher: MqttClient,
  connector: Connector,
  ending: Ending,
  topic: string,
  marker: { topic: string; publish: () => Promise<void> },
): Promise<string | undefined> {
  const seen: string[] = [];
  const onMessage = (t: string, p: Buffer) => {
    if (t === topic) seen.push(p.toString());
  };
  watcher.on('message', onMessage);
  try {
    const raw = await connector.connect(ending, topic);
    const arrived =
      ending === 'disconnect'
        ? nextMessage(watcher, 10_000, (t) => t === marker.topic)
        : nextMessage(watcher, 10_000, (t) => t === topic).catch(() => undefined);
    const cleanup = await end(raw, ending, connector);
    if (ending === 'disconnect') await marker.publish();
    await arrived;
    cleanup();
    raw.destroy();
    return seen[0];
  } finally {
    watcher.off('message', onMessage);
  }
}

describe('Mosquitto, the reference', () => {
  let mosquitto: Mosquitto;
  let url = '';
  let watcher: MqttClient;

  beforeAll(async () => {
    mosquitto = await startMosquitto();
    url = mosquitto.url;
    watcher = await mqtt.connectAsync(url, { reconnectPeriod: 0 });
    await watcher.subscribeAsync('wills/#', { qos: 1 });
  });
  afterAll(async () => {
    await watcher?.endAsync(true);
    await mosquitto?.stop();
  });

  const expected: Record<Ending, boolean> = {
    keepalive: true,
    reset: true,
    'protocol error': true,
    takeover: true,
    disconnect: false,
  };
  for (const ending of MOSQUITTO_ENDINGS) {
    it(`${ending}: will ${expected[ending] ? 'published' : 'not published'}`, async () => {
      const clientId = `mosq-${ending.replace(' ', '-')}`;
      const connector: Connector = {
        connect: async (e, topic) =>
          (
            await RawMqtt.connect(url, {
              clientId,
              keepalive: e === 'keepalive' ? 1 : 30,
              will: { topic, payload: Buffer.from('gone') },
            })
          ).raw,
        takeOver: async () => {
          const { raw } = await RawMqtt.connect(url, { clientId });
          return () => raw.destroy();
        },
      };
      const markerTopic = `wills/${clientId}/marker`;
      const will = await willPublished(watcher, connector, ending, `wills/${clientId}`, {
        topic: markerTopic,
        publish: () => watcher.publishAsync(markerTopic, 'marker', { qos: 1 }).then(() => undefined),
      });
      expect(will).toBe(expected[ending] ? 'gone' : undefined);
    });
  }
});

describe('QKey broker', () => {
  let sys: TestSystem;
  let watcher: MqttClient;
  beforeAll(async () => {
    sys = await startTestSystem({ maxDownlinkPayload: 1024 });
    watcher = await sys.connectApp('app-will-watcher', { subscribe: ['apps/+/status/#', 'devices/+/up/#'] });
    await watcher.subscribeAsync(['apps/+/status/#', 'devices/+/up/#'], { qos: 1 });
  });
  afterAll(async () => {
    await sys.stop();
  });

  /** A marker through the broker to the same watcher: an application publishing where the watcher reads. */
  const marker = (topic: string) => ({ topic, publish: () => publishMarker(topic) });
  const publishMarker = async (topic: string) => {
    const app = await sys.connectApp(`app-marker-${topic.length}-${Math.random().toString(36).slice(2, 8)}`, {
      publish: ['apps/+/status/#'],
    });
    await app.publishAsync(topic, 'marker', { qos: 1 });
    await app.endAsync();
  };

  async function appConnector(appId: string): Promise<Connector> {
    const { client_secret } = await sys.kms.admin.registerApp(appId, { publish: [`apps/${appId}/#`] });
    const token = async () => (await sys.kms.anon.clientToken(appId, client_secret)).access_token;
    const clientId = `${appId}/main`;
    return {
      async connect(ending, topic) {
        const { raw, returnCode } = await RawMqtt.connect(sys.mqttUrl, {
          clientId,
          username: appId,
          password: await token(),
          keepalive: ending === 'keepalive' ? 1 : 30,
          will: { topic, payload: Buffer.from('app gone') },
        });
        expect(returnCode).toBe(0);
        return raw;
      },
      async takeOver() {
        const { raw, returnCode } = await RawMqtt.connect(sys.mqttUrl, {
          clientId,
          username: appId,
          password: await token(),
        });
        expect(returnCode).toBe(0);
        return () => raw.destroy();
      },
    };
  }

  async function deviceConnector(chip: SecurityChip): Promise<Connector> {
    return {
      async connect(ending, topic) {
        const { raw, returnCode } = await sys.rawDevice(chip, () => ({
          keepalive: ending === 'keepalive' ? 1 : 30,
          will: { topic, payload: Buffer.from(chip.sealWill(Buffer.from('device gone'), topic)) },
        }));
        expect(returnCode).toBe(0);
        return raw;
      },
      async takeOver() {
        const client = await sys.connectDevice(chip);
        return () => client.end(true);
      },
    };
  }

  const ENDINGS: readonly Ending[] = [...MOSQUITTO_ENDINGS];
  for (const ending of ENDINGS) {
    const published = ending !== 'disconnect';
    const slug = ending.replace(' ', '-');
    it(`application, ${ending}: plaintext will ${published ? 'published' : 'not published'}`, async () => {
      const appId = `app-will-${slug}`;
      const topic = `apps/${appId}/status`;
      const will = await willPublished(watcher, await appConnector(appId), ending, topic, marker(`${topic}/marker`));
      expect(will).toBe(published ? 'app gone' : undefined);
    });
    it(`device, ${ending}: sealed will ${published ? 'opened and published' : 'not published'}`, async () => {
      const chip = await sys.device(`dev-will-${slug}`);
      const topic = `devices/${chip.deviceId}/up/status`;
      const markerTopic = `apps/dev-will-${slug}/status/marker`;
      const will = await willPublished(watcher, await deviceConnector(chip), ending, topic, marker(markerTopic));
      expect(will).toBe(published ? 'device gone' : undefined);
    });
  }

  it('application, revoked: the will is published', async () => {
    const appId = 'app-will-revoked';
    const connector = await appConnector(appId);
    const topic = `apps/${appId}/status`;
    const raw = await connector.connect('reset', topic);
    const will = nextMessage(watcher, 10_000, (t) => t === topic);
    await sys.kms.admin.revokeClient('app', appId);
    expect((await will).payload.toString()).toBe('app gone');
    await raw.closedWithin();
  });

  it('device, revoked: the will is opened and published', async () => {
    const chip = await sys.device('dev-will-revoked');
    const topic = `devices/${chip.deviceId}/up/status`;
    const raw = await (await deviceConnector(chip)).connect('reset', topic);
    const will = nextMessage(watcher, 10_000, (t) => t === topic);
    await sys.kms.admin.revokeDevice(chip.deviceId, 'test');
    expect((await will).payload.toString()).toBe('device gone');
    await raw.closedWithin();
  });

  it('the device simulator connects with a will its chip sealed; taken over, its will is published', async () => {
    const chip = await sys.device('dev-sim-will');
    const topic = 'devices/dev-sim-will/up/status';
    const device = new SimulatedDevice(chip, {
      brokerUrl: sys.mqttUrl,
      kmsUrl: sys.kms.url,
      will: { topic, payload: Buffer.from('sim gone'), qos: 1 },
    });
    await device.connect();
    await device.publishTelemetry();
    const will = nextMessage(watcher, 10_000, (t) => t === topic);
    const again = await sys.connectDevice(chip);
    expect((await will).payload.toString()).toBe('sim gone');
    await again.endAsync();
  });

  it('device wills that are not what the chip sealed for this connection are refused at CONNECT (CONNACK 5)', async () => {
    const chip = await sys.device('dev-will-bad');
    const topic = `devices/${chip.deviceId}/up/status`;
    const password = await sys.deviceToken(chip);
    chip.beginSession();
    const attempt = async (will: { topic: string; payload: Buffer }) => {
      const { raw, returnCode } = await RawMqtt.connect(sys.mqttUrl, {
        clientId: chip.deviceId,
        username: chip.deviceId,
        password,
        will,
      });
      raw.destroy();
      return returnCode;
    };
    expect(await attempt({ topic, payload: Buffer.from('plaintext will') })).toBe(5);
    // An uplink envelope (seq 1 after one message) offered as a will.
    chip.sealUplink(Buffer.from('first'), topic);
    expect(await attempt({ topic, payload: Buffer.from(chip.sealUplink(Buffer.from('x'), topic)) })).toBe(5);
    // A will topic outside the device's uplink space.
    expect(await attempt({ topic: 'devices/dev-legit/up/status', payload: Buffer.alloc(0) })).toBe(5);
  });

  it('a device will that does not open as a will of its topic is refused at CONNECT (5) and spends no key', async () => {
    const chip = await sys.device('dev-will-swap');
    const topic = `devices/${chip.deviceId}/up/status`;
    chip.beginSession();
    const password = await sys.deviceToken(chip);
    // Sealed as telemetry (direction up) at seq 0: the header is right, the direction is not.
    const { returnCode } = await RawMqtt.connect(sys.mqttUrl, {
      clientId: chip.deviceId,
      username: chip.deviceId,
      password,
      will: { topic, payload: Buffer.from(chip.sealUplink(Buffer.from('not a will'), topic)) },
    });
    expect(returnCode).toBe(5);
    // The key service opened the will before claiming its key (proof of use): the key was not spent.
    const keys = (await sys.kms.admin.deviceKeys(chip.deviceId)).keys;
    expect(keys.find((k) => k.key_index === 0)?.state).toBe('filled');
    expect(sys.logs()).toContain('will refused (forged)');
  });

  it('a replayed CONNECT whose will was published, or discarded by DISCONNECT, is refused (5); a new session is accepted', async () => {
    const chip = await sys.device('dev-will-replay');
    const topic = `devices/${chip.deviceId}/up/status`;
    chip.beginSession();
    const password = await sys.deviceToken(chip);
    const willPayload = Buffer.from(chip.sealWill(Buffer.from('gone once'), topic));
    const options = {
      clientId: chip.deviceId,
      username: chip.deviceId,
      password,
      will: { topic, payload: willPayload },
    };
    const first = await RawMqtt.connect(sys.mqttUrl, options);
    expect(first.returnCode).toBe(0);
    const published = nextMessage(watcher, 10_000, (t) => t === topic);
    first.raw.reset();
    expect((await published).payload.toString()).toBe('gone once');
    const replayed = await RawMqtt.connect(sys.mqttUrl, options);
    expect(replayed.returnCode).toBe(5);
    chip.beginSession();
    // A clean DISCONNECT discards the will [MQTT-3.14.4-3]; a replay of that CONNECT cannot bring it back either.
    const discardedOptions = {
      ...options,
      will: { topic, payload: Buffer.from(chip.sealWill(Buffer.from('discarded'), topic)) },
    };
    const discarded = await RawMqtt.connect(sys.mqttUrl, discardedOptions);
    expect(discarded.returnCode).toBe(0);
    discarded.raw.send({ cmd: 'disconnect' });
    await discarded.raw.closedWithin();
    const replayedDiscarded = await RawMqtt.connect(sys.mqttUrl, discardedOptions);
    expect(replayedDiscarded.returnCode).toBe(5);
    chip.beginSession();
    const fresh = await RawMqtt.connect(sys.mqttUrl, {
      ...options,
      will: { topic, payload: Buffer.from(chip.sealWill(Buffer.from('gone twice'), topic)) },
    });
    expect(fresh.returnCode).toBe(0);
    fresh.raw.destroy();
  });

  it("an application's will larger than a device can take, into a device's downlink space, is refused at CONNECT", async () => {
    const appId = 'app-big-will';
    const { client_secret } = await sys.kms.admin.registerApp(appId);
    const password = (await sys.kms.anon.clientToken(appId, client_secret)).access_token;
    const { raw, returnCode } = await RawMqtt.connect(sys.mqttUrl, {
      clientId: `${appId}/x`,
      username: appId,
      password,
      will: { topic: 'devices/dev-x/down/will', payload: Buffer.alloc(1025) },
    });
    raw.destroy();
    expect(returnCode).toBe(5);
  });
});
