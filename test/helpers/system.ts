// A whole system for end-to-end tests: key service, broker (real sockets on free loopback ports), chips filled
// by the filling machine, and mqtt.js clients for devices and applications.
import { Writable } from 'node:stream';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { pino } from 'pino';
import { loadBrokerConfig, type BrokerOverrides } from '../../broker/config.js';
import { type RunningBroker, startBroker } from '../../broker/server.js';
import type { SecurityChip } from '../../hsm-emulator/chip.js';
import { FillingMachine } from '../../hsm-emulator/filling-machine.js';
import { Qrng } from '../../hsm-emulator/qrng.js';
import { newChip } from './chip.js';
import { RawMqtt } from './raw-mqtt.js';
import { removeDir, startTestKms, type TestKms } from './kms.js';

export interface TestSystem {
  kms: TestKms;
  broker: RunningBroker;
  mqttUrl: string;
  logs(): string;
  device(deviceId: string, up?: number, down?: number): Promise<SecurityChip>;
  /** Logs the chip in and connects it as an MQTT client; a new chip session (fresh uplink key) per connection. */
  /**
   * Connects a device. `beforeConnack` runs on the client before it connects: a listener for messages the broker
   * sends right behind CONNACK (a persistent session's queue) must be there already, or it may miss them.
   */
  connectDevice(
    chip: SecurityChip,
    options?: IClientOptions,
    beforeConnack?: (client: MqttClient) => void,
  ): Promise<MqttClient>;
  deviceToken(chip: SecurityChip): Promise<string>;
  /**
   * A new chip session and a raw MQTT connection of the device (client id and user name its id, its token as the
   * password), for tests that write packets by hand; resolves with the CONNACK return code. `connect` may be a
   * function, called once the session has begun (a will is sealed in it).
   */
  rawDevice(
    chip: SecurityChip,
    connect?: RawConnectOptions | (() => RawConnectOptions),
  ): Promise<{ raw: RawMqtt; returnCode: number }>;
  connectApp(
    appId: string,
    acl?: { publish?: string[]; subscribe?: string[] },
    options?: IClientOptions,
  ): Promise<MqttClient>;
  stop(): Promise<void>;
}

type RawConnectOptions = Omit<Parameters<typeof RawMqtt.connect>[1], 'clientId' | 'username' | 'password'>;

/** `now`: the clock the broker checks tokens against, Unix seconds (default: the system clock). */
export interface SystemOptions {
  now?: () => number;
}

export async function startTestSystem(
  overrides: BrokerOverrides = {},
  options: SystemOptions = {},
): Promise<TestSystem> {
  const kms = await startTestKms();
  return systemOn(kms, overrides, options);
}

/** A broker and helpers on an already running test key service. */
export async function systemOn(
  kms: TestKms,
  overrides: BrokerOverrides = {},
  options: SystemOptions = {},
): Promise<TestSystem> {
  const { client_secret } = await kms.admin.registerBroker('test-broker');
  const lines: string[] = [];
  const logger = pino({ level: 'info' }, new Writable({ write: (c, _e, cb) => (lines.push(c.toString()), cb()) }));
  const broker = await startBroker(
    loadBrokerConfig(
      {
        mqtt: { port: 0 },
        http: { port: 0 },
        kmsUrl: kms.url,
        brokerId: 'test-broker',
        brokerSecret: client_secret,
        revocationPollMs: 200,
        // Durability has its own tests (test/broker/durable.test.ts), which choose the store and its folder.
        persistence: 'memory',
        ...overrides,
      },
      { env: {} },
    ),
    { logger, ...(options.now && { now: options.now }) },
  );
  const qrng = new Qrng();
  const machine = new FillingMachine(qrng, kms.admin);
  const dirs: string[] = [];
  const clients: MqttClient[] = [];
  const track = (c: MqttClient) => (clients.push(c), c);

  const deviceToken = async (chip: SecurityChip) => {
    const { challenge } = await kms.anon.challenge(chip.deviceId);
    const mac = Buffer.from(chip.loginProof(Buffer.from(challenge, 'base64'))).toString('base64');
    return (await kms.anon.deviceToken(chip.deviceId, challenge, mac)).access_token;
  };

  return {
    kms,
    broker,
    mqttUrl: broker.urls.mqtt!,
    logs: () => lines.join(''),
    async device(deviceId, up = 8, down = 8) {
      const { chip, dir } = newChip(deviceId);
      dirs.push(dir);
      await machine.fill(chip, { up, down });
      return chip;
    },
    deviceToken,
    async rawDevice(chip, connect = {}) {
      chip.beginSession();
      const password = await deviceToken(chip);
      return RawMqtt.connect(broker.urls.mqtt!, {
        clientId: chip.deviceId,
        username: chip.deviceId,
        password,
        ...(typeof connect === 'function' ? connect() : connect),
      });
    },
    async connectDevice(chip, options = {}, beforeConnack) {
      chip.beginSession();
      const password = await deviceToken(chip);
      const client = mqtt.connect(broker.urls.mqtt!, {
        clientId: chip.deviceId,
        username: chip.deviceId,
        password,
        reconnectPeriod: 0,
        ...options,
      });
      beforeConnack?.(client);
      await new Promise<void>((resolve, reject) => {
        const settle = (err?: Error) => {
          client.off('connect', onConnect).off('error', settle).off('close', onClose);
          if (err) {
            client.end(true);
            reject(err);
          } else resolve();
        };
        const onConnect = () => settle();
        const onClose = () => settle(new Error('connection closed before CONNACK'));
        client.on('connect', onConnect).on('error', settle).on('close', onClose);
      });
      return track(client);
    },
    async connectApp(appId, acl, options = {}) {
      const { client_secret: secret } = await kms.admin.registerApp(appId, acl);
      const { access_token } = await kms.anon.clientToken(appId, secret);
      return track(
        await mqtt.connectAsync(broker.urls.mqtt!, {
          clientId: `${appId}/test`,
          username: appId,
          password: access_token,
          reconnectPeriod: 0,
          ...options,
        }),
      );
    },
    async stop() {
      await Promise.all(clients.map((c) => c.endAsync(true).catch(() => undefined)));
      await broker.close();
      await kms.stop();
      removeDir(kms.dataDir);
      dirs.forEach(removeDir);
    },
  };
}

/** Resolves with the next message on `client` whose topic satisfies `filter`, or rejects after `ms`. */
export function nextMessage(
  client: MqttClient,
  ms = 5000,
  filter: (topic: string) => boolean = () => true,
): Promise<{ topic: string; payload: Buffer; retain: boolean; qos: number }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.off('message', on);
      reject(new Error(`no message within ${ms} ms`));
    }, ms);
    const on = (topic: string, payload: Buffer, packet: { retain: boolean; qos: number }) => {
      if (!filter(topic)) return;
      clearTimeout(timer);
      client.off('message', on);
      resolve({ topic, payload, retain: packet.retain, qos: packet.qos });
    };
    client.on('message', on);
  });
}

/** Resolves when the client's connection closes (the broker refused something), or rejects after `ms`. */
export function closed(client: MqttClient, ms = 5000): Promise<void> {
  return new Promise((resolve, reject) => {
    if (!client.connected) return resolve();
    const timer = setTimeout(() => reject(new Error(`still connected after ${ms} ms`)), ms);
    client.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
