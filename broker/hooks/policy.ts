// The policy steps of the publish and forward hooks: which entry governs the message (policy/evaluate.ts) and what
// it allows. A refused publish closes the connection as every refusal does; a refused delivery is dropped for that
// one subscriber. Both are counted by rule.
import type { AedesPublishPacket, Client, PublishPacket } from 'aedes';
import { ENVELOPE_VERSION } from '../../protocol/index.js';
import {
  contentViolation,
  defaultRule,
  deliveryFor,
  endToEndApp,
  headerViolation,
  type PolicyRule,
  type PolicyViolation,
  publishHandling,
  ruleFor,
} from '../policy/evaluate.js';
import { downlinkOwner, isStatusTopicOf, type Principal, uplinkOwner } from '../topic-policy.js';
import type { ClientState, PluginContext } from './context.js';

/** The rule in force for `principal` on `topic`. */
export function ruleOf(ctx: PluginContext, principal: Principal, topic: string): PolicyRule {
  return ruleFor(ctx.policy.current, principal, topic) ?? defaultRule(principal.role);
}

/**
 * What the publish step decided: a violation, or how to take the payload. `open`: an envelope, checked against the
 * rule's suites and size before its key is claimed; `forward-sealed`: an end-to-end envelope, its header checked
 * against the rule and never opened; `pass`: plaintext, size already checked.
 */
export type PublishPolicy =
  { violation: PolicyViolation } | { take: 'open' | 'forward-sealed'; rule: PolicyRule } | { take: 'pass' };

/** A topic of an end-to-end entry (docs/PROTOCOL.md §23): the device it belongs to, its rule, and its one app. */
export interface EndToEndTopic {
  deviceId: string;
  rule: PolicyRule;
  /** undefined: an end-to-end entry naming no application (a newer key service's): nobody reads it. */
  app: string | undefined;
}

/**
 * Is `topic`, in some device's uplink or downlink space, governed for that device by an end-to-end entry? The
 * device's entry decides, whoever publishes or receives: it is the device's keys that seal there.
 */
export function endToEndOf(ctx: PluginContext, topic: string): EndToEndTopic | undefined {
  if (ctx.policy.current.size === 0) return undefined;
  const deviceId = uplinkOwner(ctx.topics, topic) ?? downlinkOwner(ctx.topics, topic);
  if (deviceId === undefined || isStatusTopicOf(ctx.topics, deviceId, topic)) return undefined;
  const rule = ruleFor(ctx.policy.current, { role: 'device', id: deviceId }, topic);
  if (rule?.encryption !== 'end-to-end') return undefined;
  return { deviceId, rule, app: endToEndApp(rule) };
}

/** The QoS, retain and encryption rules of a publish, and its size when it is taken as plaintext. */
export function publishPolicy(
  ctx: PluginContext,
  principal: Principal,
  packet: PublishPacket,
  appSealed = false,
): PublishPolicy {
  const rule = ruleOf(ctx, principal, packet.topic);
  const header = headerViolation(rule, packet.qos, packet.retain);
  if (header) return { violation: header };
  let handling = publishHandling(rule, principal.role, appSealed);
  // An application holding a session key seals everything it publishes (docs/PROTOCOL.md §22.6): its size and suite
  // are checked once the envelope is open.
  if (appSealed && handling !== 'encryption') handling = 'open';
  if (handling === 'encryption') return { violation: handling };
  if (handling === 'forward-sealed') return { take: handling, rule };
  const payload = packet.payload as Buffer;
  // `optional`: an envelope is recognised by its version byte (docs/PROTOCOL.md §4); anything else is plaintext.
  if (handling === 'open' || (handling === 'open-if-sealed' && payload[0] === ENVELOPE_VERSION))
    return { take: 'open', rule };
  const violation = contentViolation(rule, payload.length);
  return violation ? { violation } : { take: 'pass' };
}

/** An envelope's plaintext size and suite against the rule, before its key is claimed. */
export function envelopePolicy(rule: PolicyRule, plaintextLength: number, suite: number): PolicyViolation | undefined {
  return contentViolation(rule, plaintextLength, suite);
}

/**
 * What the policy makes of one delivery; for a drop, which rule dropped it, and whether it is an end-to-end topic's
 * envelope kept from everyone but its two ends (counted, not logged: every other subscriber would log it). Pure.
 */
type DeliveryOutcome = { outcome: 'as-usual' | 'pass' } | { outcome: 'drop'; rule: PolicyViolation; endToEnd: boolean };

export function deliveryOutcome(
  ctx: PluginContext,
  state: ClientState,
  topic: string,
  plaintext: Buffer,
): DeliveryOutcome {
  const principal = state.principal;
  if (ctx.policy.current.size === 0) return { outcome: 'as-usual' };
  if (principal.role === 'device' && isStatusTopicOf(ctx.topics, principal.id, topic)) return { outcome: 'as-usual' };
  const e2e = endToEndOf(ctx, topic);
  if (e2e) {
    // docs/PROTOCOL.md §23: the envelope goes on as it came, to its device (commands) or its one application
    // (telemetry; sealed again under an application session key if the application holds one); to no one else.
    if (principal.role === 'device' && principal.id === e2e.deviceId) return { outcome: 'pass' };
    if (principal.role === 'app' && principal.id === e2e.app) return { outcome: 'as-usual' };
    return { outcome: 'drop', rule: 'encryption', endToEnd: true };
  }
  const suite = state.keys?.downlinkSuite ?? 0;
  const sealed = state.app?.active === true;
  const decision = deliveryFor(ruleOf(ctx, principal, topic), principal.role, plaintext.length, suite, sealed);
  if (decision === 'seal') return { outcome: 'as-usual' };
  if (decision === 'pass') return { outcome: principal.role === 'device' ? 'pass' : 'as-usual' };
  return { outcome: 'drop', rule: decision, endToEnd: false };
}

/**
 * The forward hook's policy step: `as-usual` (the hook seals for a device, passes to an application), `pass`
 * (plaintext to this subscriber), or `drop` (counted and logged). Status notices to a device are the broker's own.
 */
export function deliveryPolicy(
  ctx: PluginContext,
  client: Client,
  state: ClientState,
  packet: AedesPublishPacket,
): 'as-usual' | 'pass' | 'drop' {
  // Every delivery reaches the forward hook as plaintext: nothing sealed is stored (forward.ts).
  const d = deliveryOutcome(ctx, state, packet.topic, packet.payload as Buffer);
  if (d.outcome !== 'drop') return d.outcome;
  ctx.o.events?.policy?.('forward', d.rule);
  if (!d.endToEnd)
    ctx.o.log?.warn({ client: client.id, topic: packet.topic, rule: d.rule }, 'delivery dropped by policy');
  return 'drop';
}
