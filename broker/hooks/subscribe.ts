// The SUBSCRIBE hook: each requested filter must lie inside what the principal may read, and the client may hold
// at most maxSubscriptionsPerClient filters; otherwise SUBACK 0x80 for that filter [MQTT-3.9.3-2].
import type { Client, Subscription } from 'aedes';
import { maySubscribe } from '../topic-policy.js';
import type { ClientState, PluginContext } from './context.js';

export function authorizeSubscribe(ctx: PluginContext, client: Client, sub: Subscription): Subscription | null {
  const state = ctx.states.get(client);
  if (!state) return null;
  if (!maySubscribe(state.principal, sub.topic, ctx.topics)) return refuse(ctx, client, sub, 'acl');
  if (!holdSubscription(ctx, state, sub.topic)) return refuse(ctx, client, sub, 'limit');
  return sub;
}

/** Counts the filter against the client's bound; a filter it already holds is replaced, not added. */
function holdSubscription(ctx: PluginContext, state: ClientState, filter: string): boolean {
  if (state.subscriptions.has(filter)) return true;
  if (state.subscriptions.size >= ctx.maxSubscriptions) return false;
  state.subscriptions.add(filter);
  return true;
}

/** UNSUBSCRIBE (and the unsubscribes of a closing client) free their filters' places. */
export function unsubscribed(ctx: PluginContext, client: Client, filters: readonly string[]): void {
  const state = ctx.states.get(client);
  if (state) for (const f of filters) state.subscriptions.delete(f);
}

function refuse(ctx: PluginContext, client: Client, sub: Subscription, reason: 'acl' | 'limit'): null {
  ctx.o.events?.subscribeRefused?.(reason);
  if (reason === 'limit') {
    ctx.o.log?.warn(
      { client: client.id, filter: sub.topic, limit: ctx.maxSubscriptions },
      'subscribe refused: too many subscriptions',
    );
  }
  return null; // SUBACK 0x80
}
