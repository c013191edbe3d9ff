// The forward hook: read permission checked again on every delivery, and for a device subscriber the plaintext
// sealed under its session's downlink key. Synchronous, as Aedes calls it; whatever fails drops this one delivery
// (live, retained or queued alike), is counted and logged, and never reaches Aedes' delivery code.
import type { AedesPublishPacket, Client } from 'aedes';
import { isProtocolError } from '../../protocol/index.js';
import type { DeviceSessionKeys } from '../session-keys.js';
import { isStatusTopicOf, mayReceive, type Principal } from '../topic-policy.js';
import { type ClientState, DROPPED_PAYLOAD, type PluginContext } from './context.js';
import { sealForApp } from './app-session.js';
import { gateDeliveries } from './delivery-gate.js';
import { deliveryPolicy, endToEndOf } from './policy.js';

/**
 * docs/PROTOCOL.md §9.2: a device session claims no downlink key until its first command is sealed. Aedes'
 * authorizeForward cannot wait for that claim, so the device client's two delivery functions (live, retained and
 * queued deliveries all pass through them) hold back, in order, what will be sealed until the session has its key,
 * and what needs no key behind it (none may overtake: Aedes drops a delivery older than one it already sent); the
 * forward hook then seals as usual. A delivery held back when the connection ends is released undelivered: a
 * persistent session's QoS 1/2 copy was never touched and goes out on the next connection.
 */
export function holdDeliveriesForKey(
  ctx: PluginContext,
  client: Client,
  principal: Principal,
  keys: DeviceSessionKeys,
) {
  gateDeliveries(client, (packet, deliver, cb) => {
    const release = () => setImmediate(cb);
    if (!sealedFor(ctx, principal, packet)) return keys.afterWaiting(() => deliver(packet, cb), release);
    keys.whenSealable(() => deliver(packet, cb), release);
  });
}

/**
 * Will this delivery be sealed for the device? (Its status topic, empty payloads and an end-to-end topic's
 * envelopes, sealed by the application, go out as they are: no downlink key is claimed for them.)
 */
export function sealedFor(ctx: PluginContext, principal: Principal, packet: AedesPublishPacket): boolean {
  return (
    (packet.payload as Buffer).length > 0 &&
    mayReceive(principal, packet.topic, ctx.topics) &&
    !isStatusTopicOf(ctx.topics, principal.id, packet.topic) &&
    endToEndOf(ctx, packet.topic) === undefined
  );
}

export function authorizeForward(
  ctx: PluginContext,
  client: Client,
  packet: AedesPublishPacket,
): AedesPublishPacket | null {
  if (packet.payload === DROPPED_PAYLOAD) return null; // acknowledged, passed on to no one (publish.ts)
  const state = ctx.states.get(client);
  // Read permission again on every delivery: a negated filter of a persistent session may still be stored.
  if (!state || !mayReceive(state.principal, packet.topic, ctx.topics)) return null;
  const policy = deliveryPolicy(ctx, client, state, packet);
  if (policy !== 'as-usual') return policy === 'pass' ? packet : null;
  if (state.principal.role !== 'device') return state.app?.active ? sealForApp(ctx, client, state, packet) : packet;
  // §9.4: the broker's status notices to the device are plaintext (a reason, never data).
  if (isStatusTopicOf(ctx.topics, state.principal.id, packet.topic)) return packet;
  try {
    return sealFor(ctx, state, packet);
  } catch (err) {
    return dropped(ctx, client, packet, err);
  }
}

/**
 * Seals for this one device subscriber by assigning a new payload to this same packet. What reaches this hook is
 * always the plaintext: the packet is this delivery's own copy (Aedes makes one per subscriber, live, retained or
 * read from the session's stored queue), and the persistence stores a message when it is published, before any
 * delivery, and never takes a payload from a delivered copy (outgoingUpdate records the packet identifier only).
 * So the envelope exists only on the wire, a redelivery after a reconnect or a restart is sealed once, under the
 * new session's key, and any persistence that serialises packets works alike.
 */
function sealFor(ctx: PluginContext, state: ClientState, packet: AedesPublishPacket): AedesPublishPacket | null {
  const plaintext = packet.payload as Buffer;
  if (plaintext.length === 0) return packet;
  const sealed = state.keys!.sealDownlink(plaintext, packet.topic, ctx.maxDownlinkPayload);
  if (!sealed) {
    ctx.o.events?.downlink?.('dropped_no_key');
    return null;
  }
  const out = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  packet.payload = out;
  ctx.counters.downlinkBytes += out.length;
  // A packet identifier before delivery: Aedes read this packet from the session's stored queue (connect.js
  // emptyQueue); a live delivery gets its identifier after this hook.
  ctx.o.events?.downlink?.(packet.messageId === undefined ? 'sealed' : 'resealed');
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
