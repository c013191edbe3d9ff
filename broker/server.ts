// Runs Aedes with the QKey plugin on the configured listeners (TCP, TLS, WebSocket, secure WebSocket) plus HTTP
// /healthz and /metrics. startBroker() is what `qkey broker` and the tests call.
import type { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { createServer as createTlsServer, type TLSSocket, type TlsOptions } from 'node:tls';
import { Aedes, type AedesOptions } from 'aedes';
import { pino, type Logger } from 'pino';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { createWebSocketStream, WebSocketServer } from 'ws';
import type { Duplex } from 'node:stream';
import { type BrokerConfig, packetLimits } from './config.js';
import { ClientCertificates } from './client-certificate.js';
import { BrokerKmsSession, brokerSecret } from './credentials.js';
import { createBoundedEmitter } from './mq-emitter.js';
import { guardPackets, type InputRefusal } from './packet-guard.js';
import { type BrokerPersistence, openPersistence } from './persistence/index.js';
import { createQkeyPlugin, type QkeyPlugin } from './plugin.js';
import { redisLocation, startRedisEngine } from './redis/engine.js';
import { sm4GcmAddonStatus } from '../protocol/index.js';
import { PolicyFeed } from './policy/feed.js';
import { TokenAuthority } from './token-authority.js';
import { coalesceWrites } from './write-coalescing.js';
import { checkUpgrade, selectProtocol } from './ws-upgrade.js';

export interface RunningBroker {
  aedes: Aedes;
  plugin: QkeyPlugin;
  /** URLs of the listeners that are on: mqtt://, mqtts://, ws://, wss://, and http:// for health and metrics. */
  urls: { mqtt?: string; mqtts?: string; ws?: string; wss?: string; http?: string };
  registry: Registry;
  /** The policy table this broker enforces, followed from the key service. */
  policy: PolicyFeed;
  close(): Promise<void>;
}

function listen(server: NetServer | HttpServer, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const a = server.address();
      resolve(typeof a === 'object' && a ? a.port : port);
    });
  });
}

/**
 * prom-client default metrics whose collection is O(open connections) and runs on the broker's event loop at every
 * scrape: active handles and resources list every socket (and group them by class name), open fds reads
 * /proc/self/fd. With 10,000 devices a scrape cost 20-50 ms, a stall for every connection each time Prometheus
 * comes by. broker_connected_clients counts what matters; broker_process_max_fds is kept.
 */
export const PER_CONNECTION_DEFAULT_METRICS = [
  'broker_nodejs_active_handles',
  'broker_nodejs_active_handles_total',
  'broker_nodejs_active_resources',
  'broker_nodejs_active_resources_total',
  'broker_process_open_fds',
];

function createMetrics() {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'broker_' });
  for (const name of PER_CONNECTION_DEFAULT_METRICS) registry.removeSingleMetric(name);
  return {
    registry,
    connections: new Gauge({
      name: 'broker_connected_clients',
      help: 'Connected MQTT clients by role',
      labelNames: ['role'],
      registers: [registry],
    }),
    rejected: new Counter({
      name: 'broker_publish_rejected_total',
      help: 'Refused publishes by reason',
      labelNames: ['reason'],
      registers: [registry],
    }),
    authFailed: new Counter({
      name: 'broker_auth_failed_total',
      help: 'Refused CONNECTs by CONNACK return code',
      labelNames: ['return_code'],
      registers: [registry],
    }),
    downlink: new Counter({
      name: 'broker_downlink_total',
      help: 'Downlink deliveries by outcome',
      labelNames: ['outcome'],
      registers: [registry],
    }),
    rotations: new Counter({
      name: 'broker_downlink_rotations_total',
      help: 'Downlink key rotations',
      registers: [registry],
    }),
    appRotationNotices: new Counter({
      name: 'broker_app_rotation_notices_total',
      help: 'Application connections told to rotate their session key',
      registers: [registry],
    }),
    inputRefused: new Counter({
      name: 'broker_input_refused_total',
      help: 'Connections closed for what they sent before Aedes parsed it, by reason',
      labelNames: ['reason'],
      registers: [registry],
    }),
    sessionEvents: new Counter({
      name: 'broker_session_events_total',
      help: 'Key events in device sessions',
      labelNames: ['kind'],
      registers: [registry],
    }),
    subscribeRefused: new Counter({
      name: 'broker_subscribe_refused_total',
      help: 'Subscription filters refused (SUBACK 0x80) by reason',
      labelNames: ['reason'],
      registers: [registry],
    }),
    wills: new Counter({
      name: 'broker_wills_total',
      help: 'Wills Aedes asked to publish, by outcome',
      labelNames: ['outcome'],
      registers: [registry],
    }),
    hookErrors: new Counter({
      name: 'broker_hook_errors_total',
      help: 'Failures inside a plugin hook (the message or client in hand was dropped)',
      labelNames: ['hook'],
      registers: [registry],
    }),
    policyViolations: new Counter({
      name: 'broker_policy_violations_total',
      help: 'Publishes refused (leg=publish) and deliveries dropped (leg=forward) by the policy table, by rule',
      labelNames: ['leg', 'rule'],
      registers: [registry],
    }),
    policyVersion: new Gauge({
      name: 'broker_policy_version',
      help: "Version of the key service's policy table in force at this broker",
      registers: [registry],
    }),
    kmsUp: new Gauge({
      name: 'broker_kms_up',
      help: 'Whether the key service answered the last poll of its revocation feed (1) or not (0)',
      registers: [registry],
    }),
  };
}

