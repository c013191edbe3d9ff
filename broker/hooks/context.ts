// What the plugin's hooks share: the options, each authenticated client's state, the counters /metrics reads and
// the small helpers every hook uses. One object per plugin, passed to each hook.
import type { ClientCertificates } from '../client-certificate.js';
import type { Client } from 'aedes';
import type { KmsClient } from '../../kms-api/client.js';
import { KmsCoalescer } from '../../kms-api/coalescer.js';
import { KeyReports } from '../key-reports.js';
import { DEFAULT_MAX_PAYLOAD, type ParsedEnvelope } from '../../protocol/index.js';
import type { AppSessionKeys } from '../app-session-keys.js';
import type { AppDeliveryHold, AppHoldLimits } from './app-hold.js';
import type { DeviceSessionKeys, RotationLimits, SessionEvent } from '../session-keys.js';
import { ClaimBudget } from '../claim-budget.js';
import { DEFAULT_UPLINK_LINGER_SECONDS, UplinkKeys } from '../uplink-keys.js';
import type { TokenAuthority } from '../token-authority.js';
import { deviceFilter, type Principal, type TopicTemplates } from '../topic-policy.js';
import { EMPTY_POLICY, type PolicyViolation, rotationFor } from '../policy/evaluate.js';
import type { PolicySource } from '../policy/feed.js';

/** Why a publish was refused; each is a metric label. */
export type RejectReason =
  | 'acl'
  | 'plaintext'
  | 'malformed'
  | 'replay'
  | 'forged'
  | 'key_spent'
  | 'foreign_key'
  | 'revoked'
  | 'kms_unavailable'
  | 'too_large'
  | 'policy'
  | 'error';

/**
 * What became of a device's uplink publish: `opened`, `forwarded` sealed (an end-to-end topic, docs/PROTOCOL.md
 * §23), a `duplicate` acknowledged and dropped, or why it was refused.
 */
export type UplinkOutcome = 'opened' | 'forwarded' | 'duplicate' | RejectReason;

/** The payload of a publish the broker acknowledged but passes on to no one (a QoS 1 retransmission, publish.ts). */
export const DROPPED_PAYLOAD: Buffer = Buffer.alloc(0);

/**
 * What became of one delivery to a device: `sealed` live or retained, `resealed` from the session's stored queue
 * (queued while away, or unacknowledged and sent again after a reconnect), or why it was dropped.
 */
export type DownlinkOutcome = 'sealed' | 'resealed' | 'dropped_no_key' | 'dropped_too_large' | 'dropped_error';

/** The hooks, as named in logs and in broker_hook_errors_total. */
export type HookName = 'preConnect' | 'authenticate' | 'publish' | 'will' | 'subscribe' | 'forward' | 'lifecycle';

/** Who tried to connect, for the log line of a refused CONNECT: never the token. */
export interface ConnectAttempt {
  clientId: string;
  username: string | undefined;
  source: string | undefined;
}

export interface PluginEvents {
  rejected?: (reason: RejectReason, clientId: string, topic: string) => void;
  connected?: (principal: Principal) => void;
  authFailed?: (returnCode: number, reason: string, attempt: ConnectAttempt) => void;
  downlink?: (outcome: DownlinkOutcome) => void;
  /** An application connection told to rotate its session key (docs/PROTOCOL.md §22.6). */
  appRotationNotice?: () => void;
  session?: (deviceId: string, event: SessionEvent) => void;
  subscribeRefused?: (reason: 'acl' | 'limit') => void;
  will?: (outcome: 'published' | 'refused') => void;
  hookError?: (hook: HookName) => void;
  /** A publish refused (`publish`) or a delivery dropped (`forward`) by the policy table, by the rule it broke. */
  policy?: (leg: 'publish' | 'forward', rule: PolicyViolation) => void;
}

