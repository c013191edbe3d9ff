// The in-memory indexes over stored subscriptions and retained topics: qlobber's tries, as Aedes' own persistences
// use them, so that topic matching (wildcards, the '$' rule) is the same whatever the persistence.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

/** [MQTT-4.7.1] the topic level separator and the two wildcards. */
const QLOBBER_OPTIONS = { wildcard_one: '+', wildcard_some: '#', separator: '/' };

/** A QoS 1/2 subscription as Aedes matches it to a published topic. */
export interface IndexedSubscription {
  clientId: string;
  topic: string;
  qos: number;
  rh?: number;
  rap?: boolean;
  nl?: boolean;
}

interface QlobberSubApi {
  subscriptionsCount: number;
  add(topic: string, sub: IndexedSubscription): void;
  remove(topic: string, sub: { clientId: string; topic: string }): void;
  match(topic: string): IndexedSubscription[];
}

interface QlobberTrueApi {
  add(pattern: string): void;
  test(topic: string): boolean;
}

const QlobberSub = require('qlobber/aedes/qlobber-sub') as new (o: object) => QlobberSubApi;
const { QlobberTrue } = require('qlobber') as { QlobberTrue: new (o: object) => QlobberTrueApi };

export function subscriptionIndex(): QlobberSubApi {
  return new QlobberSub(QLOBBER_OPTIONS);
}

/** Whether `topic` matches any of `patterns` (subscription filters). */
export function patternMatcher(patterns: string[]): (topic: string) => boolean {
  const trie = new QlobberTrue(QLOBBER_OPTIONS);
  for (const p of patterns) trie.add(p);
  return (topic) => trie.test(topic);
}
