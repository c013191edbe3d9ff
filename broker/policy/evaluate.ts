// Which policy entry governs a principal's message on a topic, and what it allows. Pure: no I/O, no clock.
//
// Precedence (docs/ARCHITECTURE.md, Policies): among the entries whose filter matches the topic, an entry naming
// the principal wins over every entry for its role; within either group the most specific filter wins. Filters are
// compared level by level from the left: a literal level is more specific than '+', and '+' more than '#'; where
// one filter ends and the other goes on with '#' (which also matches the parent level [MQTT-4.7.1-2]) the shorter
// one is more specific. Two distinct filters that match one topic always differ somewhere, so exactly one wins.
// The winning entry alone decides: a field it leaves out means the broker's own configuration, never another
// entry's value. No matching entry means the broker's behaviour without a policy (defaultRule).
import type { PolicyEntryJson } from '../../kms-api/policy-schemas.js';
import type { RotationLimits } from '../session-keys.js';
import { matches } from '../topic-policy.js';

export type PolicyRule = Readonly<PolicyEntryJson>;
export type PolicyRole = 'device' | 'app';
export interface PolicySubject {
  role: PolicyRole;
  id: string;
}

/** What a message broke; the label of broker_policy_violations_total. */
export type PolicyViolation = 'encryption' | 'suite' | 'payload' | 'qos' | 'retain';

/** The table compiled for lookups: entries per principal and per role, most specific first. */
export interface CompiledPolicy {
  readonly version: number;
  readonly size: number;
  readonly byPrincipal: ReadonlyMap<string, readonly PolicyRule[]>;
  readonly byRole: ReadonlyMap<PolicyRole, readonly PolicyRule[]>;
  /** subject and topic -> the rule found (null: none), bounded; a new table starts empty. */
  readonly cache: Map<string, PolicyRule | null>;
}

/** Lookups remembered per table; past this the cache starts over (a flood of distinct topics costs lookups only). */
const CACHE_ENTRIES = 10_000;

const LITERAL = 2;
const PLUS = 1;
const HASH = 0;

function levelRank(level: string): number {
  return level === '#' ? HASH : level === '+' ? PLUS : LITERAL;
}

/** Negative when filter `a` is more specific than `b`, positive when less, 0 when they are the same filter. */
export function compareSpecificity(a: string, b: string): number {
  if (a === b) return 0;
  const la = a.split('/');
  const lb = b.split('/');
  for (let i = 0; i < Math.max(la.length, lb.length); i++) {
    if (i >= la.length) return -1; // b goes on (with '#'): a is more specific
    if (i >= lb.length) return 1;
    const d = levelRank(lb[i]!) - levelRank(la[i]!);
    if (d !== 0) return d;
  }
  // Same shape, different literals: they never match the same topic; any fixed order will do.
  return a < b ? -1 : 1;
}

function principalKey(role: PolicyRole, id: string): string {
  return `${role}\u0000${id}`;
}

export function compilePolicy(version: number, entries: readonly PolicyEntryJson[]): CompiledPolicy {
  const byPrincipal = new Map<string, PolicyRule[]>();
  const byRole = new Map<PolicyRole, PolicyRule[]>();
  for (const e of entries) {
    const rule = Object.freeze({ ...e });
    if (e.principal !== undefined) {
      const key = principalKey(e.role, e.principal);
      byPrincipal.set(key, [...(byPrincipal.get(key) ?? []), rule]);
    } else byRole.set(e.role, [...(byRole.get(e.role) ?? []), rule]);
  }
  const order = (a: PolicyRule, b: PolicyRule) => compareSpecificity(a.filter, b.filter);
  for (const list of byPrincipal.values()) list.sort(order);
  for (const list of byRole.values()) list.sort(order);
  return { version, size: entries.length, byPrincipal, byRole, cache: new Map() };
}

/** The table before any is known, and with no entries: the broker's behaviour without a policy. */
export const EMPTY_POLICY: CompiledPolicy = compilePolicy(0, []);

/** The entry that governs `subject`'s message on `topic`, or undefined (then defaultRule applies). */
export function ruleFor(policy: CompiledPolicy, subject: PolicySubject, topic: string): PolicyRule | undefined {
  if (policy.size === 0) return undefined;
  const key = `${principalKey(subject.role, subject.id)}\u0000${topic}`;
  const known = policy.cache.get(key);
  if (known !== undefined) return known ?? undefined;
  const found =
    policy.byPrincipal.get(principalKey(subject.role, subject.id))?.find((r) => matches(r.filter, topic)) ??
    policy.byRole.get(subject.role)?.find((r) => matches(r.filter, topic));
  if (policy.cache.size >= CACHE_ENTRIES) policy.cache.clear();
  policy.cache.set(key, found ?? null);
  return found;
}

/**
 * The rule in force where no entry matches: what the broker does without a policy. Devices' messages are sealed
 * (uplink opened, downlink sealed per device); applications' travel in plaintext.
 */