/**
 * Counters the plugin keeps as plain numbers on its per-message paths (a labelled prom-client inc per message is
 * measurable at 10,000 messages a second), exposed at each scrape.
 */
function exposePluginCounters(registry: Registry, plugin: QkeyPlugin): void {
  const synced = new Map<string, number>();
  const sync = (counter: Counter<string>, key: string, value: number, labels?: Record<string, string>) => {
    const delta = value - (synced.get(key) ?? 0);
    if (delta > 0 && labels) counter.inc(labels, delta);
    else if (delta > 0) counter.inc(delta);
    synced.set(key, value);
  };
  new Counter({
    name: 'broker_uplink_total',
    help: "Devices' uplink publishes by outcome: opened, or the reason they were refused",
    labelNames: ['outcome'],
    registers: [registry],
    collect() {
      for (const [outcome, n] of Object.entries(plugin.counters.uplink)) sync(this, `up.${outcome}`, n, { outcome });
    },
  });
  new Counter({
    name: 'broker_payload_bytes_total',
    help: 'Envelope bytes: up = opened uplink messages, down = sealed deliveries to devices',
    labelNames: ['direction'],
    registers: [registry],
    collect() {
      sync(this, 'bytes.up', plugin.counters.uplinkBytes, { direction: 'up' });
      sync(this, 'bytes.down', plugin.counters.downlinkBytes, { direction: 'down' });
    },
  });
  const queues = plugin.queues;
  new Counter({
    name: 'broker_queue_dropped_total',
    help: 'QoS 1/2 messages dropped for a persistent session whose queue was at its bound, by bound: messages or bytes',
    labelNames: ['reason'],
    registers: [registry],
    collect() {
      for (const [reason, n] of Object.entries(queues.dropped)) sync(this, `queue.${reason}`, n, { reason });
    },
  });
  new Gauge({
    name: 'broker_queued_messages',
    help: "QoS 1/2 messages held in persistent sessions' queues (waiting or unacknowledged)",
    registers: [registry],
    collect() {
      this.set(queues.total.messages);
    },
  });
  new Gauge({
    name: 'broker_queued_bytes',
    help: "Payload bytes held in persistent sessions' queues",
    registers: [registry],
    collect() {
      this.set(queues.total.bytes);
    },
  });
}

/** broker_kms_up follows the revocation feed; one log line when the key service goes away, one when it is back. */
function followKmsHealth(tokens: TokenAuthority, gauge: Gauge, log: Logger): void {
  let up = tokens.feedHealthy;
  gauge.set(up ? 1 : 0);
  if (!up) log.warn({}, 'key service unreachable');
  tokens.onFeedHealth((healthy) => {
    gauge.set(healthy ? 1 : 0);
    if (healthy === up) return;
    up = healthy;
    if (healthy) log.info({}, 'key service reachable again');
    else log.warn({}, 'key service unreachable');
  });
}