export interface PluginLog {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface QkeyPluginOptions {
  /** A key-service client holding this broker's token. */
  kms: KmsClient;
  tokens: TokenAuthority;
  topics?: TopicTemplates;
  rotation?: RotationLimits;
  /** Largest uplink payload after opening, bytes. */
  maxPayload?: number;
  /**
   * Largest plaintext a device can receive, bytes: applications' publishes (live, retained, queued, wills) into a
   * device's downlink space are refused above it when they are published, never accepted and dropped later.
   */
  maxDownlinkPayload?: number;
  /** Subscriptions one client may hold at once; SUBACK 0x80 for filters beyond it. */
  maxSubscriptionsPerClient?: number;
  /**
   * QoS 1/2 messages one persistent session's queue may hold (waiting or unacknowledged), and their payload bytes;
   * a new message beyond either is dropped for that client (queue-bound.ts). 0: no maximum. Default 1000, 16 MiB.
   */
  maxQueuedMessages?: number;
  maxQueuedBytes?: number;
  /** The persistence bounds the queues itself, across brokers (broker/redis/): the plugin's bound stays out. */
  queuesBoundedByPersistence?: boolean;
  /**
   * Seconds the uplink keys of a device stay held after its last connection to this broker ended, so that a
   * reconnect (an MQTT library's, or a QoS 1 resend) continues under them (docs/PROTOCOL.md §9.1).
   */
  uplinkKeyLingerSeconds?: number;
  /**
   * Downlink keys one device may claim per minute at this broker (sustained, and the burst): every connection that
   * receives a command claims one, so this bounds how fast a stolen token can drain a device's downlink pool.
   */
  maxDownlinkClaimsPerMinute?: number;
  /** Level of the per-connection log lines (connected, disconnected). */
  connectionLogLevel?: 'info' | 'debug';
  events?: PluginEvents;
  /** Mutual TLS: connections' certificate identities and whether a certificate alone may replace a device token. */
  certificates?: ClientCertificates;
  log?: PluginLog;
  /** The policy table in force (policy/feed.ts); none: the broker's behaviour without a policy. */
  policy?: PolicySource;
  /**
   * How long (ms) and how many live deliveries a persistent application session's hold keeps waiting for its
   * session key, and their payload bytes (docs/PROTOCOL.md §22.8). Default 30000 ms, 1000, 16 MiB.
   */
  appHold?: AppHoldLimits;
}

/** A device will's envelope, read (not opened) at CONNECT: its key is this connection's uplink key. */
export interface DeviceWill {
  parsed: ParsedEnvelope;
}

export interface ClientState {
  principal: Principal;
  iat: number;
  keys?: DeviceSessionKeys;
  /** An application's session keys once it announced one (docs/PROTOCOL.md §22.6). */
  app?: AppSessionKeys;
  /** A persistent application connection's deliveries that wait for its session key (app-hold.ts). */
  appHold?: AppDeliveryHold;
  /** The connection closed and its keys were destroyed (lifecycle.ts): a claim answered after that installs nothing. */
  released?: boolean;
  /** The will's envelope header when the device sent a sealed will. */
  will?: DeviceWill;
  /** Releases the hold on the will's uplink key (see UplinkKeys.pin). */
  unpinWill?: () => void;
  /** Opening and publishing the will: session keys are released only after it. */
  willSettled?: Promise<void>;
  /** The connection closed before Aedes handed over the will: release when the will hook is done. */
  releaseAfterWill?: boolean;
  /** Releases the state anyway if Aedes never hands the will over. */
  handoverTimer?: NodeJS.Timeout;
  /** The subscription filters granted and held (bounded by maxSubscriptionsPerClient). */
  subscriptions: Set<string>;
  /** Why the connection ended, when the broker knows better than "closed" (error, keepalive, revoked, takeover). */
  endReason?: string;
  source: string | undefined;
}

/** Plain counters for the per-message paths (cheaper than a labelled prom-client inc); /metrics reads them. */
export interface PluginCounters {
  uplink: Record<UplinkOutcome, number>;
  /** Envelope bytes of opened uplink messages. */
  uplinkBytes: number;
  /** Envelope bytes sealed for deliveries to devices. */
  downlinkBytes: number;
}

export type PublishCallback = (err: Error | null) => void;

/** Nested synchronous authorizePublish callbacks allowed before the next one is deferred to a new tick. */
const MAX_SYNC_DEPTH = 32;

export const DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT = 1000;
export const DEFAULT_DOWNLINK_CLAIMS_PER_MINUTE = 20;

export class PluginContext {
  readonly states = new Map<Client, ClientState>();
  /** [MQTT-3.1.3-8] clients whose CONNECT had an empty client id with clean session off. */
  readonly emptyIdPersistent = new WeakSet<Client>();
  /** Clients whose CONNECT had an empty client id: the broker assigns one in the principal's namespace. */
  readonly emptyId = new WeakSet<Client>();
  readonly topics: TopicTemplates;
  readonly rotation: RotationLimits;
  readonly parseOptions: { maxPayload?: number };
  readonly maxDownlinkPayload: number;
  readonly maxSubscriptions: number;
  /** Claims and retirements of all sessions, coalesced per event-loop turn into bulk requests. */
  readonly keyDelivery: KmsCoalescer;
  /** In front of keyDelivery: lost claims reported abandoned, unanswered retirements retried (key-reports.ts). */
  readonly keys: KeyReports;
  /** The uplink keys this broker holds, per device, across that device's connections. */
  readonly uplinks: UplinkKeys;
  readonly downlinkBudget: ClaimBudget;
  readonly policy: PolicySource;
  readonly counters: PluginCounters = {
    uplink: {
      opened: 0,
      forwarded: 0,
      duplicate: 0,
      acl: 0,
      plaintext: 0,
      malformed: 0,
      replay: 0,
      forged: 0,
      key_spent: 0,
      foreign_key: 0,
      revoked: 0,
      kms_unavailable: 0,
      too_large: 0,
      policy: 0,
      error: 0,
    },
    uplinkBytes: 0,
    downlinkBytes: 0,
  };
  /** authorizePublish callbacks running on the current stack (see callBack). */
  private callbackDepth = 0;

