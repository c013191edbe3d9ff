// The PUBLISH hook: topic permission; for an application the size a receiving device can take; for a device the
// envelope opened under its uplink key, so that what is retained, queued and forwarded is plaintext. Any refusal
// closes the connection and is counted by reason; a hook failure drops the message the same way.
import type { Client, PublishPacket } from 'aedes';
import {
  DEFAULT_MAX_PAYLOAD,
  isProtocolError,
  openEnvelope,
  type ParsedEnvelope,
  parseEnvelope,
  type ProtocolErrorCode,
} from '../../protocol/index.js';
import { LOCAL_EMIT, type LocalEmit } from '../mq-emitter.js';
import { type HeldUplinkKey, UplinkKeyError } from '../uplink-keys.js';
import { deviceFilter, downlinkOwner, mayPublish } from '../topic-policy.js';
import {
  type ClientState,
  DROPPED_PAYLOAD,
  type PluginContext,
  type PublishCallback,
  type RejectReason,
} from './context.js';
import { endToEndOf, type EndToEndTopic, envelopePolicy, publishPolicy } from './policy.js';
import { announceAppSession, APP_SESSION_TOPIC, openAppPublish, tellAppToRotate } from './app-session.js';
import { authorizeWill, isWillOf } from './will.js';
import type { PolicyViolation } from '../policy/evaluate.js';

const PROTOCOL_REASONS: Partial<Record<ProtocolErrorCode, RejectReason>> = {
  PROTO_ERR_TRUNCATED: 'malformed',
  PROTO_ERR_VERSION: 'malformed',
  PROTO_ERR_SUITE: 'malformed',
  PROTO_ERR_TOO_LARGE: 'too_large',
  PROTO_ERR_REPLAY: 'replay',
  PROTO_ERR_TAG: 'forged',
};

/** What the synchronous part decided: allow (null), refuse (an Error), or the answer once a key is claimed. */
type Verdict = Error | null | Promise<Error | null>;

/**
 * Opens the envelope without waiting when the session already holds its key (the common case), and after the
 * claim otherwise. Runs for every uplink message: no closures are allocated on the common path, except a QoS 1
 * message's store tracking (trackStore: one promise and its settle function). The callback is called outside the
 * guarded part: what Aedes does next on this stack is not this hook's failure.
 */
export function authorizePublish(
  ctx: PluginContext,
  client: Client | null,
  packet: PublishPacket,
  callback: PublishCallback,
): void {
  const state = client ? ctx.states.get(client) : undefined;
  if (!client || !state) return ctx.callBack(callback, new Error('not authorized: unauthenticated publish'));
  if (isWillOf(client, packet)) return authorizeWill(ctx, client, state, packet, callback);
  let verdict: Verdict;
  try {
    verdict = decide(ctx, client, state, packet);
  } catch (err) {
    verdict = failed(ctx, client, state, err);
  }
  if (verdict instanceof Promise) {
    verdict
      .then(
        (v) => ctx.callBack(callback, v),
        (err: unknown) => ctx.callBack(callback, failed(ctx, client, state, err)),
      )
      // Aedes' own work after the answer runs on this stack: a throw there must not become an unhandled rejection.
      .catch((err: unknown) => ctx.hookFailed('publish', client, err));
  } else ctx.callBack(callback, verdict);
}