export interface StartOptions {
  logger?: Logger;
  /** The clock tokens are checked against, Unix seconds (tests move it; default: the system clock). */
  now?: () => number;
}

export async function startBroker(config: Readonly<BrokerConfig>, options: StartOptions = {}): Promise<RunningBroker> {
  // Opened first: a store another broker holds, or a damaged one, stops the start before anything else.
  // With Redis the sessions live there (broker/redis/), and no store file is opened.
  const store = openPersistence(config.redis ? 'memory' : config.persistence, config.dataDir, config.brokerId);
  try {
    return await startOn(store, config, options);
  } catch (err) {
    await store.close();
    throw err;
  }
}

async function startOn(
  store: BrokerPersistence,
  config: Readonly<BrokerConfig>,
  options: StartOptions,
): Promise<RunningBroker> {
  const log = options.logger ?? pino({ level: config.logLevel });
  const secret = await brokerSecret(config.kmsUrl, config.brokerId, config.dataDir, config.brokerSecret);
  const kmsSession = new BrokerKmsSession(config.kmsUrl, config.brokerId, secret);
  const kms = await kmsSession.start();
  const tokens = new TokenAuthority(kms, { pollMs: config.revocationPollMs, ...(options.now && { now: options.now }) });
  await tokens.start();
  const policy = new PolicyFeed(kms, config.revocationPollMs);
  try {
    await policy.start();
  } catch (err) {
    tokens.stop();
    kmsSession.stop();
    throw err;
  }
  const m = createMetrics();
  m.policyVersion.set(policy.current.version);
  policy.onChange((p) => {
    m.policyVersion.set(p.version);
    log.info({ version: p.version, entries: p.size }, 'policy table changed');
  });
  const certificates = config.clientCertificates ? new ClientCertificates(config.clientCertificates) : undefined;
  // Several brokers: the queues live in Redis, which bounds them itself, across brokers (broker/redis/).
  const dropWarned = new Map<string, number>();
  const redis = config.redis
    ? await startRedisEngine(config.redis, {
        brokerId: config.brokerId,
        concurrency: config.concurrency,
        maxQueuedMessages: config.maxQueuedMessages,
        maxQueuedBytes: config.maxQueuedBytes,
        onDropped: (clientId, reason) => {
          plugin.queues.dropped[reason]++;
          // Logged at warn once a minute per client; every drop is counted.
          const now = Date.now();
          if ((dropWarned.get(clientId) ?? 0) > now - 60_000) return;
          if (dropWarned.size >= 10_000) dropWarned.clear();
          dropWarned.set(clientId, now);
          log.warn({ client: clientId, reason }, 'queue full: new messages for this client are dropped');
        },
        onLost: (reason) => log.error({ reason }, 'broker id lease in Redis lost'),
      })
    : undefined;
  const plugin = createQkeyPlugin({
    certificates,
    kms,
    tokens,
    topics: config.topics,
    rotation: config.rotation,
    maxPayload: config.maxPayload,
    maxDownlinkPayload: config.maxDownlinkPayload,
    maxSubscriptionsPerClient: config.maxSubscriptionsPerClient,
    maxQueuedMessages: config.maxQueuedMessages,
    maxQueuedBytes: config.maxQueuedBytes,
    queuesBoundedByPersistence: redis !== undefined,
    uplinkKeyLingerSeconds: config.uplinkKeyLingerSeconds,
    maxDownlinkClaimsPerMinute: config.maxDownlinkClaimsPerMinute,
    appHold: { ms: config.appHoldSeconds * 1000, count: config.appHoldMessages, bytes: config.appHoldBytes },
    connectionLogLevel: config.connectionLogLevel,
    log,
    policy,
    events: {
      rejected: (reason) => m.rejected.inc({ reason }),
      authFailed: (code, reason, who) => {
        m.authFailed.inc({ return_code: String(code) });
        log.warn(
          { client: who.clientId, principal: who.username, source: who.source, returnCode: code, reason },
          'connect refused',
        );
      },
      downlink: (outcome) => m.downlink.inc({ outcome }),
      appRotationNotice: () => m.appRotationNotices.inc(),
      subscribeRefused: (reason) => m.subscribeRefused.inc({ reason }),
      will: (outcome) => m.wills.inc({ outcome }),
      hookError: (hook) => m.hookErrors.inc({ hook }),
      policy: (leg, rule) => m.policyViolations.inc({ leg, rule }),
      session: (deviceId, e) => {
        m.sessionEvents.inc({ kind: e.kind });
        if (e.kind === 'downlink-rotated') m.rotations.inc();
        if (e.kind !== 'downlink-rotated') log.warn({ device: deviceId, event: e.kind }, 'session key event');
      },
    },
  });
  // The default emitter can overflow the stack draining its queue under overload (see mq-emitter.ts).
  const aedes = new Aedes({
    id: config.brokerId,
    concurrency: config.concurrency,
    mq: redis?.mq ?? createBoundedEmitter({ concurrency: config.concurrency }),
    ...(redis && { persistence: redis.persistence as unknown as AedesOptions['persistence'] }),
    ...(!redis && store.aedes && { persistence: store.aedes as unknown as AedesOptions['persistence'] }),
  });
  await aedes.listen();
  plugin.attach(aedes);
  exposePluginCounters(m.registry, plugin);
  // Aedes reports its own failures (a persistence error, a will it could not publish) as 'error' events: without a
  // listener an EventEmitter throws them, and that would end the broker.
  (aedes as unknown as EventEmitter).on('error', (err: Error) => log.error({ reason: err.message }, 'broker error'));
  followKmsHealth(tokens, m.kmsUp, log);
  // The role is remembered at connect: by the time 'clientDisconnect' reaches this listener, the plugin (which
  // listens first) has already released the client.
  const roles = new WeakMap<object, string>();
  aedes.on('clientReady', (c) => {
    const role = plugin.principalOf(c)?.role ?? 'unknown';
    roles.set(c, role);
    m.connections.inc({ role });
  });
  aedes.on('clientDisconnect', (c) => {
    const role = roles.get(c);
    if (role) m.connections.dec({ role });
  });

  const limits = packetLimits(config);
  /** Every MQTT connection, whatever the transport: input bounds first, then Aedes. */
  const serve = (stream: Duplex, source: string | undefined, tlsSocket?: TLSSocket, req?: IncomingMessage) => {
    if (certificates && tlsSocket) certificates.record(stream, tlsSocket);
    const connection: { client?: { connected: boolean; connackSent?: boolean } } = {};
    guardPackets(
      stream,
      limits,
      // Accepted once CONNACK is out: Aedes marks the client connected only after sending a persistent session's
      // stored queue, which with a shared store takes a round trip, while the client may already be publishing.
      () => connection.client?.connected === true || connection.client?.connackSent === true,
      (reason: InputRefusal) => {
        m.inputRefused.inc({ reason });
        log.warn({ reason, source }, 'connection refused: input over its bounds');
      },
    );
    connection.client = aedes.handle(stream, req);
  };

  /** TLS and WSS: the broker's certificate, and with mutual TLS the client CA, required of every client. */
  const tlsOptions = (l: { cert?: string; key?: string }): TlsOptions => ({
    cert: readFileSync(l.cert!),
    key: readFileSync(l.key!),
    ...(config.clientCertificates && {
      ca: readFileSync(config.clientCertificates.ca),
      requestCert: true,
      rejectUnauthorized: true,
    }),
  });

  const servers: Array<NetServer | HttpServer> = [];
  // Every open connection of every listener, so that close() can end those Aedes does not know (before CONNECT).
  const sockets = new Set<Socket>();
  const keep = (server: NetServer | HttpServer) => {
    server.on('connection', (socket: Socket) => {
      sockets.add(socket);
      socket.once('close', () => sockets.delete(socket));
    });
    servers.push(server);
  };
  const wsServers: WebSocketServer[] = [];
  const wsOrigins = new Set(config.wsOrigins.map((o) => o.toLowerCase()));
  const urls: RunningBroker['urls'] = {};
  const host = config.host.includes(':') ? `[${config.host}]` : config.host;
  try {
    if (config.mqtt) {
      const s = createNetServer((socket) => {
        coalesceWrites(socket);
        serve(socket, socket.remoteAddress);
      });
      keep(s);
      urls.mqtt = `mqtt://${host}:${await listen(s, config.mqtt.port, config.host)}`;
    }
    if (config.tls) {
      const s = createTlsServer(tlsOptions(config.tls), (socket) => {
        coalesceWrites(socket);
        serve(socket, socket.remoteAddress, socket);
      });
      keep(s);
      urls.mqtts = `mqtts://${host}:${await listen(s, config.tls.port, config.host)}`;
    }
    for (const [kind, l] of [
      ['ws', config.ws],
      ['wss', config.wss],
    ] as const) {
      if (!l) continue;
      const http = kind === 'ws' ? createHttpServer() : createHttpsServer(tlsOptions(l));
      // The upgrade request goes along to Aedes: it carries the peer's address for the logs.
      // A WebSocket message is buffered whole before it reaches the MQTT stream: ws refuses one larger than the
      // largest packet at its frame header (close code 1009), before buffering it.
      const wss = new WebSocketServer({
        server: http,
        maxPayload: limits.maxPacketSize,
        // Refused before the upgrade: no "mqtt" subprotocol, or a page's Origin not in wsOrigins (ws-upgrade.ts).
        verifyClient: ({ req }, done) => {
          const refusal = checkUpgrade(req, wsOrigins);
          if (!refusal) return done(true);
          log.info({ reason: refusal.reason, origin: req.headers.origin }, 'websocket upgrade refused');
          done(false, refusal.status);
        },
        handleProtocols: selectProtocol,
      });
      wss.on('connection', (socket, req) =>
        serve(
          createWebSocketStream(socket),
          req.socket.remoteAddress,
          kind === 'wss' ? (req.socket as TLSSocket) : undefined,
          req,
        ),
      );
      keep(http);
      wsServers.push(wss);
      urls[kind] = `${kind}://${host}:${await listen(http, l.port, config.host)}`;
    }
    if (config.http) {
      const s = createHttpServer((req, res) => {
        if (req.url === '/healthz') {
          const healthy = tokens.feedHealthy;
          res.writeHead(healthy ? 200 : 503, { 'content-type': 'application/json' });
          res.end(
            JSON.stringify({
              status: healthy ? 'ok' : 'degraded',
              kms: healthy ? 'reachable' : 'unreachable',
              clients: aedes.connectedClients,
            }),
          );
        } else if (req.url === '/metrics') {
          m.registry.metrics().then(
            (text) => {
              res.writeHead(200, { 'content-type': m.registry.contentType });
              res.end(text);
            },
            () => res.writeHead(500).end(),
          );
        } else res.writeHead(404).end();
      });
      keep(s);
      urls.http = `http://${host}:${await listen(s, config.http.port, config.host)}`;
    }
  } catch (err) {
    for (const s of servers) s.close();
    tokens.stop();
    policy.stop();
    kmsSession.stop();
    await new Promise<void>((r) => aedes.close(() => r()));
    await redis?.close();
    throw err;
  }
  log.info(
    { urls, sm4gcm: sm4GcmAddonStatus().reason, ...(config.redis && { redis: redisLocation(config.redis) }) },
    'broker listening',
  );

  return {
    aedes,
    plugin,
    urls,
    registry: m.registry,
    policy,
    async close() {
      tokens.stop();
      policy.stop();
      kmsSession.stop();
      for (const w of wsServers) w.close();
      // Stop accepting, then close the clients (aedes.close): a server's close waits for its open connections, so
      // awaiting it first kept a stopping broker (Ctrl-C) alive as long as any client stayed connected.
      const listenersClosed = servers.map((s) => new Promise<void>((r) => s.close(() => r())));
      await new Promise<void>((r) => aedes.close(() => r()));
      for (const socket of sockets) socket.destroy();
      await Promise.all(listenersClosed);
      await plugin.close();
      await redis?.close();
      await store.close();
    },
  };
}