  constructor(
    readonly o: QkeyPluginOptions,
    defaults: { topics: TopicTemplates; rotation: RotationLimits },
  ) {
    this.topics = o.topics ?? defaults.topics;
    this.rotation = o.rotation ?? defaults.rotation;
    this.parseOptions = o.maxPayload === undefined ? {} : { maxPayload: o.maxPayload };
    this.maxDownlinkPayload = o.maxDownlinkPayload ?? DEFAULT_MAX_PAYLOAD;
    this.maxSubscriptions = o.maxSubscriptionsPerClient ?? DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT;
    this.downlinkBudget = new ClaimBudget(o.maxDownlinkClaimsPerMinute ?? DEFAULT_DOWNLINK_CLAIMS_PER_MINUTE);
    this.policy = o.policy ?? { current: EMPTY_POLICY };
    this.keyDelivery = new KmsCoalescer(o.kms);
    this.keys = new KeyReports(this.keyDelivery, {
      onEvent: (e) => {
        if (e.kind === 'report-retry')
          this.o.log?.debug(
            { device: e.deviceId, attempt: e.attempt, err: e.error },
            'key report not answered; retrying',
          );
        else if (e.kind === 'claim-lost')
          this.o.log?.warn(
            { device: e.deviceId, err: e.error },
            'key claim answer lost; the key is reported abandoned',
          );
        else this.o.log?.warn({ device: e.deviceId, reason: e.reason }, 'key report dropped; its keys stay claimed');
      },
    });
    this.uplinks = new UplinkKeys(this.keys, (o.uplinkKeyLingerSeconds ?? DEFAULT_UPLINK_LINGER_SECONDS) * 1000);
  }

  /** A device session's downlink rotation limits: the configured ones, tightened by the policy table. */
  rotationFor(deviceId: string): RotationLimits {
    const policy = this.policy.current;
    if (policy.size === 0) return this.rotation;
    return rotationFor(policy, deviceId, deviceFilter(this.topics.downlink, deviceId), this.rotation);
  }

  /**
   * Aedes handles the client's next buffered packets from this callback, so calling back on this stack nests one
   * level per packet: beyond MAX_SYNC_DEPTH the callback goes to the next tick, or a large backlog would overflow
   * the stack. Below it, calling back at once saves a tick per message.
   */
  callBack(callback: PublishCallback, err: Error | null): void {
    if (this.callbackDepth >= MAX_SYNC_DEPTH) return process.nextTick(callback, err);
    this.callbackDepth++;
    try {
      callback(err);
    } finally {
      this.callbackDepth--;
    }
  }

  /** A hook threw: the message or client in hand is dropped, the reason logged and counted; the broker carries on. */
  hookFailed(hook: HookName, client: Client | null, err: unknown): Error {
    const reason = err instanceof Error ? err.message : String(err);
    this.o.events?.hookError?.(hook);
    this.o.log?.error({ hook, client: client?.id, reason }, 'hook failed; dropped');
    return new Error(`${hook} hook failed: ${reason}`);
  }

  /** The peer's address as the listener saw it (TCP and TLS sockets; WebSocket through the upgrade request). */
  sourceOf(client: Client): string | undefined {
    const c = client as Client & {
      conn?: { remoteAddress?: string; remotePort?: number };
      req?: { socket?: { remoteAddress?: string; remotePort?: number } };
    };
    const s = c.conn?.remoteAddress !== undefined ? c.conn : c.req?.socket;
    if (!s?.remoteAddress) return undefined;
    return s.remotePort === undefined ? s.remoteAddress : `${s.remoteAddress}:${s.remotePort}`;
  }

  logConnection(obj: object, msg: string): void {
    if (this.o.connectionLogLevel === 'debug') this.o.log?.debug(obj, msg);
    else this.o.log?.info(obj, msg);
  }
}
