// The will hook: Aedes asks authorizePublish whether a closing client's will may be published [MQTT-3.1.2-8]. An
// application's will is plaintext and was checked at CONNECT; a device's will is opened here under the uplink key it
// names (direction will, sequence number 0), claimed at CONNECT with the will as its proof of use and held since.
import type { Client, PublishPacket } from 'aedes';
import { isProtocolError, openEnvelope } from '../../protocol/index.js';
import {
  contentViolation,
  headerViolation,
  type PolicyRule,
  type PolicyViolation,
  publishHandling,
} from '../policy/evaluate.js';
import { mayPublish } from '../topic-policy.js';
import { ruleOf } from './policy.js';
import type { ClientState, PluginContext, PublishCallback } from './context.js';
import { release } from './lifecycle.js';

/**
 * The policy table's rules for the will as for any publish, checked when it is published (with the table then in
 * force): QoS and retain limits, an application's will under `required`, and size and suite below.
 */
function willHeaderViolation(rule: PolicyRule, state: ClientState, packet: PublishPacket): PolicyViolation | undefined {
  return (
    headerViolation(rule, packet.qos, packet.retain) ??
    (publishHandling(rule, state.principal.role) === 'encryption' ? 'encryption' : undefined)
  );
}

function refuseByPolicy(ctx: PluginContext, violation: PolicyViolation | undefined): void {
  if (!violation) return;
  ctx.o.events?.policy?.('publish', violation);
  throw new Error(`policy: ${violation}`);
}

/** True when `packet` is the will Aedes is about to publish for `client` (the very object it stored at CONNECT). */
export function isWillOf(client: Client, packet: PublishPacket): boolean {
  return (client as unknown as { will?: unknown }).will === packet;
}

export function authorizeWill(
  ctx: PluginContext,
  client: Client,
  state: ClientState,
  packet: PublishPacket,
  callback: PublishCallback,
): void {
  const settled = settleWill(ctx, state, packet).then(
    () => {
      ctx.o.events?.will?.('published');
      callback(null);
    },
    (err: unknown) => {
      const reason = err instanceof Error ? err.message : String(err);
      ctx.o.events?.will?.('refused');
      ctx.o.log?.warn({ client: client.id, topic: packet.topic, reason }, 'will refused');
      callback(new Error(`will refused: ${reason}`));
    },
  );
  state.willSettled = settled
    .catch((err: unknown) => void ctx.hookFailed('will', client, err))
    .finally(() => {
      if (state.releaseAfterWill) void release(ctx, client);
    });
}

async function settleWill(ctx: PluginContext, state: ClientState, packet: PublishPacket): Promise<void> {
  if (!mayPublish(state.principal, packet.topic, ctx.topics)) throw new Error('acl: will topic not permitted');
  const rule = ruleOf(ctx, state.principal, packet.topic);
  refuseByPolicy(ctx, willHeaderViolation(rule, state, packet));
  const will = state.will;
  if (state.principal.role !== 'device' || !will) {
    refuseByPolicy(ctx, contentViolation(rule, (packet.payload as Buffer).length));
    return;
  }
  refuseByPolicy(ctx, contentViolation(rule, will.parsed.ciphertext.length, will.parsed.suite));
  // Claimed at CONNECT and held (pinned) for this connection since: no key-service round trip now (§9.5).
  const uplink = state.keys!.readyUplinkKey(will.parsed.keyIndex);
  if (!uplink) throw new Error('key_spent: the will key is no longer held');
  // A will is published once per key: a replayed CONNECT cannot publish it again.
  if (uplink.willSpent) throw new Error('replay: this will was published already');
  uplink.willSpent = true;
  try {
    const opened = openEnvelope(will.parsed, {
      key: uplink.key,
      deviceId: state.principal.id,
      topic: packet.topic,
      direction: 'will',
      ...ctx.parseOptions,
    });
    packet.payload = Buffer.from(opened.payload.buffer, opened.payload.byteOffset, opened.payload.byteLength);
  } catch (err) {
    if (isProtocolError(err)) throw new Error(`forged: ${err.code}`);
    throw err;
  }
}
