// `qkey device publish|listen`: a device from the command line — its chip file logs in, connects over MQTT, and
// seals one uplink message or prints the downlink commands it opens.
import mqtt, { type MqttClient } from 'mqtt';
import { SecurityChip } from '../hsm-emulator/chip.js';
import { ChipError } from '../hsm-emulator/chip-errors.js';
import { KmsClient } from '../kms-api/client.js';
import { isProtocolError } from '../protocol/index.js';
import { DEFAULT_KMS_URL } from './admin-command.js';
import {
  type CliIo,
  EXIT_FAILURE,
  EXIT_OK,
  EXIT_USAGE,
  kmsUrlFrom,
  leadingWords,
  mqttFailureStatus,
  narrowUsage,
  parseCommandLine,
  parseUint,
  sharedFailure,
  UsageError,
  urlFlag,
  wantsHelp,
} from './io.js';
import { readPin } from './pin.js';

const DEFAULT_BROKER_URL = 'mqtt://127.0.0.1:1883';

export const DEVICE_USAGE = `Usage: qkey device <command> --chip <file> [options]

Commands:
  publish --topic <t> (--message <text> | --message-hex <hex>) [--qos 0|1] [--retain]
                          log in with the chip, connect, seal one message in the chip and publish it on
                          devices/<id>/up/<t>; with QoS 1 (default) it exits 0 once the broker acknowledged
                          it and 1 if the broker refused it (the broker closes the connection)
  listen [--topic <filter>] [--count <n>] [--timeout <s>] [--hex]
                          log in, connect, subscribe to devices/<id>/down/<filter> (default #) and print each
                          command the chip opens as "<topic> <text>"; stops after --count commands or
                          --timeout seconds (default: until interrupted)

  --chip <file>   the chip file (the device id is the chip's)
  --broker <url>  MQTT broker (default ${DEFAULT_BROKER_URL}; env QKEY_BROKER_URL)
  --kms <url>     key service, for the login (default ${DEFAULT_KMS_URL}; env QKEY_KMS_URL)
The PIN comes from QKEY_CHIP_PIN, or a prompt on the terminal. Each run is one MQTT session, so it takes a fresh
uplink key from the chip.
Exit status: 0 ok, 1 refused (by the chip, the key service or the broker), 2 usage error, 3 key service or
broker unreachable.`;

