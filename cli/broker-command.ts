// `qkey broker`: run the Aedes broker with the QKey plugin until Ctrl-C.
import { parseArgs } from 'node:util';
import { type BrokerOverrides, loadBrokerConfig } from '../broker/config.js';
import { startBroker } from '../broker/server.js';
import { redisLocation } from '../broker/redis/engine.js';
import { startBrokerThread } from '../broker/thread.js';
import { type CliIo, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError } from './io.js';

export const BROKER_USAGE = `Usage: qkey broker [options]

Runs the MQTT broker (Aedes + QKey plugin) until Ctrl-C.
  --host <addr>          listen address for every listener (default 127.0.0.1)
  --port <n>             MQTT over TCP (default 1883; 0 = any free port; "off" to disable)
  --tls-port <n>         MQTT over TLS (needs --cert and --key)
  --ws-port <n>          MQTT over WebSocket
  --wss-port <n>         MQTT over secure WebSocket (needs --cert and --key)
  --cert <file> --key <file>   PEM certificate and private key for TLS and WSS
  --http-port <n>        /healthz and /metrics (default 9090; "off" to disable)
  --kms <url>            key service (default http://127.0.0.1:7070; env QKEY_KMS_URL)
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
The broker secret comes from QKEY_BROKER_SECRET, or <data>/broker-<id>.secret (written on first run).`;

const OPTIONS = {
  host: { type: 'string' },
  port: { type: 'string' },
  'tls-port': { type: 'string' },
  'ws-port': { type: 'string' },
  'wss-port': { type: 'string' },
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
  help: { type: 'boolean', short: 'h' },
} as const;

function port(value: string, flag: string): number | null {
  if (value === 'off') return null;
  if (!/^\d+$/.test(value) || Number(value) > 65535) throw new UsageError(`--${flag} must be a port number or "off"`);
  return Number(value);
}

export async function runBrokerCommand(argv: string[], io: CliIo): Promise<number> {
  let overrides: BrokerOverrides = {};
  let configFile: string | undefined;
  try {
    const { values } = parseArgs({ args: argv, options: OPTIONS, strict: true });
    if (values.help) {
      io.out(BROKER_USAGE);
      return EXIT_OK;
    }
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
      ...(values.kms ? { kmsUrl: values.kms } : {}),
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
      if (!/^\d+$/.test(values['semi-space'])) throw new UsageError('--semi-space must be a whole number of MiB');
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
    if (values['http-port'] !== undefined) {
      const p = port(values['http-port'], 'http-port');
      overrides.http = p === null ? null : { port: p };
    }
  } catch (err) {
    io.err(`qkey broker: ${(err as Error).message} (see qkey broker --help)`);
    return EXIT_USAGE;
  }
  const config = loadBrokerConfig(overrides, { configFile });
  const thread = config.semiSpaceMiB > 0 ? await startBrokerThread(config) : undefined;
  const broker = thread ?? (await startBroker(config));
  const listening = Object.entries(broker.urls)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
  const heap = thread ? `, broker thread with ${thread.semiSpaceMiB} MiB semi-space` : '';
  const shared = config.redis ? `, sharing ${redisLocation(config.redis)}` : '';
  io.out(
    `qkey broker listening: ${listening} (key service ${config.kmsUrl}, broker id ${config.brokerId}${shared}${heap})`,
  );
  // Runs until Ctrl-C or SIGTERM; a broker thread that ends by itself is a failure, reported with its reason.
  const failure = await new Promise<string | undefined>((resolve) => {
    process.once('SIGINT', () => resolve(undefined));
    process.once('SIGTERM', () => resolve(undefined));
    thread?.exited.then(
      () => resolve('it stopped'),
      (err: Error) => resolve(err.message),
    );
  });
  if (failure !== undefined) {
    io.err(`qkey broker: the broker thread ended unexpectedly: ${failure}`);
    return EXIT_FAILURE;
  }
  io.out('qkey broker: stopping');
  await broker.close();
  return EXIT_OK;
}
