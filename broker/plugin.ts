// The QKey plugin for Aedes: token authentication, topic ACLs, uplink envelope opening and per-device downlink
// sealing, as Aedes hooks. Usable on any Aedes instance: createQkeyPlugin(options).attach(aedes). Each hook lives
// in its own file under hooks/; this file wires them to Aedes, each behind a guard: a hook that throws drops the
// message or the client in hand, is logged and counted, and never reaches Aedes' own code.
import type { Aedes, AuthenticateError, Client, Subscription } from 'aedes';
import { acknowledgeAfterStore } from './ack-after-store.js';
import { authenticate, ClosedDuringAuthentication, preConnect } from './hooks/connect.js';
import { DROPPED_PAYLOAD, PluginContext, type PluginCounters, type QkeyPluginOptions } from './hooks/context.js';
import { authorizeForward } from './hooks/forward.js';
import { keepQueuesOfClosedClients } from './closed-session-queue.js';
import { readDeviceQueuesWithKey } from './hooks/device-queue.js';
import { markRedeliveries } from './redelivery.js';
import { disconnectSubject, noteEnd, release } from './hooks/lifecycle.js';
import { authorizePublish, uplinkPublished } from './hooks/publish.js';
import { authorizeSubscribe, unsubscribed } from './hooks/subscribe.js';
import { isWillOf } from './hooks/will.js';
import { QueueBound } from './queue-bound.js';
import { DEFAULT_ROTATION } from './session-keys.js';
import { DEFAULT_TOPICS, type Principal } from './topic-policy.js';

export { APP_CLIENT_ID_SEPARATOR } from './hooks/connect.js';
export type {
  ConnectAttempt,
  DownlinkOutcome,
  HookName,
  PluginCounters,
  PluginEvents,
  QkeyPluginOptions,
  RejectReason,
  UplinkOutcome,
} from './hooks/context.js';

export class QkeyPlugin {
  private readonly ctx: PluginContext;
  /** The bound on each persistent session's queue; /metrics reads its counters. */
  readonly queues: QueueBound;

  constructor(options: QkeyPluginOptions) {
    this.ctx = new PluginContext(options, { topics: DEFAULT_TOPICS, rotation: DEFAULT_ROTATION });
    this.queues = new QueueBound({
      maxMessages: options.maxQueuedMessages,
      maxBytes: options.maxQueuedBytes,
      log: options.log,
    });
    options.tokens.onRevoked((subject) => this.guarded('lifecycle', null, () => disconnectSubject(this.ctx, subject)));
  }

  /**
   * Installs the hooks on an Aedes instance, makes its PUBACKs wait for the store, bounds its persistent sessions'
   * queues, and follows the end of each connection to release its session.
   */
  attach(aedes: Aedes): void {
    const ctx = this.ctx;
    aedes.preConnect = (client, packet, cb) => {
      const err = this.guarded('preConnect', client, () => preConnect(ctx, client, packet));
      cb(err ?? null, !err);
    };
    aedes.authenticate = (client, username, password, cb) => {
      authenticate(ctx, client, username, password)
        .then(
          () => this.connected(client, cb),
          (err: unknown) => this.refused(client, username, err, cb),
        )
        // What throws from here on ran in Aedes after the answer: logged and counted, never an unhandled rejection.
        .catch((err: unknown) => ctx.hookFailed('authenticate', client, err));
    };
    aedes.authorizePublish = (client, packet, cb) => authorizePublish(ctx, client, packet, cb);
    // A QoS 1 PUBLISH is acknowledged once stored, not before (Aedes' own order): wraps the hook just installed.
    acknowledgeAfterStore(aedes, {
      publishesNothing: (p) => p.payload === DROPPED_PAYLOAD,
      isWill: isWillOf,
      settled: uplinkPublished,
    });
    aedes.authorizeSubscribe = (client, sub, cb) => {
      let granted: Subscription | null = null;
      this.guarded('subscribe', client, () => (granted = authorizeSubscribe(ctx, client, sub)));
      cb(null, granted);
    };
    aedes.authorizeForward = (client, packet) => {
      try {
        return authorizeForward(ctx, client, packet);
      } catch (err) {
        ctx.hookFailed('forward', client, err);
        return null;
      }
    };
    aedes.on('unsubscribe', (filters, client) =>
      this.guarded('subscribe', client, () => unsubscribed(ctx, client, filters)),
    );
    aedes.on('clientError', (client, err) => noteEnd(ctx, client, `error: ${err?.message}`));
    aedes.on('keepaliveTimeout', (client) => noteEnd(ctx, client, 'keepalive timeout'));
    // [MQTT-3.3.1-1] a PUBLISH re-sent from a persistent session's queue carries DUP 1.
    markRedeliveries((aedes as unknown as { persistence: Parameters<typeof markRedeliveries>[0] }).persistence);
    // A device's stored queue is read with its first downlink key in hand.
    readDeviceQueuesWithKey(
      ctx,
      (aedes as unknown as { persistence: Parameters<typeof readDeviceQueuesWithKey>[1] }).persistence,
    );
    // It wraps the persistence and the forward hook installed above.
    if (!ctx.o.queuesBoundedByPersistence) this.queues.attach(aedes);
    // A closed connection's stored queue, still being read by Aedes, is left as it is for the next connection; over
    // the queue bound, so that it counts what the store holds.
    keepQueuesOfClosedClients(
      (aedes as unknown as { persistence: Parameters<typeof keepQueuesOfClosedClients>[0] }).persistence,
    );
    // Outermost: an application's stored-queue reader goes on once the forward hook has had its message, whatever
    // the layers above made of it (app-hold.ts).
    const forward = aedes.authorizeForward;
    aedes.authorizeForward = (client, packet) => {
      try {
        return forward.call(aedes, client, packet);
      } finally {
        ctx.states.get(client)?.appHold?.forwarded();
      }
    };
  }

