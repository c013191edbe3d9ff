// The QKey plugin for Aedes: token authentication, topic ACLs, uplink envelope opening and per-device downlink
// sealing, as Aedes hooks. Usable on any Aedes instance: createQkeyPlugin(options).attach(aedes). Each hook lives
// in its own file under hooks/; this file only wires them to Aedes.
import type { Aedes, AuthenticateError, Client } from 'aedes';
import { authenticate, preConnect } from './hooks/connect.js';
import { PluginContext, type QkeyPluginOptions } from './hooks/context.js';
import { authorizeForward } from './hooks/forward.js';
import { disconnectSubject, release } from './hooks/lifecycle.js';
import { authorizePublish } from './hooks/publish.js';
import { authorizeSubscribe } from './hooks/subscribe.js';
import { DEFAULT_ROTATION } from './session-keys.js';
import { DEFAULT_TOPICS, type Principal } from './topic-policy.js';

export type { PluginEvents, QkeyPluginOptions, RejectReason } from './hooks/context.js';

export class QkeyPlugin {
  private readonly ctx: PluginContext;

  constructor(options: QkeyPluginOptions) {
    this.ctx = new PluginContext(options, { topics: DEFAULT_TOPICS, rotation: DEFAULT_ROTATION });
    options.tokens.onRevoked((subject) => disconnectSubject(this.ctx, subject));
  }

  /** Installs the hooks on an Aedes instance and follows client disconnects to release session keys. */
  attach(aedes: Aedes): void {
    const ctx = this.ctx;
    aedes.preConnect = (client, packet, cb) => {
      preConnect(ctx, client, packet);
      cb(null, true);
    };
    aedes.authenticate = (client, username, password, cb) => {
      authenticate(ctx, client, username, password).then(
        () => cb(null, true),
        (err: AuthenticateError) => {
          ctx.o.events?.authFailed?.(err.returnCode ?? 5, err.message);
          cb(err, false);
        },
      );
    };
    aedes.authorizePublish = (client, packet, cb) => authorizePublish(ctx, client, packet, cb);
    aedes.authorizeSubscribe = (client, sub, cb) => cb(null, authorizeSubscribe(ctx, client, sub));
    aedes.authorizeForward = (client, packet) => authorizeForward(ctx, client, packet);
    aedes.on('clientDisconnect', (client) => void release(ctx, client));
    aedes.on('clientError', (client) => void release(ctx, client));
  }

  principalOf(client: Client): Principal | undefined {
    return this.ctx.states.get(client)?.principal;
  }

  async close(): Promise<void> {
    await Promise.all([...this.ctx.states.keys()].map((c) => release(this.ctx, c)));
  }
}

export function createQkeyPlugin(options: QkeyPluginOptions): QkeyPlugin {
  return new QkeyPlugin(options);
}
