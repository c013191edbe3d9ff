// Application sessions at the broker (docs/PROTOCOL.md §22.6): the app's announcement of a session key (claimed from
// the key service as the other SAE), its publishes opened, and deliveries to it sealed, under that key.
import type { AedesPublishPacket, Client, PublishPacket } from 'aedes';
import mqttPacket from 'mqtt-packet';
import { claimAppKey } from '../../kms-api/app-session-client.js';
import { KmsHttpError } from '../../kms-api/client.js';
import { APP_SESSION_TOPIC, isProtocolError, MAX_PAYLOAD_LIMIT, rotationNotice } from '../../protocol/index.js';

export { APP_SESSION_TOPIC } from '../../protocol/index.js';
import { AppSessionError, AppSessionKeys } from '../app-session-keys.js';
import type { PolicyRule } from '../policy/evaluate.js';
import { type ClientState, DROPPED_PAYLOAD, type PluginContext, type RejectReason } from './context.js';
import { envelopePolicy } from './policy.js';

/** The announcement is `{"key_ID": uuid, "key_index": n}`: a few dozen bytes. */
const MAX_ANNOUNCEMENT = 256;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Why an application's message was refused, for publish.ts to refuse it as it refuses any other. */
export interface AppRefusal {
  reason: RejectReason;
  detail: string;
}

function announcement(payload: Buffer): { keyId: string; keyIndex: number } | undefined {
  if (payload.length > MAX_ANNOUNCEMENT) return undefined;
  let json: unknown;
  try {
    json = JSON.parse(payload.toString('utf8'));
  } catch {
    return undefined;
  }
  const { key_ID: keyId, key_index: keyIndex } = (json ?? {}) as { key_ID?: unknown; key_index?: unknown };
  if (typeof keyId !== 'string' || !UUID.test(keyId)) return undefined;
  if (typeof keyIndex !== 'number' || !Number.isInteger(keyIndex) || keyIndex < 0 || keyIndex > 0xffffffff)
    return undefined;
  return { keyId, keyIndex };
}

/**
 * Claims the announced key (it must have been issued to this app for this broker, and never claimed) and installs
 * it as the session's newest generation. The announcement itself is acknowledged and delivered to no one.
 */
export async function announceAppSession(
  ctx: PluginContext,
  state: ClientState,
  packet: PublishPacket,
): Promise<AppRefusal | null> {
  const a = announcement(packet.payload as Buffer);
  if (!a) return { reason: 'malformed', detail: 'session announcement must be {"key_ID": uuid, "key_index": n}' };
  const appId = state.principal.id;
  let key: Buffer;
  try {
    const { keys } = await claimAppKey(ctx.o.kms, appId, a.keyId);
    key = Buffer.from(keys[0]!.key, 'base64');
  } catch (err) {
    if (err instanceof KmsHttpError && err.status < 500) return { reason: 'foreign_key', detail: err.code };
    return { reason: 'kms_unavailable', detail: (err as Error).message };
  }
  try {
    // A connection that closed during the claim installs nothing: its keys were destroyed, and this one is wiped below.
    if (!state.released) {
      state.app ??= new AppSessionKeys(appId, ctx.rotation);
      state.app.install(a.keyIndex, key);
      state.appHold?.open(); // §22.8: what waited for the key goes out now, sealed (app-hold.ts, made at CONNECT)
    }
  } catch (err) {
    if (err instanceof AppSessionError) return { reason: err.reason, detail: err.message };
    throw err;
  } finally {
    key.fill(0);
  }
  packet.retain = false;
  packet.payload = DROPPED_PAYLOAD;
  return null;
}

/** Opens an application's envelope in place (its plaintext goes on), checked against the rule if it names one. */
export function openAppPublish(
  ctx: PluginContext,
  state: ClientState,
  packet: PublishPacket,
  rule: PolicyRule | undefined,
): AppRefusal | { policy: NonNullable<ReturnType<typeof envelopePolicy>> } | null {
  const payload = packet.payload as Buffer;
  if (payload.length === 0) return null; // MQTT's retained-message delete marker passes
  let plaintext: Uint8Array;
  try {
    plaintext = state.app!.open(payload, packet.topic, ctx.parseOptions.maxPayload);
  } catch (err) {
    if (err instanceof AppSessionError) return { reason: err.reason, detail: err.message };
    if (isProtocolError(err)) {
      const reason: RejectReason =
        err.code === 'PROTO_ERR_REPLAY' ? 'replay' : err.code === 'PROTO_ERR_TAG' ? 'forged' : 'malformed';
      return { reason, detail: err.code };
    }
    throw err;
  }
  const violation = rule && envelopePolicy(rule, plaintext.length, payload[1]!);
  if (violation) return { policy: violation };
  packet.payload = Buffer.from(plaintext.buffer, plaintext.byteOffset, plaintext.byteLength);
  return null;
}

/**
 * Seals one delivery for an application holding a session key; null when its key is spent, which the hold
 * (app-hold.ts) keeps from happening to a connection that can still rotate: it holds such deliveries first, and a
 * live one is classified and sealed in one synchronous step. A stored message can still find the key used up by
 * then (the app's own publishes, or the key's age, between the queue reader's look and this seal): the hold defers
 * it to the next key. Anything else unsealable is dropped and counted.
 */
export function sealForApp(
  ctx: PluginContext,
  client: Client,
  state: ClientState,
  packet: AedesPublishPacket,
): AedesPublishPacket | null {
  // Every delivery reaches the forward hook as plaintext: nothing sealed is stored (forward.ts).
  const plaintext = packet.payload as Buffer;
  if (plaintext.length === 0) return packet;
  const sealed = state.app!.seal(plaintext, packet.topic, MAX_PAYLOAD_LIMIT);
  tellAppToRotate(ctx, client, state, sealed ? 0 : plaintext.length);
  if (!sealed) {
    if (!state.appHold?.defer(packet)) ctx.o.events?.downlink?.('dropped_no_key');
    return null;
  }
  const out = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  packet.payload = out;
  return packet;
}

/**
 * docs/PROTOCOL.md §22.6, rotation notice: once per generation, when it has used half of a rotation limit (or none
 * is left for the `next` delivery of that many plaintext bytes), this connection alone is sent `{"rotate": n}` on the session topic, QoS 0,
 * plaintext (it names a key index, nothing secret). Written to the connection directly: not routed, so no other
 * client can receive it, and no subscription is needed. Marked told only once written: a connection still sending
 * its stored queue after CONNACK (Aedes' `connecting`) is told too; one already closing is not, and a later look tells.
 */
export function tellAppToRotate(ctx: PluginContext, client: Client, state: ClientState, next = 0): void {
  const index = state.app?.rotationDue(next);
  if (index === undefined) return;
  const c = client as unknown as {
    conn: NodeJS.WritableStream & { writable?: boolean };
    connected: boolean;
    connecting: boolean;
    closed: boolean;
  };
  if (!(c.connected || c.connecting) || c.closed || c.conn.writable === false) return;
  const n = rotationNotice(index);
  const payload = Buffer.from(n.buffer, n.byteOffset, n.byteLength);
  mqttPacket.writeToStream(
    { cmd: 'publish', topic: APP_SESSION_TOPIC, payload, qos: 0, retain: false, dup: false },
    c.conn,
  );
  state.app!.told(index);
  ctx.o.events?.appRotationNotice?.();
  ctx.o.log?.debug({ client: client.id, keyIndex: index }, 'application told to rotate');
}
