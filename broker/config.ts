// Broker configuration: defaults, then a JSON config file, then QKEY_BROKER_* environment, then CLI flags.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { KMS_DEFAULTS } from '../key-service/config.js';
import { DEFAULT_MAX_PAYLOAD, ENVELOPE_OVERHEAD, MAX_PAYLOAD_LIMIT } from '../protocol/index.js';
import type { ClientCertificatePolicy } from './client-certificate.js';
import type { PacketLimits } from './packet-guard.js';
import { DEFAULT_ROTATION, type RotationLimits } from './session-keys.js';
import { DEFAULT_TOPICS, type TopicTemplates } from './topic-policy.js';

export interface ListenerConfig {
  port: number;
  /** PEM file paths; required for tls and wss. */
  cert?: string;
  key?: string;
}

export interface BrokerConfig {
  host: string;
  /** MQTT over TCP; null turns it off. */
  mqtt: ListenerConfig | null;
  tls: ListenerConfig | null;
  ws: ListenerConfig | null;
  wss: ListenerConfig | null;
  /** Mutual TLS on the tls and wss listeners (see client-certificate.ts); null: no client certificates. */
  clientCertificates: ClientCertificatePolicy | null;
  /** HTTP for /healthz and /metrics; null turns it off. */
  http: { port: number } | null;
  kmsUrl: string;
  /** This broker's id at the key service (its SAE id). */
  brokerId: string;
  /** Its client secret; when absent, read from or registered into `<dataDir>/broker-<id>.secret`. */
  brokerSecret?: string;
  /** Key-service data folder: where the admin token is found for first-run self-registration. */
  dataDir: string;
  topics: TopicTemplates;
  rotation: RotationLimits;
  maxPayload: number;
  /** Largest MQTT packet once CONNECT is accepted, bytes; when absent, derived from maxPayload (see packetLimits). */
  maxPacketSize?: number;
  /** Bytes a connection may send before its CONNECT is accepted (the CONNECT with its will, and anything behind it). */
  maxPreConnectBytes: number;
  /** Topic filters in one SUBSCRIBE or UNSUBSCRIBE; more closes the connection. */
  maxTopicFiltersPerPacket: number;
  /**
   * Largest plaintext a device can receive, bytes (what its chip opens): applications' publishes and wills into a
   * device's downlink space are refused above it when published.
   */
  maxDownlinkPayload: number;
  /** Subscriptions one client may hold; SUBACK 0x80 for each filter beyond. */
  maxSubscriptionsPerClient: number;
  /** Level of the per-connection log lines (client connected, client disconnected): info or debug. */
  connectionLogLevel: 'info' | 'debug';
  /**
   * Messages Aedes routes at once before later ones wait in its queue (Aedes' `concurrency`, default 100 there).
   * A message holds its slot until every subscriber's write has completed, at least one event-loop turn, so
   * this bounds messages per turn: 10,000 devices at one message a second need more than Aedes' 100.
   */
  concurrency: number;
  revocationPollMs: number;
  logLevel: string;
  /**
   * V8 young-generation semi-space for the broker, in MiB (what node --max-semi-space-size sets): `qkey broker`
   * runs the broker on a thread with this limit (see thread.ts). 0 runs it on the main thread with V8's default.
   */
  semiSpaceMiB: number;
}

export const BROKER_DEFAULTS: Readonly<BrokerConfig> = Object.freeze({
  host: '127.0.0.1',
  mqtt: { port: 1883 },
  tls: null,
  ws: null,
  wss: null,
  clientCertificates: null,
  http: { port: 9090 },
  kmsUrl: `http://127.0.0.1:${KMS_DEFAULTS.port}`,
  brokerId: 'qkey-broker',
  dataDir: './data',
  topics: DEFAULT_TOPICS,
  rotation: DEFAULT_ROTATION,
  maxPayload: 256 * 1024,
  maxDownlinkPayload: DEFAULT_MAX_PAYLOAD,
  maxSubscriptionsPerClient: 1000,
  connectionLogLevel: 'info',
  maxPreConnectBytes: 16 * 1024,
  maxTopicFiltersPerPacket: 32,
  concurrency: 2000,
  revocationPollMs: 1000,
  logLevel: 'info',
  semiSpaceMiB: 128,
});

/** MQTT 3.1.1 §2.2.3: the largest Remaining Length four bytes can encode. */
const MAX_REMAINING_LENGTH = 268_435_455;

/**
 * The input bounds of a configuration. The default packet bound is the largest PUBLISH that carries a payload of
 * maxPayload bytes sealed in an envelope: fixed header (1 + 4), topic (2 + 65,535, the most MQTT allows), packet id
 * (2), envelope overhead.
 */
export function packetLimits(c: Readonly<BrokerConfig>): PacketLimits {
  return {
    maxPacketSize:
      c.maxPacketSize ?? Math.min(5 + 2 + 65_535 + 2 + ENVELOPE_OVERHEAD + c.maxPayload, MAX_REMAINING_LENGTH + 5),
    maxPreConnectBytes: c.maxPreConnectBytes,
    maxTopicFiltersPerPacket: c.maxTopicFiltersPerPacket,
  };
}

export type BrokerOverrides = Partial<BrokerConfig>;

