// The SUBSCRIBE hook: each requested filter must lie inside what the principal may read; otherwise SUBACK 0x80.
import type { Client, Subscription } from 'aedes';
import { maySubscribe } from '../topic-policy.js';
import type { PluginContext } from './context.js';

export function authorizeSubscribe(ctx: PluginContext, client: Client, sub: Subscription): Subscription | null {
  const state = ctx.states.get(client);
  if (!state || !maySubscribe(state.principal, sub.topic, ctx.topics)) return null; // SUBACK 0x80
  return sub;
}
