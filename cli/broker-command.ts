// `qkey broker`: run the Aedes broker with the QKey plugin until Ctrl-C.
import { type BrokerOverrides, loadBrokerConfig } from '../broker/config.js';
import { startBroker } from '../broker/server.js';
import { redisLocation } from '../broker/redis/engine.js';
import { startBrokerThread } from '../broker/thread.js';
import {
  type CliIo,
  EXIT_FAILURE,
  EXIT_OK,
  EXIT_UNREACHABLE,
  intFlag,
  parseCommandLine,
  portFlag,
  stopRequested,
  UsageError,
  urlFlag,
  wantsHelp,
} from './io.js';
import { waitForKms } from './wait-kms.js';

export const BROKER_USAGE = `Usage: qkey broker [options]

Runs the MQTT broker (Aedes + QKey plugin; MQTT 3.1.1) until Ctrl-C.
  --host <addr>          listen address for every listener (default 127.0.0.1)
  --port <n>             MQTT over TCP (default 1883; 0 = any free port; "off" to disable)
  --tls-port <n>         MQTT over TLS (needs --cert and --key)
  --ws-port <n>          MQTT over WebSocket
  --wss-port <n>         MQTT over secure WebSocket (needs --cert and --key)
  --ws-origin <origin>   a web page origin (https://app.example) allowed to open ws/wss; repeatable. Pages on
                         other origins are refused; clients that send no Origin (not browsers) are not affected
  --cert <file> --key <file>   PEM certificate and private key for TLS and WSS
  --http-port <n>        /healthz and /metrics (default 9090; "off" to disable)
  --kms <url>            key service (default http://127.0.0.1:7070; env QKEY_KMS_URL)
  --wait-kms <s>         wait up to this long for the key service to answer at start, retrying with backoff
                         (default 30; 0: do not wait)
  --broker-id <id>       this broker's id at the key service (default qkey-broker)
  --data <dir>           data folder: the broker's store, and the key service's for first-run self-registration
                         (default ./data)
  --persistence <kind>   sqlite (default): sessions, queued messages and retained messages in <data>/broker-<id>.db,
                         kept across restarts; memory: lost when the broker stops
  --redis <url>          several brokers: share routing, sessions and queues over this Redis (redis:// or
                         rediss://; env QKEY_BROKER_REDIS) instead of --persistence; each broker its own --broker-id
  --config <file>        JSON configuration (env QKEY_BROKER_CONFIG); see README "Configuration"
  --log-level <level>    pino level (default info)
  --semi-space <MiB>     V8 young-generation semi-space of the broker thread (default 128; 0 = V8's default,
                         broker on the main thread); larger means fewer objects promoted, shorter GC stalls
The broker secret comes from QKEY_BROKER_SECRET, or <data>/broker-<id>.secret (written on first run).
Exit status: 0 stopped by Ctrl-C or SIGTERM, 1 failed, 2 usage error, 3 the key service did not answer.`;

const OPTIONS = {
  host: { type: 'string' },
  port: { type: 'string' },
  'tls-port': { type: 'string' },
  'ws-port': { type: 'string' },
  'wss-port': { type: 'string' },
  'ws-origin': { type: 'string', multiple: true },
  cert: { type: 'string' },
  key: { type: 'string' },
  'http-port': { type: 'string' },
  kms: { type: 'string' },
  'broker-id': { type: 'string' },
  data: { type: 'string' },
  redis: { type: 'string' },
  persistence: { type: 'string' },
  config: { type: 'string' },
  'log-level': { type: 'string' },
  'semi-space': { type: 'string' },
  'wait-kms': { type: 'string', default: '30' },
  help: { type: 'boolean', short: 'h' },
} as const;

function port(value: string, flag: string): number | null {
  if (value === 'off') return null;
  try {
    return portFlag(value, flag);
  } catch {
    throw new UsageError(`--${flag} must be a port number or "off" (0 to 65535), not ${JSON.stringify(value)}`);
  }
}