function fromEnv(env: NodeJS.ProcessEnv): BrokerOverrides {
  const o: BrokerOverrides = {};
  if (env.QKEY_BROKER_HOST) o.host = env.QKEY_BROKER_HOST;
  if (env.QKEY_BROKER_PORT) o.mqtt = { port: Number(env.QKEY_BROKER_PORT) };
  if (env.QKEY_KMS_URL) o.kmsUrl = env.QKEY_KMS_URL;
  if (env.QKEY_BROKER_ID) o.brokerId = env.QKEY_BROKER_ID;
  if (env.QKEY_BROKER_SECRET) o.brokerSecret = env.QKEY_BROKER_SECRET;
  if (env.QKEY_KMS_DATA) o.dataDir = env.QKEY_KMS_DATA;
  if (env.QKEY_BROKER_LOG_LEVEL) o.logLevel = env.QKEY_BROKER_LOG_LEVEL;
  return o;
}

function check(c: BrokerConfig): BrokerConfig {
  for (const [name, l] of [
    ['mqtt', c.mqtt],
    ['tls', c.tls],
    ['ws', c.ws],
    ['wss', c.wss],
    ['http', c.http],
  ] as const) {
    if (l && !(Number.isInteger(l.port) && l.port >= 0 && l.port <= 65535))
      throw new Error(`config: ${name}.port must be 0..65535`);
  }
  for (const [name, l] of [
    ['tls', c.tls],
    ['wss', c.wss],
  ] as const) {
    if (l && (!l.cert || !l.key)) throw new Error(`config: ${name} needs cert and key files`);
  }
  if (c.clientCertificates) {
    if (typeof c.clientCertificates.ca !== 'string' || !c.clientCertificates.ca)
      throw new Error('config: clientCertificates.ca must be a PEM file path');
    if (typeof c.clientCertificates.tokenRequired !== 'boolean')
      throw new Error('config: clientCertificates.tokenRequired must be true or false');
    if (!c.tls && !c.wss) throw new Error('config: clientCertificates needs a tls or wss listener');
  }
  if (!c.mqtt && !c.tls && !c.ws && !c.wss) throw new Error('config: at least one MQTT listener must be on');
  for (const [k, v] of Object.entries(c.rotation))
    if (!(v > 0)) throw new Error(`config: rotation.${k} must be positive`);
  if (!(Number.isInteger(c.concurrency) && c.concurrency >= 1))
    throw new Error('config: concurrency must be a positive integer');
  if (!(
    Number.isInteger(c.maxDownlinkPayload) &&
    c.maxDownlinkPayload >= 1 &&
    c.maxDownlinkPayload <= MAX_PAYLOAD_LIMIT
  ))
    throw new Error(`config: maxDownlinkPayload must be an integer from 1 to ${MAX_PAYLOAD_LIMIT}`);
  if (!(Number.isInteger(c.maxSubscriptionsPerClient) && c.maxSubscriptionsPerClient >= 1))
    throw new Error('config: maxSubscriptionsPerClient must be a positive integer');
  if (c.connectionLogLevel !== 'info' && c.connectionLogLevel !== 'debug')
    throw new Error("config: connectionLogLevel must be 'info' or 'debug'");
  if (!(Number.isInteger(c.semiSpaceMiB) && c.semiSpaceMiB >= 0 && c.semiSpaceMiB <= 1024))
    throw new Error('config: semiSpaceMiB must be an integer from 0 to 1024');
  for (const key of ['maxPacketSize', 'maxPreConnectBytes', 'maxTopicFiltersPerPacket'] as const) {
    const v = c[key];
    if (v !== undefined && !(Number.isInteger(v) && v >= 1 && v <= MAX_REMAINING_LENGTH + 5))
      throw new Error(`config: ${key} must be an integer from 1 to ${MAX_REMAINING_LENGTH + 5}`);
  }
  if (!c.topics.uplink.includes('{id}') || !c.topics.downlink.includes('{id}'))
    throw new Error('config: topic templates need {id}');
  return c;
}

export function loadBrokerConfig(
  overrides: BrokerOverrides = {},
  options: { configFile?: string | undefined; env?: NodeJS.ProcessEnv } = {},
): Readonly<BrokerConfig> {
  const env = options.env ?? process.env;
  const file = options.configFile ?? env.QKEY_BROKER_CONFIG;
  let fileConfig: BrokerOverrides = {};
  if (file) {
    try {
      fileConfig = JSON.parse(readFileSync(file, 'utf8')) as BrokerOverrides;
    } catch (err) {
      throw new Error(`config: cannot read ${file}: ${(err as Error).message}`);
    }
  }
  const merged = {
    ...BROKER_DEFAULTS,
    ...fileConfig,
    ...fromEnv(env),
    ...Object.fromEntries(Object.entries(overrides).filter(([, v]) => v !== undefined)),
  } as BrokerConfig;
  merged.rotation = { ...DEFAULT_ROTATION, ...fileConfig.rotation, ...overrides.rotation };
  merged.topics = { ...DEFAULT_TOPICS, ...fileConfig.topics, ...overrides.topics };
  // A file may leave tokenRequired out: the token stays required.
  const mtls = merged.clientCertificates as Partial<ClientCertificatePolicy> | null;
  if (mtls)
    merged.clientCertificates = { ...mtls, tokenRequired: mtls.tokenRequired ?? true } as ClientCertificatePolicy;
  return Object.freeze({ ...check(merged), dataDir: resolve(merged.dataDir) });
}