function decide(ctx: PluginContext, client: Client, state: ClientState, packet: PublishPacket): Verdict {
  if (state.principal.role === 'app' && packet.topic === APP_SESSION_TOPIC)
    return announceAppSession(ctx, state, packet).then(
      (r) => r && refuse(ctx, client, state, packet, r.reason, r.detail),
    );
  if (!mayPublish(state.principal, packet.topic, ctx.topics))
    return refuse(ctx, client, state, packet, 'acl', 'topic not permitted');
  const policy = publishPolicy(ctx, state.principal, packet, state.app?.active === true);
  if ('violation' in policy) return refusePolicy(ctx, client, state, packet, policy.violation);
  const payload = packet.payload as Buffer;
  if (state.principal.role !== 'device') {
    // docs/PROTOCOL.md §22.6: once an application holds a session key, everything it publishes is sealed.
    const r = state.app?.active
      ? openAppPublish(ctx, state, packet, policy.take === 'open' ? policy.rule : undefined)
      : null;
    // §22.6: the notice goes with a key_spent refusal too, not only after an envelope the key opened.
    tellAppToRotate(ctx, client, state);
    if (r)
      return 'policy' in r
        ? refusePolicy(ctx, client, state, packet, r.policy)
        : refuse(ctx, client, state, packet, r.reason, r.detail);
    const e2e = endToEndOf(ctx, packet.topic);
    if (e2e) return checkEndToEndCommand(ctx, client, state, packet, e2e);
    return checkDownlinkSize(ctx, client, state, packet, (packet.payload as Buffer).length);
  }
  if (policy.take === 'pass') return checkPlaintextSize(ctx, client, state, packet, payload.length);
  // The empty payload passes: MQTT's retained-message delete marker.
  if (payload.length === 0) return null;
  let parsed: ParsedEnvelope;
  try {
    parsed = parseEnvelope(payload, ctx.parseOptions);
  } catch (err) {
    if (!isProtocolError(err)) throw err;
    const reason = err.code === 'PROTO_ERR_TRUNCATED' ? 'plaintext' : (PROTOCOL_REASONS[err.code] ?? 'malformed');
    // Not an envelope on an end-to-end topic: counted as a policy violation too (docs/PROTOCOL.md §23.3).
    if (policy.take === 'forward-sealed') ctx.o.events?.policy?.('publish', 'encryption');
    return refuse(ctx, client, state, packet, reason, err.code);
  }
  const violation = envelopePolicy(policy.rule, parsed.ciphertext.length, parsed.suite);
  if (violation) return refusePolicy(ctx, client, state, packet, violation, parsed.keyIndex);
  const keys = state.keys!;
  if (policy.take === 'forward-sealed') {
    // docs/PROTOCOL.md §23.3: an end-to-end envelope must not be under a key this broker holds (it could read it).
    if (keys.readyUplinkKey(parsed.keyIndex))
      return refusePolicy(ctx, client, state, packet, 'encryption', parsed.keyIndex);
    ctx.counters.uplink.forwarded++;
    return null; // forwarded as it came: its application claims the key and opens it
  }
  const ready = keys.readyUplinkKey(parsed.keyIndex);
  if (ready) return openUplink(ctx, client, state, packet, parsed, ready);
  // §9.1: the first envelope naming a key claims it, and is itself the proof that the device used that key.
  return keys.uplinkKey(parsed.keyIndex, { envelope: payload, topic: packet.topic, direction: 'up' }).then(
    (uplink) => openUplink(ctx, client, state, packet, parsed, uplink),
    (err: unknown) => {
      if (err instanceof UplinkKeyError)
        return refuse(ctx, client, state, packet, err.reason, err.message, parsed.keyIndex);
      throw err;
    },
  );
}

/**
 * docs/PROTOCOL.md §23.4: a command on an end-to-end topic comes from the one application its entry names, as an
 * envelope the application sealed under a downlink key it claimed; the broker checks the header (well-formed, the
 * entry's suites and size, what a device can take) and forwards it unopened. Anything else is refused and counted.
 */
function checkEndToEndCommand(
  ctx: PluginContext,
  client: Client,
  state: ClientState,
  packet: PublishPacket,
  e2e: EndToEndTopic,
): Verdict {
  if (state.principal.id !== e2e.app) return refusePolicy(ctx, client, state, packet, 'encryption');
  const payload = packet.payload as Buffer;
  if (payload.length === 0) return null; // MQTT's retained-message delete marker
  let parsed: ParsedEnvelope;
  try {
    parsed = parseEnvelope(payload, ctx.parseOptions);
  } catch (err) {
    if (!isProtocolError(err)) throw err;
    return refusePolicy(ctx, client, state, packet, 'encryption');
  }
  const violation = envelopePolicy(e2e.rule, parsed.ciphertext.length, parsed.suite);
  if (violation) return refusePolicy(ctx, client, state, packet, violation);
  return checkDownlinkSize(ctx, client, state, packet, parsed.ciphertext.length);
}

/**
 * An application's message into a device's downlink space is refused now if no device could take it: accepted, it
 * would be retained or queued only to fail when sealed for the device.
 */
function checkDownlinkSize(
  ctx: PluginContext,
  client: Client,
  state: ClientState,
  packet: PublishPacket,
  length: number,
): Verdict {
  if (length <= ctx.maxDownlinkPayload || downlinkOwner(ctx.topics, packet.topic) === undefined) return null;
  return refuse(ctx, client, state, packet, 'too_large', `${length} > ${ctx.maxDownlinkPayload} bytes`);
}

