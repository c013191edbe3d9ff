// The end of a connection: a client's state and session keys released, and a revoked subject's connections closed.
import type { Client } from 'aedes';
import type { PluginContext } from './context.js';

export async function release(ctx: PluginContext, client: Client): Promise<void> {
  const state = ctx.states.get(client);
  if (!state) return;
  ctx.states.delete(client);
  await state.keys?.close();
}

/** Revoked at the key service: close that subject's connections now. */
export function disconnectSubject(ctx: PluginContext, subject: string): void {
  for (const [client, state] of ctx.states) {
    if (state.principal.id === subject) {
      ctx.o.log?.info({ client: client.id, subject }, 'revoked: disconnecting');
      client.close();
      void release(ctx, client);
    }
  }
}