export async function runBrokerCommand(argv: string[], io: CliIo): Promise<number> {
  let overrides: BrokerOverrides = {};
  let configFile: string | undefined;
  if (wantsHelp(argv)) {
    io.out(BROKER_USAGE);
    return EXIT_OK;
  }
  const { values } = parseCommandLine(argv, { options: OPTIONS });
  const waitSeconds = intFlag(values['wait-kms'], 'wait-kms', 0, 86_400);
  {
    configFile = values.config;
    const plain = (v: string | undefined, flag: string) => {
      if (v === undefined) return undefined;
      const p = port(v, flag);
      return p === null ? null : { port: p };
    };
    const secure = (v: string | undefined, flag: string) => {
      if (v === undefined) return undefined;
      const p = port(v, flag);
      if (p === null) return null;
      if (!values.cert || !values.key) throw new UsageError(`--${flag} needs --cert and --key`);
      return { port: p, cert: values.cert, key: values.key };
    };
    overrides = {
      ...(values.host ? { host: values.host } : {}),
      ...(values.kms ? { kmsUrl: urlFlag(values.kms, 'kms', '--kms') } : {}),
      ...(values['broker-id'] ? { brokerId: values['broker-id'] } : {}),
      ...(values.data ? { dataDir: values.data } : {}),
      ...(values.redis ? { redis: values.redis } : {}),
      // Checked with every other source against the schema (loadBrokerConfig), which names what is allowed.
      ...(values['log-level'] ? { logLevel: values['log-level'] as BrokerOverrides['logLevel'] } : {}),
    };
    if (values.persistence !== undefined) {
      if (values.persistence !== 'memory' && values.persistence !== 'sqlite')
        throw new UsageError(`--persistence must be "sqlite" or "memory", not ${JSON.stringify(values.persistence)}`);
      overrides.persistence = values.persistence;
    }
    if (values['semi-space'] !== undefined) {
      if (!/^\d+$/.test(values['semi-space']))
        throw new UsageError(`--semi-space must be a whole number of MiB, not ${JSON.stringify(values['semi-space'])}`);
      overrides.semiSpaceMiB = Number(values['semi-space']);
    }
    const mqttL = plain(values.port, 'port');
    if (mqttL !== undefined) overrides.mqtt = mqttL;
    const tls = secure(values['tls-port'], 'tls-port');
    if (tls !== undefined) overrides.tls = tls;
    const ws = plain(values['ws-port'], 'ws-port');
    if (ws !== undefined) overrides.ws = ws;
    const wss = secure(values['wss-port'], 'wss-port');
    if (wss !== undefined) overrides.wss = wss;
    if (values['ws-origin'] !== undefined) overrides.wsOrigins = values['ws-origin'];
    if (values['http-port'] !== undefined) {
      const p = port(values['http-port'], 'http-port');
      overrides.http = p === null ? null : { port: p };
    }
  }
  const config = loadBrokerConfig(overrides, { configFile });
  if (waitSeconds > 0 && !(await waitForKms(config.kmsUrl, waitSeconds, (line) => io.err(`qkey broker: ${line}`)))) {
    io.err(`qkey broker: the key service at ${config.kmsUrl} did not answer within ${waitSeconds} s (--wait-kms)`);
    return EXIT_UNREACHABLE;
  }
  let thread, broker;
  try {
    thread = config.semiSpaceMiB > 0 ? await startBrokerThread(config) : undefined;
    broker = thread ?? (await startBroker(config));
  } catch (err) {
    // The broker thread reports errors as plain ones: the key service's absence is recognised by its words.
    if (!/key service unreachable/.test((err as Error).message)) throw err;
    io.err(`qkey broker: ${(err as Error).message}`);
    return EXIT_UNREACHABLE;
  }
  const listening = Object.entries(broker.urls)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
  const heap = thread ? `, broker thread with ${thread.semiSpaceMiB} MiB semi-space` : '';
  const shared = config.redis ? `, sharing ${redisLocation(config.redis)}` : '';
  io.out(
    `qkey broker listening: ${listening} (key service ${config.kmsUrl}, broker id ${config.brokerId}${shared}${heap})`,
  );
  // Runs until Ctrl-C or SIGTERM; a broker thread that ends by itself is a failure, reported with its reason.
  const watch = stopRequested();
  const failure = await new Promise<string | undefined>((resolve) => {
    void watch.stopped.then(() => resolve(undefined));
    thread?.exited.then(
      () => resolve('it stopped'),
      (err: Error) => resolve(err.message),
    );
  });
  watch.dispose();
  if (failure !== undefined) {
    io.err(`qkey broker: the broker thread ended unexpectedly: ${failure}`);
    return EXIT_FAILURE;
  }
  io.out('qkey broker: stopping');
  await broker.close();
  return EXIT_OK;
}