/** A device's plaintext publish (its policy allows one) within the broker's largest uplink payload. */
function checkPlaintextSize(
  ctx: PluginContext,
  client: Client,
  state: ClientState,
  packet: PublishPacket,
  length: number,
): Verdict {
  const max = ctx.parseOptions.maxPayload ?? DEFAULT_MAX_PAYLOAD;
  if (length <= max) return null;
  return refuse(ctx, client, state, packet, 'too_large', `${length} > ${max} bytes`);
}

/** Refused by the policy table: counted by the rule broken, then refused as any publish is. */
function refusePolicy(
  ctx: PluginContext,
  client: Client,
  state: ClientState,
  packet: PublishPacket,
  rule: PolicyViolation,
  keyIndex?: number,
): Error | Promise<Error> {
  ctx.o.events?.policy?.('publish', rule);
  return refuse(ctx, client, state, packet, 'policy', `policy: ${rule}`, keyIndex);
}

function openUplink(
  ctx: PluginContext,
  client: Client,
  state: ClientState,
  packet: PublishPacket,
  parsed: ParsedEnvelope,
  uplink: HeldUplinkKey,
): Verdict {
  if (retransmission(packet, parsed, uplink)) return duplicateOf(ctx, client, state, packet, parsed, uplink);
  let opened;
  try {
    opened = openEnvelope(parsed, {
      key: uplink.key,
      deviceId: state.principal.id,
      topic: packet.topic,
      direction: 'up',
      replay: uplink.replay,
    });
  } catch (err) {
    if (!isProtocolError(err)) throw err;
    return refuse(ctx, client, state, packet, PROTOCOL_REASONS[err.code] ?? 'forged', err.code, parsed.keyIndex);
  }
  ctx.counters.uplink.opened++;
  ctx.counters.uplinkBytes += (packet.payload as Buffer).length;
  if (packet.qos === 1) trackStore(packet, parsed.seq, uplink);
  // What is retained, queued and forwarded from here on is the plaintext: applications receive plaintext.
  packet.payload = Buffer.from(opened.payload.buffer, opened.payload.byteOffset, opened.payload.byteLength);
  return null;
}

/**
 * Refuses the message; the connection is then closed (MQTT 3.1.1 has no negative acknowledgement of a PUBLISH).
 * A device is first told why on its status topic (docs/PROTOCOL.md §9.4), so that it can tell a spent key (begin
 * a new session) from a fault of its own.
 */
/**
 * [MQTT-4.3.2-1, MQTT-4.3.3-2] A QoS 1 or 2 PUBLISH sent again with DUP set after its acknowledgement was lost
 * (perhaps on a new connection that continues the held key, docs/PROTOCOL.md §9.1) carries an envelope this key
 * already accepted, and passed on. Decided by the envelope's own sequence number, never by the packet identifier:
 * a payload is never let through unopened.
 */
function retransmission(packet: PublishPacket, parsed: ParsedEnvelope, uplink: HeldUplinkKey): boolean {
  return packet.qos > 0 && packet.dup && uplink.replay.seen(parsed.seq);
}

/** Settles a QoS 1 original's store outcome; set by trackStore, called by uplinkPublished. */
const originals = new WeakMap<PublishPacket, (stored: boolean) => void>();

/**
 * The seq of a QoS 1 message now counts as seen by the replay window, but the message is not stored yet: a DUP
 * resend that arrives meanwhile (on a new connection after the old one dropped) must not be acknowledged before the
 * original is [MQTT-4.3.2-2]. If the original is never stored (its store failed, so nothing was delivered either:
 * Aedes routes a message only after storing it), the seq is forgotten by the replay window, and the resend is taken
 * as the message: neither lost behind a PUBACK nor delivered twice.
 */
function trackStore(packet: PublishPacket, seq: number, uplink: HeldUplinkKey): void {
  let settle!: (stored: boolean) => void;
  uplink.storing.set(seq, new Promise<boolean>((resolve) => (settle = resolve)));
  originals.set(packet, (stored) => {
    originals.delete(packet);
    uplink.storing.delete(seq);
    if (!stored) uplink.replay.forget(seq);
    settle(stored);
  });
}

/**
 * ack-after-store.ts reports how a QoS 1 PUBLISH this hook accepted ended: stored and routed (no error), or not
 * (refused, or the store failed). A no-op for packets that opened no envelope.
 */
export function uplinkPublished(packet: PublishPacket, err: Error | null | undefined): void {
  originals.get(packet)?.(!err);
}

/**
 * A resend (DUP) of a sequence number the replay window has seen: acknowledged and dropped once the original is
 * stored; while the original's store is in flight it waits, then is acknowledged (stored) or opened as the message
 * itself (never stored, its seq forgotten).
 */
