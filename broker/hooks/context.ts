// What the plugin's hooks share: the options, each authenticated client's state and the small helpers every hook
// uses. One object per plugin, passed to each hook.
import type { Client } from 'aedes';
import type { KmsClient } from '../../kms-api/client.js';
import type { DeviceSessionKeys, RotationLimits, SessionEvent } from '../session-keys.js';
import type { TokenAuthority } from '../token-authority.js';
import type { Principal, TopicTemplates } from '../topic-policy.js';

/** Why an uplink publish was refused; each is a metric label. */
export type RejectReason =
  'acl' | 'plaintext' | 'malformed' | 'replay' | 'forged' | 'foreign_key' | 'kms_unavailable' | 'too_large';

export interface PluginEvents {
  rejected?: (reason: RejectReason, clientId: string, topic: string) => void;
  connected?: (principal: Principal) => void;
  authFailed?: (returnCode: number, reason: string) => void;
  downlink?: (outcome: 'sealed' | 'dropped_no_key' | 'resealed') => void;
  session?: (deviceId: string, event: SessionEvent) => void;
}

export interface QkeyPluginOptions {
  /** A key-service client holding this broker's token. */
  kms: KmsClient;
  tokens: TokenAuthority;
  topics?: TopicTemplates;
  rotation?: RotationLimits;
  /** Largest uplink payload after opening, bytes. */
  maxPayload?: number;
  events?: PluginEvents;
  log?: { info(obj: object, msg: string): void; warn(obj: object, msg: string): void };
}

export interface ClientState {
  principal: Principal;
  iat: number;
  keys?: DeviceSessionKeys;
}

export type PublishCallback = (err: Error | null) => void;

/** Nested synchronous authorizePublish callbacks allowed before the next one is deferred to a new tick. */
const MAX_SYNC_DEPTH = 32;

export class PluginContext {
  readonly states = new Map<Client, ClientState>();
  /** [MQTT-3.1.3-8] clients whose CONNECT had an empty client id with clean session off. */
  readonly emptyIdPersistent = new WeakSet<Client>();
  /**
   * Sealed downlink payload -> its plaintext. Aedes stores the packet authorizeForward returned for in-flight and
   * queued QoS 1/2 messages and passes that stored packet through authorizeForward again after a reconnect; this
   * lets the broker seal the original plaintext under the new session's key instead of sealing an envelope again.
   */
  readonly plaintextOf = new WeakMap<Buffer, Buffer>();
  readonly topics: TopicTemplates;
  readonly rotation: RotationLimits;
  readonly parseOptions: { maxPayload?: number };
  /** authorizePublish callbacks running on the current stack (see callBack). */
  private callbackDepth = 0;

  constructor(
    readonly o: QkeyPluginOptions,
    defaults: { topics: TopicTemplates; rotation: RotationLimits },
  ) {
    this.topics = o.topics ?? defaults.topics;
    this.rotation = o.rotation ?? defaults.rotation;
    this.parseOptions = o.maxPayload === undefined ? {} : { maxPayload: o.maxPayload };
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
}
