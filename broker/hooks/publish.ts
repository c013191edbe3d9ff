// The PUBLISH hook: topic permission, then for a device the envelope opened under its uplink key, so that what is
// retained, queued and forwarded is plaintext. Any refusal closes the connection and is counted by reason.
import type { Client, PublishPacket } from 'aedes';
import {
  type EnvelopeKey,
  isProtocolError,
  openEnvelope,
  type ParsedEnvelope,
  parseEnvelope,
  type ProtocolErrorCode,
  type ReplayWindow,
} from '../../protocol/index.js';
import { UplinkKeyError } from '../session-keys.js';
import { mayPublish } from '../topic-policy.js';
import type { PluginContext, PublishCallback, RejectReason } from './context.js';

const PROTOCOL_REASONS: Partial<Record<ProtocolErrorCode, RejectReason>> = {
  PROTO_ERR_TRUNCATED: 'malformed',
  PROTO_ERR_VERSION: 'malformed',
  PROTO_ERR_SUITE: 'malformed',
  PROTO_ERR_TOO_LARGE: 'too_large',
  PROTO_ERR_REPLAY: 'replay',
  PROTO_ERR_TAG: 'forged',
};

/**
 * Opens the envelope without waiting when the session already holds its key (the common case), and after the
 * claim otherwise. Runs for every uplink message: no closures are allocated on the common path.
 */
export function authorizePublish(
  ctx: PluginContext,
  client: Client | null,
  packet: PublishPacket,
  callback: PublishCallback,
): void {
  const state = client ? ctx.states.get(client) : undefined;
  if (!client || !state) return ctx.callBack(callback, new Error('not authorized: unauthenticated publish'));
  if (!mayPublish(state.principal, packet.topic, ctx.topics))
    return refuse(ctx, client, packet, callback, 'acl', 'topic not permitted');
  if (state.principal.role !== 'device') return ctx.callBack(callback, null);
  const payload = packet.payload as Buffer;
  // The empty payload passes: MQTT's retained-message delete marker.
  if (payload.length === 0) return ctx.callBack(callback, null);
  let parsed: ParsedEnvelope;
  try {
    parsed = parseEnvelope(payload, ctx.parseOptions);
  } catch (err) {
    if (!isProtocolError(err)) return ctx.callBack(callback, err as Error);
    const reason = err.code === 'PROTO_ERR_TRUNCATED' ? 'plaintext' : (PROTOCOL_REASONS[err.code] ?? 'malformed');
    return refuse(ctx, client, packet, callback, reason, err.code);
  }
  const keys = state.keys!;
  const ready = keys.readyUplinkKey(parsed.keyIndex);
  if (ready) return openUplink(ctx, client, state.principal.id, packet, parsed, ready, callback);
  keys.uplinkKey(parsed.keyIndex).then(
    (uplink) => openUplink(ctx, client, state.principal.id, packet, parsed, uplink, callback),
    (err: unknown) => {
      if (err instanceof UplinkKeyError) refuse(ctx, client, packet, callback, err.reason, err.message);
      else ctx.callBack(callback, err as Error);
    },
  );
}

function openUplink(
  ctx: PluginContext,
  client: Client,
  deviceId: string,
  packet: PublishPacket,
  parsed: ParsedEnvelope,
  uplink: { key: EnvelopeKey; replay: ReplayWindow },
  callback: PublishCallback,
): void {
  let opened;
  try {
    opened = openEnvelope(parsed, {
      key: uplink.key,
      deviceId,
      topic: packet.topic,
      direction: 'up',
      replay: uplink.replay,
    });
  } catch (err) {
    if (!isProtocolError(err)) return ctx.callBack(callback, err as Error);
    return refuse(ctx, client, packet, callback, PROTOCOL_REASONS[err.code] ?? 'forged', err.code);
  }
  // What is retained, queued and forwarded from here on is the plaintext: applications receive plaintext.
  packet.payload = Buffer.from(opened.payload.buffer, opened.payload.byteOffset, opened.payload.byteLength);
  ctx.callBack(callback, null);
}

function refuse(
  ctx: PluginContext,
  client: Client,
  packet: PublishPacket,
  callback: PublishCallback,
  reason: RejectReason,
  detail: string,
): void {
  ctx.o.events?.rejected?.(reason, client.id, packet.topic);
  ctx.o.log?.warn({ client: client.id, topic: packet.topic, reason }, 'publish refused');
  ctx.callBack(callback, new Error(`publish refused (${reason}): ${detail}`));
}