  principalOf(client: Client): Principal | undefined {
    return this.ctx.states.get(client)?.principal;
  }

  /** Authenticated clients whose state the plugin holds. */
  get sessions(): number {
    return this.ctx.states.size;
  }

  /** Counters of the per-message paths, read by /metrics. */
  get counters(): Readonly<PluginCounters> {
    return this.ctx.counters;
  }

  async close(): Promise<void> {
    await Promise.all([...this.ctx.states.keys()].map((c) => release(this.ctx, c)));
    await this.ctx.uplinks.close();
    await this.ctx.keys.close(); // reports still waiting for a retry are sent once more
    await this.ctx.keyDelivery.close(); // the last retirements are sent and answered
  }

  private connected(client: Client, cb: (err: AuthenticateError | null, success: boolean | null) => void): void {
    const state = this.ctx.states.get(client);
    if (state) {
      const taken = (client as unknown as { broker: { clients: Record<string, Client> } }).broker.clients[client.id];
      if (taken && taken !== client) noteEnd(this.ctx, taken, 'taken over by a new connection [MQTT-3.1.4-2]');
      this.ctx.logConnection(
        { client: client.id, role: state.principal.role, principal: state.principal.id, source: state.source },
        'client connected',
      );
    }
    cb(null, true);
  }

  private refused(
    client: Client,
    username: string | undefined,
    err: unknown,
    cb: (err: AuthenticateError | null, success: boolean | null) => void,
  ): void {
    if (err instanceof ClosedDuringAuthentication) {
      this.ctx.logConnection({ client: client.id, source: this.ctx.sourceOf(client) }, err.message);
      return cb(err as AuthenticateError, false);
    }
    let refusal = err as AuthenticateError;
    if (!(err instanceof Error) || refusal.returnCode === undefined) {
      // Not a refusal but a failure of the hook itself: refused as the server being unavailable.
      refusal = this.ctx.hookFailed('authenticate', client, err) as AuthenticateError;
      refusal.returnCode = 3;
    }
    this.ctx.o.events?.authFailed?.(refusal.returnCode ?? 5, refusal.message, {
      clientId: client.id,
      username,
      source: this.ctx.sourceOf(client),
    });
    cb(refusal, false);
  }

  /** Runs one step of a hook; a throw is logged and counted and comes back as the error. */
  private guarded(hook: 'preConnect' | 'subscribe' | 'lifecycle', client: Client | null, step: () => unknown) {
    try {
      step();
      return undefined;
    } catch (err) {
      return this.ctx.hookFailed(hook, client, err);
    }
  }
}

export function createQkeyPlugin(options: QkeyPluginOptions): QkeyPlugin {
  return new QkeyPlugin(options);
}
