// The end of a connection: why it ended, the will handed over first, then the client's state and session keys
// released; and a revoked subject's connections closed by the broker.
import type { Client } from 'aedes';
import type { ClientState, PluginContext } from './context.js';

/** Longest wait for Aedes to hand over the will of a closed connection before its keys are released anyway. */
const WILL_HANDOVER_MS = 10_000;

/**
 * Releases the client's state once its connection has closed. Aedes asks for the will (authorizePublish) while it
 * closes the client, which may be after the socket closed (an error or a reset destroys it first): then the release
 * waits for the will hook. Only a clean DISCONNECT [MQTT-3.14.4-3] or no will at all releases at once.
 */
export function watchConnection(ctx: PluginContext, client: Client): void {
  client.conn.once('close', () => {
    const state = ctx.states.get(client);
    if (!state) return;
    state.appHold?.close(); // nothing held goes out on a closed connection; the store keeps it (app-hold.ts)
    if (willStillDue(client)) {
      state.releaseAfterWill = true;
      state.handoverTimer = setTimeout(() => void release(ctx, client), WILL_HANDOVER_MS).unref();
      return;
    }
    void release(ctx, client);
  });
}

function willStillDue(client: Client): boolean {
  const c = client as unknown as { will?: unknown; _disconnected?: boolean };
  return Boolean(c.will) && !c._disconnected;
}

/** Notes why the broker or the network ended this connection, for the disconnect log line. */
export function noteEnd(ctx: PluginContext, client: Client, reason: string): void {
  const state = ctx.states.get(client);
  if (state && state.endReason === undefined) state.endReason = reason;
}

export async function release(ctx: PluginContext, client: Client): Promise<void> {
  const state = ctx.states.get(client);
  if (!state) return;
  ctx.states.delete(client);
  state.released = true;
  clearTimeout(state.handoverTimer);
  logDisconnect(ctx, client, state);
  await state.willSettled; // never rejects (will.ts)
  if (state.will && cleanlyDisconnected(client)) {
    // [MQTT-3.14.4-3] the will is discarded; a replay of this CONNECT must not bring it back.
    const key = state.keys?.readyUplinkKey(state.will.parsed.keyIndex);
    if (key) key.willSpent = true;
  }
  state.unpinWill?.();
  state.appHold?.close();
  state.app?.destroy();
  await state.keys?.close(); // never rejects (session-keys.ts)
}

function cleanlyDisconnected(client: Client): boolean {
  return (client as unknown as { _disconnected?: boolean })._disconnected === true;
}

function logDisconnect(ctx: PluginContext, client: Client, state: ClientState): void {
  const clean = cleanlyDisconnected(client);
  ctx.logConnection(
    {
      client: client.id,
      role: state.principal.role,
      principal: state.principal.id,
      source: state.source,
      reason: clean ? 'disconnect' : (state.endReason ?? 'connection closed'),
    },
    'client disconnected',
  );
}

/** Revoked at the key service: close that subject's connections now; their wills are published [MQTT-3.1.2-8]. */
export function disconnectSubject(ctx: PluginContext, subject: string): void {
  for (const [client, state] of ctx.states) {
    if (state.principal.id === subject) {
      ctx.o.log?.info({ client: client.id, subject }, 'revoked: disconnecting');
      noteEnd(ctx, client, 'revoked');
      client.close();
    }
  }
}