export function defaultRule(role: PolicyRole): PolicyRule {
  return role === 'device' ? DEVICE_DEFAULT : APP_DEFAULT;
}
const DEVICE_DEFAULT: PolicyRule = Object.freeze({
  policy_id: 'default-device',
  role: 'device',
  filter: '#',
  encryption: 'required',
  version: 0,
  updated_at: 0,
});
const APP_DEFAULT: PolicyRule = Object.freeze({
  policy_id: 'default-app',
  role: 'app',
  filter: '#',
  encryption: 'plaintext',
  version: 0,
  updated_at: 0,
});

/**
 * How the broker takes a publish's payload: `open` an envelope (refused if it is not one), `open-if-sealed`
 * (an envelope is opened, anything else passes as plaintext), `pass` as it is, `forward-sealed` (an end-to-end
 * envelope: its header is checked, it is never opened), or a violation. An application satisfies `required` only
 * with a session key; an unknown mode (a newer key service) refuses everything it governs.
 */
export function publishHandling(
  rule: PolicyRule,
  role: PolicyRole,
  appSealed = false,
): 'open' | 'open-if-sealed' | 'pass' | 'forward-sealed' | 'encryption' {
  switch (rule.encryption) {
    case 'end-to-end':
      // docs/PROTOCOL.md §23: a device's envelope goes on unopened; the mode governs device messages only.
      return role === 'device' && endToEndApp(rule) !== undefined ? 'forward-sealed' : 'encryption';
    case 'required':
      // An application satisfies `required` with a session key (docs/PROTOCOL.md §22.6).
      return role === 'device' || appSealed ? 'open' : 'encryption';
    case 'optional':
      return role === 'device' ? 'open-if-sealed' : 'pass';
    case 'plaintext':
      return 'pass';
    default:
      return 'encryption';
  }
}

/**
 * The one application an `end-to-end` rule lets read (and command) the messages it governs, or undefined for any
 * other rule, or for an end-to-end rule that names none (then nobody may: fail closed).
 */
export function endToEndApp(rule: PolicyRule): string | undefined {
  return rule.encryption === 'end-to-end' && typeof rule.app === 'string' ? rule.app : undefined;
}

/** QoS and retain limits of a PUBLISH. */
export function headerViolation(rule: PolicyRule, qos: number, retain: boolean): PolicyViolation | undefined {
  if (rule.max_qos !== undefined && qos > rule.max_qos) return 'qos';
  if (rule.retain === false && retain) return 'retain';
  return undefined;
}

/** The plaintext's size and, for a sealed message, its suite. */
export function contentViolation(rule: PolicyRule, length: number, suite?: number): PolicyViolation | undefined {
  if (rule.max_payload !== undefined && length > rule.max_payload) return 'payload';
  if (suite !== undefined && rule.suites !== undefined && !rule.suites.includes(suite)) return 'suite';
  return undefined;
}

/**
 * What a delivery to a subscriber becomes: `seal` it (devices, under the session's downlink suite), `pass` it as
 * plaintext, or a violation (the delivery is dropped). An application cannot receive sealed messages yet, so
 * `required` drops every delivery to an application the entry governs.
 */
export function deliveryFor(
  rule: PolicyRule,
  role: PolicyRole,
  length: number,
  downlinkSuite: number,
  appSealed = false,
): 'seal' | 'pass' | PolicyViolation {
  const mode = rule.encryption;
  if (mode !== 'required' && mode !== 'optional' && mode !== 'plaintext') return 'encryption';
  // An application without a session key cannot receive sealed; with one, the forward hook seals (§22.6).
  if (role === 'app' && mode === 'required' && !appSealed) return 'encryption';
  const seal = role === 'device' && mode !== 'plaintext';
  return contentViolation(rule, length, seal ? downlinkSuite : undefined) ?? (seal ? 'seal' : 'pass');
}

/** Do filters `a` and `b` match at least one common topic? */
export function filtersOverlap(a: string, b: string): boolean {
  const la = a.split('/');
  const lb = b.split('/');
  for (let i = 0; ; i++) {
    const x = la[i];
    const y = lb[i];
    if (x === '#' || y === '#') return true;
    if (x === undefined || y === undefined) return x === y;
    if (x !== '+' && y !== '+' && x !== y) return false;
  }
}

/**
 * The rotation limits of a device session: one downlink key seals every topic of the device's downlink space, so
 * the tightest limits of all entries for the device (its own and its role's) whose filter meets that space apply,
 * never looser than the broker's `base`.
 */
export function rotationFor(
  policy: CompiledPolicy,
  deviceId: string,
  downlinkFilter: string,
  base: Readonly<RotationLimits>,
): RotationLimits {
  const out = { ...base };
  const rules = [
    ...(policy.byPrincipal.get(principalKey('device', deviceId)) ?? []),
    ...(policy.byRole.get('device') ?? []),
  ];
  for (const r of rules) {
    if (!r.rotation || !filtersOverlap(r.filter, downlinkFilter)) continue;
    if (r.rotation.messages !== undefined) out.messages = Math.min(out.messages, r.rotation.messages);
    if (r.rotation.bytes !== undefined) out.bytes = Math.min(out.bytes, r.rotation.bytes);
    if (r.rotation.seconds !== undefined) out.seconds = Math.min(out.seconds, r.rotation.seconds);
  }
  return out;
}
