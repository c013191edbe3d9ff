// Who may publish and subscribe where: MQTT filter matching and containment, device topic spaces, app ACLs.
// Pure functions, no I/O. MQTT 3.1.1 §4.7 (topic names and filters).

export interface TopicTemplates {
  /** Filter a device publishes under; `{id}` is replaced by the device id. */
  uplink: string;
  /** Filter a device subscribes under. */
  downlink: string;
  /**
   * The topic the broker tells a device why it refused a message on (docs/PROTOCOL.md §9.4): the device may
   * subscribe to it, only the broker publishes to it.
   */
  status: string;
}

export const DEFAULT_TOPICS: Readonly<TopicTemplates> = Object.freeze({
  uplink: 'devices/{id}/up/#',
  downlink: 'devices/{id}/down/#',
  status: 'devices/{id}/status',
});

/** Is `topic` the status topic of device `deviceId`? */
export function isStatusTopicOf(t: TopicTemplates, deviceId: string, topic: string): boolean {
  return topic === deviceFilter(t.status, deviceId);
}

export function deviceFilter(template: string, deviceId: string): string {
  return template.replaceAll('{id}', deviceId);
}

/**
 * [MQTT-4.7.1] Does topic name `topic` match filter `filter`? `$`-topics never match a leading wildcard
 * [MQTT-4.7.2-1]. Walks both strings level by level without splitting them: it runs for every message.
 */
export function matches(filter: string, topic: string): boolean {
  if (topic.charCodeAt(0) === DOLLAR && (filter.charCodeAt(0) === PLUS || filter.charCodeAt(0) === HASH)) return false;
  let f = 0; // start of the current filter level
  let t = 0; // start of the current topic level, -1 once the topic has no more levels
  for (;;) {
    const fEnd = levelEnd(filter, f);
    const single = fEnd - f === 1;
    if (single && filter.charCodeAt(f) === HASH) return true; // [MQTT-4.7.1-2] also matches the parent level
    if (t < 0) return false;
    const tEnd = levelEnd(topic, t);
    if (!(single && filter.charCodeAt(f) === PLUS) && !sameLevel(filter, f, fEnd, topic, t, tEnd)) return false;
    const tNext = tEnd < topic.length ? tEnd + 1 : -1;
    if (fEnd === filter.length) return tNext < 0;
    f = fEnd + 1;
    t = tNext;
  }
}

const DOLLAR = 0x24;
const PLUS = 0x2b;
const HASH = 0x23;

function levelEnd(s: string, from: number): number {
  const i = s.indexOf('/', from);
  return i < 0 ? s.length : i;
}

function sameLevel(a: string, aFrom: number, aEnd: number, b: string, bFrom: number, bEnd: number): boolean {
  if (aEnd - aFrom !== bEnd - bFrom) return false;
  for (let i = 0; i < aEnd - aFrom; i++) if (a.charCodeAt(aFrom + i) !== b.charCodeAt(bFrom + i)) return false;
  return true;
}

/** Is every topic matched by `requested` also matched by `allowed`? (Subscription authorization.) */
export function covers(allowed: string, requested: string): boolean {
  if (requested.startsWith('$') !== allowed.startsWith('$')) return false;
  const a = allowed.split('/');
  const r = requested.split('/');
  for (let i = 0; i < a.length; i++) {
    const level = a[i]!;
    if (level === '#') return true;
    if (i >= r.length) return false;
    const req = r[i]!;
    if (req === '#') return false; // requested reaches levels `allowed` does not cover
    if (level === '+') continue; // covers any single level, literal or '+'
    if (req !== level) return false; // a literal covers only itself, not '+'
  }
  return a.length === r.length;
}

/** A valid topic name for PUBLISH: non-empty, no wildcards, no U+0000 [MQTT-4.7.3-1, -2, -3]. */
export function isValidTopicName(topic: string): boolean {
  return topic.length > 0 && !topic.includes('+') && !topic.includes('#') && !topic.includes('\u0000');
}

/** The device whose uplink space `topic` falls in, if any (a template with one `{id}` level). */
export function uplinkOwner(templates: TopicTemplates, topic: string): string | undefined {
  return ownerOf(templates.uplink, topic);
}

/** The device whose status topic `topic` is, if any. */
export function statusOwner(templates: TopicTemplates, topic: string): string | undefined {
  return ownerOf(templates.status, topic);
}

/** The device whose downlink space `topic` falls in, if any. */
export function downlinkOwner(templates: TopicTemplates, topic: string): string | undefined {
  return ownerOf(templates.downlink, topic);
}

function ownerOf(template: string, topic: string): string | undefined {
  const levels = template.split('/');
  const at = levels.indexOf('{id}');
  if (at < 0) return undefined;
  const parts = topic.split('/');
  const id = parts[at];
  if (!id || id === '+' || id === '#') return undefined;
  return matches(deviceFilter(template, id), topic) ? id : undefined;
}

export type Principal =
  | { role: 'device'; id: string }
  | { role: 'app'; id: string; publish: readonly string[]; subscribe: readonly string[] };

/**
 * Publish permission. Devices: only their uplink space. Apps: their ACL, never a device's uplink space (that would
 * let an app speak as a device) and never `$`-topics.
 */
export function mayPublish(p: Principal, topic: string, t: TopicTemplates = DEFAULT_TOPICS): boolean {
  if (!isValidTopicName(topic) || topic.startsWith('$')) return false;
  if (p.role === 'device') return matches(filtersOf(p, t).uplink, topic);
  if (uplinkOwner(t, topic) !== undefined || statusOwner(t, topic) !== undefined) return false;
  return p.publish.some((f) => matches(f, topic));
}

/** Subscribe permission: the requested filter must lie inside an allowed one. */
export function maySubscribe(p: Principal, filter: string, t: TopicTemplates = DEFAULT_TOPICS): boolean {
  if (filter.length === 0 || filter.includes('\u0000')) return false;
  if (p.role === 'device') return covers(filtersOf(p, t).downlink, filter) || filter === filtersOf(p, t).status;
  return p.subscribe.some((allowed) => covers(allowed, filter));
}

/** Read permission on delivery (re-checked in authorizeForward): may `p` receive a message on `topic`? */
export function mayReceive(p: Principal, topic: string, t: TopicTemplates = DEFAULT_TOPICS): boolean {
  if (p.role === 'device') return matches(filtersOf(p, t).downlink, topic) || topic === filtersOf(p, t).status;
  return p.subscribe.some((f) => matches(f, topic));
}

/** A device's two filters, built once per principal (a connection) rather than once per message. */
const deviceFilters = new WeakMap<Principal, { templates: TopicTemplates } & TopicTemplates>();

function filtersOf(p: Principal & { role: 'device' }, templates: TopicTemplates): TopicTemplates {
  let f = deviceFilters.get(p);
  if (f?.templates !== templates) {
    f = {
      templates,
      uplink: deviceFilter(templates.uplink, p.id),
      downlink: deviceFilter(templates.downlink, p.id),
      status: deviceFilter(templates.status, p.id),
    };
    deviceFilters.set(p, f);
  }
  return f;
}