const OPTIONS = {
  chip: { type: 'string' },
  broker: { type: 'string' },
  kms: { type: 'string' },
  topic: { type: 'string' },
  message: { type: 'string' },
  'message-hex': { type: 'string' },
  qos: { type: 'string', default: '1' },
  retain: { type: 'boolean' },
  count: { type: 'string' },
  timeout: { type: 'string' },
  hex: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** Login (challenge-response in the chip), a new chip session, then MQTT CONNECT as client id = username = device. */
async function connect(chip: SecurityChip, kmsUrl: string, brokerUrl: string): Promise<MqttClient> {
  const kms = new KmsClient(kmsUrl);
  const { challenge } = await kms.challenge(chip.deviceId);
  const mac = Buffer.from(chip.loginProof(Buffer.from(challenge, 'base64'))).toString('base64');
  const { access_token } = await kms.deviceToken(chip.deviceId, challenge, mac);
  chip.beginSession();
  try {
    // No retries: a refused connection rejects (with ECONNREFUSED) instead of leaving the command waiting.
    return await mqtt.connectAsync(
      brokerUrl,
      {
        clientId: chip.deviceId,
        username: chip.deviceId,
        password: access_token,
        reconnectPeriod: 0,
        connectTimeout: 10_000,
        clean: true,
      },
      false,
    );
  } catch (err) {
    throw new MqttConnectError(brokerUrl, err);
  }
}

/** The broker could not be reached, or closed the connection before CONNACK; names the URL and the cause. */
class MqttConnectError extends Error {
  readonly status: number;
  constructor(url: string, cause: unknown) {
    const code = (cause as { code?: string }).code;
    super(
      `cannot connect to the broker at ${url}: ${code && !(cause as Error).message.includes(code) ? `${code} ` : ''}${(cause as Error).message}`,
    );
    this.status = mqttFailureStatus(cause);
  }
}

function topicUnder(deviceId: string, direction: 'up' | 'down', suffix: string): string {
  const prefix = `devices/${deviceId}/${direction}/`;
  const t = suffix.startsWith(prefix) ? suffix : `${prefix}${suffix}`;
  if (t.length === prefix.length) throw new UsageError('--topic must name something under the device topic');
  return t;
}

/**
 * Settles when the broker has acknowledged the publish, or fails when it closes the connection first, with the
 * reason the broker gave on the device's status topic (docs/PROTOCOL.md §9.4) when it gave one.
 */
async function publishOrRefused(client: MqttClient, topic: string, payload: Buffer, qos: 0 | 1, retain: boolean) {
  const statusTopic = `devices/${client.options.clientId}/status`;
  let reason: string | undefined;
  client.on('message', (t, p) => {
    if (t !== statusTopic) return;
    try {
      reason = String((JSON.parse(p.toString('utf8')) as { reason?: unknown }).reason);
    } catch {
      reason = 'unreadable status notice';
    }
  });
  await client.subscribeAsync(statusTopic, { qos: 0 });
  return new Promise<void>((resolve, reject) => {
    const onClose = () =>
      reject(new Error(`the broker refused the message${reason ? ` (${reason})` : ''} and closed the connection`));
    client.once('close', onClose);
    client.publish(topic, payload, { qos, retain }, (err) => {
      client.off('close', onClose);
      if (err) reject(err);
      else resolve();
    });
  });
}

export async function runDeviceCommand(argv: string[], io: CliIo): Promise<number> {
  let action: string | undefined;
  let chip: SecurityChip | undefined;
  let client: MqttClient | undefined;
  try {
    if (wantsHelp(argv)) {
      io.out(narrowUsage(DEVICE_USAGE, 'device', leadingWords(argv)));
      return EXIT_OK;
    }
    const { values, positionals } = parseCommandLine(argv, { options: OPTIONS, allowPositionals: true });
    action = positionals[0];
    if (!action) {
      io.err(DEVICE_USAGE);
      return EXIT_USAGE;
    }
    if (action !== 'publish' && action !== 'listen') throw new UsageError(`unknown command ${JSON.stringify(action)}`);
    if (!values.chip) throw new UsageError('missing --chip <file>');
    const kmsUrl = kmsUrlFrom(values.kms, DEFAULT_KMS_URL);
    const brokerUrl =
      values.broker !== undefined
        ? urlFlag(values.broker, 'broker', '--broker')
        : process.env.QKEY_BROKER_URL
          ? urlFlag(process.env.QKEY_BROKER_URL, 'broker', 'QKEY_BROKER_URL')
          : DEFAULT_BROKER_URL;

    if (action === 'publish') {
      if (!values.topic) throw new UsageError('missing --topic <t>');
      if ((values.message === undefined) === (values['message-hex'] === undefined))
        throw new UsageError('give one of --message <text> or --message-hex <hex>');
      const hex = values['message-hex'];
      if (hex !== undefined && !/^([0-9a-f]{2})*$/i.test(hex)) throw new UsageError('--message-hex must be hex bytes');
      const payload = hex !== undefined ? Buffer.from(hex, 'hex') : Buffer.from(values.message!, 'utf8');
      const qos = parseUint(values.qos, 'qos', 1) as 0 | 1;
      chip = SecurityChip.open(values.chip, await readPin());
      const topic = topicUnder(chip.deviceId, 'up', values.topic);
      client = await connect(chip, kmsUrl, brokerUrl);
      const envelope = Buffer.from(chip.sealUplink(payload, topic));
      await publishOrRefused(client, topic, envelope, qos, values.retain ?? false);
      io.out(
        `published ${payload.length} bytes on ${topic} (envelope ${envelope.length} bytes, key index ${envelope.readUInt32BE(2)})`,
      );
      return EXIT_OK;
    }

    const count = values.count === undefined ? Infinity : parseUint(values.count, 'count', 1_000_000);
    const timeout = values.timeout === undefined ? undefined : parseUint(values.timeout, 'timeout', 86_400);
    chip = SecurityChip.open(values.chip, await readPin());
    const filter = topicUnder(chip.deviceId, 'down', values.topic ?? '#');
    client = await connect(chip, kmsUrl, brokerUrl);
    const c = client;
    const opener = chip;
    let seen = 0;
    let stop: (code: number) => void = () => undefined;
    const onSigint = () => stop(EXIT_OK);
    const done = new Promise<number>((resolve) => {
      stop = resolve;
      const timer = timeout === undefined ? undefined : setTimeout(() => resolve(EXIT_OK), timeout * 1000);
      c.on('message', (topic, payload) => {
        try {
          const plain = Buffer.from(opener.openDownlink(payload, topic));
          io.out(`${topic} ${values.hex ? plain.toString('hex') : plain.toString('utf8')}`);
        } catch (err) {
          io.err(`${topic}: refused: ${(err as { code?: string }).code ?? (err as Error).message}`);
          return;
        }
        if (++seen >= count) {
          clearTimeout(timer);
          resolve(EXIT_OK);
        }
      });
      c.once('close', () => {
        clearTimeout(timer);
        io.err('the broker closed the connection');
        resolve(EXIT_FAILURE);
      });
      process.once('SIGINT', onSigint);
    });
    await c.subscribeAsync(filter, { qos: 1 });
    io.err(`listening on ${filter} as ${chip.deviceId}`);
    const code = await done;
    process.off('SIGINT', onSigint);
    c.removeAllListeners('close');
    return code;
  } catch (err) {
    const prefix = `qkey device${action ? ` ${action}` : ''}`;
    if (err instanceof ChipError || isProtocolError(err)) {
      io.err(`${prefix}: ${(err as { code: string }).code}: ${(err as Error).message}`);
      return EXIT_FAILURE;
    }
    if (err instanceof MqttConnectError) {
      io.err(`${prefix}: ${err.message}`);
      return err.status;
    }
    const status = sharedFailure(err, prefix, io);
    if (status !== undefined) return status;
    io.err(`${prefix}: ${(err as Error).message}`);
    return EXIT_FAILURE;
  } finally {
    // A closed connection cannot take a DISCONNECT, and a graceful end would wait for the unacknowledged publish.
    await client?.endAsync(!client.connected).catch(() => undefined);
    chip?.close();
  }
}
