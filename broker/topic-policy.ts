// Who may publish and subscribe where: MQTT filter matching and containment, device topic spaces, app ACLs.
// Pure functions, no I/O. MQTT 3.1.1 §4.7 (topic names and filters).

export interface TopicTemplates {
  /** Filter a device publishes under; `{id}` is replaced by the device id. */
  uplink: string;
  /** Filter a device subscribes under. */
  downlink: string;
}

export const DEFAULT_TOPICS: Readonly<TopicTemplates> = Object.freeze({
  uplink: 'devices/{id}/up/#',
  downlink: 'devices/{id}/down/#',
});

export function deviceFilter(template: string, deviceId: string): string {
  return template.replaceAll('{id}', deviceId);
}

/** [MQTT-4.7.1] Does topic name `topic` match filter `filter`? `$`-topics never match a leading wildcard [MQTT-4.7.2-1]. */
export function matches(filter: string, topic: string): boolean {
  if (topic.startsWith('$') && (filter.startsWith('+') || filter.startsWith('#'))) return false;
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    const level = f[i]!;
    if (level === '#') return true; // [MQTT-4.7.1-2] also matches the parent level
    if (i >= t.length) return false;
    if (level !== '+' && level !== t[i]) return false;
  }
  return f.length === t.length;
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
  if (p.role === 'device') return matches(deviceFilter(t.uplink, p.id), topic);
  if (uplinkOwner(t, topic) !== undefined) return false;
  return p.publish.some((f) => matches(f, topic));
}

/** Subscribe permission: the requested filter must lie inside an allowed one. */
export function maySubscribe(p: Principal, filter: string, t: TopicTemplates = DEFAULT_TOPICS): boolean {
  if (filter.length === 0 || filter.includes('\u0000')) return false;
  if (p.role === 'device') return covers(deviceFilter(t.downlink, p.id), filter);
  return p.subscribe.some((allowed) => covers(allowed, filter));
}

/** Read permission on delivery (re-checked in authorizeForward): may `p` receive a message on `topic`? */
export function mayReceive(p: Principal, topic: string, t: TopicTemplates = DEFAULT_TOPICS): boolean {
  if (p.role === 'device') return matches(deviceFilter(t.downlink, p.id), topic);
  return p.subscribe.some((f) => matches(f, topic));
}
