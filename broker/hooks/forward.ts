// The forward hook: read permission checked again on every delivery, and for a device subscriber the plaintext
// sealed under its session's downlink key. Synchronous, as Aedes calls it; whatever fails drops this one delivery
// (live, retained or queued alike), is counted and logged, and never reaches Aedes' delivery code.
import type { AedesPublishPacket, Client } from 'aedes';
import { isProtocolError } from '../../protocol/index.js';
import { mayReceive } from '../topic-policy.js';
import type { ClientState, PluginContext } from './context.js';

export function authorizeForward(
  ctx: PluginContext,
  client: Client,
  packet: AedesPublishPacket,
): AedesPublishPacket | null {
  const state = ctx.states.get(client);
  // Read permission again on every delivery: a negated filter of a persistent session may still be stored.
  if (!state || !mayReceive(state.principal, packet.topic, ctx.topics)) return null;
  if (state.principal.role !== 'device') return packet;
  try {
    return sealFor(ctx, state, packet);
  } catch (err) {
    return dropped(ctx, client, packet, err);
  }
}

/** Seals for this one device subscriber by assigning a new payload to this same packet. */
function sealFor(ctx: PluginContext, state: ClientState, packet: AedesPublishPacket): AedesPublishPacket | null {
  let plaintext = packet.payload as Buffer;
  const original = ctx.plaintextOf.get(plaintext);
  if (original) plaintext = original;
  if (plaintext.length === 0) {
    packet.payload = plaintext;
    return packet;
  }
  const sealed = state.keys!.sealDownlink(plaintext, packet.topic, ctx.maxDownlinkPayload);
  if (!sealed) {
    ctx.o.events?.downlink?.('dropped_no_key');
    return null;
  }
  const out = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  ctx.plaintextOf.set(out, plaintext);
  packet.payload = out;
  ctx.counters.downlinkBytes += out.length;
  ctx.o.events?.downlink?.(original ? 'resealed' : 'sealed');
  return packet;
}

function dropped(ctx: PluginContext, client: Client, packet: AedesPublishPacket, err: unknown): null {
  if (isProtocolError(err) && err.code === 'PROTO_ERR_TOO_LARGE') {
    ctx.o.events?.downlink?.('dropped_too_large');
    ctx.o.log?.warn({ client: client.id, topic: packet.topic, reason: err.code }, 'delivery dropped');
  } else {
    ctx.o.events?.downlink?.('dropped_error');
    ctx.hookFailed('forward', client, err);
  }
  return null;
}