function duplicateOf(
  ctx: PluginContext,
  client: Client,
  state: ClientState,
  packet: PublishPacket,
  parsed: ParsedEnvelope,
  uplink: HeldUplinkKey,
): Verdict {
  const storing = packet.qos === 1 ? uplink.storing.get(parsed.seq) : undefined;
  if (!storing) return acknowledgeDuplicate(ctx, client, packet);
  return storing.then((stored) =>
    stored ? acknowledgeDuplicate(ctx, client, packet) : openUplink(ctx, client, state, packet, parsed, uplink),
  );
}

/** [MQTT-3.5.1] PUBREC (0x50): remaining length 2, the packet identifier. */
function pubrec(messageId: number): Buffer {
  return Buffer.from([0x50, 0x02, messageId >> 8, messageId & 0xff]);
}

/**
 * A retransmission is acknowledged and dropped: not refused (that would close an honest connection whose
 * acknowledgement was lost), and not passed on again (DUP is an unauthenticated header bit: a replay must not
 * deliver a message twice). Its payload becomes DROPPED_PAYLOAD (not retained), which the forward hook delivers to
 * no one. At QoS 1 Aedes sends the PUBACK, in its turn among the client's other PUBACKs, and publishes nothing
 * (ack-after-store.ts acknowledges a DROPPED_PAYLOAD packet without publishing it). At QoS 2 the broker sends the
 * PUBREC itself (the PUBREL that follows is answered by Aedes with PUBCOMP whether or not it stored the packet) and
 * the packet goes on as QoS 0, so Aedes neither acknowledges, stores nor delivers it.
 */
function acknowledgeDuplicate(ctx: PluginContext, client: Client, packet: PublishPacket): null {
  if (packet.qos === 2) {
    client.conn.write(pubrec(packet.messageId!));
    packet.qos = 0;
  }
  packet.retain = false;
  packet.payload = DROPPED_PAYLOAD;
  ctx.counters.uplink.duplicate++;
  return null;
}

function refuse(
  ctx: PluginContext,
  client: Client,
  state: ClientState,
  packet: PublishPacket,
  reason: RejectReason,
  detail: string,
  keyIndex?: number,
): Error | Promise<Error> {
  if (state.principal.role === 'device') ctx.counters.uplink[reason]++;
  ctx.o.events?.rejected?.(reason, client.id, packet.topic);
  ctx.o.log?.warn(
    { client: client.id, role: state.principal.role, topic: packet.topic, reason, detail },
    'publish refused',
  );
  const err = new Error(`publish refused (${reason}): ${detail}`);
  if (state.principal.role !== 'device') return err;
  return tellDevice(client, deviceFilter(ctx.topics.status, state.principal.id), {
    reason,
    topic: packet.topic,
    ...(keyIndex !== undefined && { key_index: keyIndex }),
  }).then(() => err);
}

/** Longest wait for a status notice to be written before the refused connection is closed anyway. */
const STATUS_NOTICE_MS = 1000;

/**
 * Publishes a status notice (QoS 0, not retained, plaintext JSON) and resolves once it went out or timed out. With
 * several brokers (a shared emitter) a publish completes when Redis has it, before it is back and written to the
 * device, which the refusal then disconnects: the notice goes to this broker's subscribers, the device among them.
 */
function tellDevice(client: Client, topic: string, notice: StatusNotice): Promise<void> {
  const broker = (client as unknown as { broker: StatusPublisher }).broker;
  const local = broker.mq[LOCAL_EMIT];
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, STATUS_NOTICE_MS);
    const payload = Buffer.from(JSON.stringify(notice));
    const packet: PublishPacket = { cmd: 'publish', topic, payload, qos: 0, retain: false, dup: false };
    const done = () => {
      clearTimeout(timer);
      resolve();
    };
    if (local) local(packet as unknown as Parameters<LocalEmit>[0], done);
    else broker.publish(packet, done);
  });
}

/** docs/PROTOCOL.md §9.4: what the broker tells a device when it refuses one of its messages. */
export interface StatusNotice {
  reason: RejectReason;
  topic: string;
  key_index?: number;
}

interface StatusPublisher {
  publish(packet: PublishPacket, done: (err?: Error) => void): void;
  mq: { [LOCAL_EMIT]?: LocalEmit };
}

function failed(ctx: PluginContext, client: Client, state: ClientState, err: unknown): Error {
  if (state.principal.role === 'device') ctx.counters.uplink.error++;
  ctx.o.events?.rejected?.('error', client.id, '');
  return ctx.hookFailed('publish', client, err);
}
