// The forward hook: read permission checked again on every delivery, and for a device subscriber the plaintext
// sealed under its session's downlink key. Synchronous, as Aedes calls it.
import type { AedesPublishPacket, Client } from 'aedes';
import { mayReceive } from '../topic-policy.js';
import type { PluginContext } from './context.js';

/** Seals for this one device subscriber by assigning a new payload to this same packet. */
export function authorizeForward(
  ctx: PluginContext,
  client: Client,
  packet: AedesPublishPacket,
): AedesPublishPacket | null {
  const state = ctx.states.get(client);
  // Read permission again on every delivery: a negated filter of a persistent session may still be stored.
  if (!state || !mayReceive(state.principal, packet.topic, ctx.topics)) return null;
  if (state.principal.role !== 'device') return packet;
  let plaintext = packet.payload as Buffer;
  const original = ctx.plaintextOf.get(plaintext);
  if (original) plaintext = original;
  if (plaintext.length === 0) {
    packet.payload = plaintext;
    return packet;
  }
  const sealed = state.keys!.sealDownlink(plaintext, packet.topic);
  if (!sealed) {
    ctx.o.events?.downlink?.('dropped_no_key');
    return null;
  }
  const out = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  ctx.plaintextOf.set(out, plaintext);
  packet.payload = out;
  ctx.o.events?.downlink?.(original ? 'resealed' : 'sealed');
  return packet;
}
