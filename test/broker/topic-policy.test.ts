// Topic policy: MQTT matching and containment (with a brute-force cross-check), device spaces, app ACLs, $SYS.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  covers,
  downlinkOwner,
  matches,
  mayPublish,
  mayReceive,
  maySubscribe,
  type Principal,
  uplinkOwner,
} from '../../broker/topic-policy.js';

const dev: Principal = { role: 'device', id: 'dev-1' };
const app: Principal = { role: 'app', id: 'dash', publish: ['devices/+/down/#'], subscribe: ['devices/+/up/#'] };

describe('matches (MQTT 3.1.1 §4.7)', () => {
  it.each([
    ['sport/tennis/player1/#', 'sport/tennis/player1', true],
    ['sport/tennis/player1/#', 'sport/tennis/player1/ranking', true],
    ['sport/#', 'sport', true],
    ['sport/tennis/+', 'sport/tennis/player1', true],
    ['sport/tennis/+', 'sport/tennis/player1/ranking', false],
    ['sport/+', 'sport', false],
    ['+/+', '/finance', true],
    ['/+', '/finance', true],
    ['+', '/finance', false],
    ['#', '$SYS/broker/uptime', false],
    ['+/monitor/Clients', '$SYS/monitor/Clients', false],
    ['$SYS/#', '$SYS/broker/uptime', true],
  ])('%s vs %s -> %s', (f, t, want) => expect(matches(f, t)).toBe(want));
});

describe('matches agrees with a reference that splits into levels', () => {
  /** The MQTT 3.1.1 §4.7 rules written the obvious way: split both, compare level by level. */
  function reference(filter: string, topic: string): boolean {
    if (topic.startsWith('$') && (filter.startsWith('+') || filter.startsWith('#'))) return false;
    const f = filter.split('/');
    const t = topic.split('/');
    for (let i = 0; i < f.length; i++) {
      if (f[i] === '#') return true;
      if (i >= t.length) return false;
      if (f[i] !== '+' && f[i] !== t[i]) return false;
    }
    return f.length === t.length;
  }

  it('on random filters and topics, with empty levels, $ and multi-character levels', () => {
    const name = fc.constantFrom('', 'a', 'b', 'ab', '$SYS', 'a$');
    const filter = fc
      .tuple(fc.array(fc.oneof(name, fc.constant('+')), { minLength: 1, maxLength: 4 }), fc.boolean())
      .map(([ls, hash]) => [...ls, ...(hash ? ['#'] : [])].join('/'));
    const topic = fc.array(name, { minLength: 1, maxLength: 5 }).map((ls) => ls.join('/'));
    fc.assert(
      fc.property(filter, topic, (f, t) => {
        expect(matches(f, t)).toBe(reference(f, t));
      }),
      { numRuns: 5000 },
    );
  });
});

describe('covers', () => {
  it.each([
    ['devices/dev-1/down/#', 'devices/dev-1/down/#', true],
    ['devices/dev-1/down/#', 'devices/dev-1/down/cmd', true],
    ['devices/dev-1/down/#', 'devices/dev-1/down/+/x', true],
    ['devices/dev-1/down/#', 'devices/+/down/#', false],
    ['devices/dev-1/down/#', 'devices/dev-1/#', false],
    ['devices/dev-1/down/#', '#', false],
    ['devices/+/up/#', 'devices/dev-9/up/t', true],
    ['devices/+/up/#', 'devices/+/up/t', true],
    ['devices/dev-1/up/t', 'devices/+/up/t', false],
    ['#', '$SYS/#', false],
  ])('%s covers %s -> %s', (a, r, want) => expect(covers(a, r)).toBe(want));

  it('agrees with brute force: if covers(a, r) then every topic matching r matches a', () => {
    const level = fc.constantFrom('a', 'b', '+');
    const filter = fc
      .tuple(fc.array(level, { minLength: 1, maxLength: 3 }), fc.boolean())
      .map(([ls, hash]) => [...ls, ...(hash ? ['#'] : [])].join('/'));
    const topic = fc.array(fc.constantFrom('a', 'b', 'c'), { minLength: 1, maxLength: 5 }).map((ls) => ls.join('/'));
    fc.assert(
      fc.property(filter, filter, fc.array(topic, { minLength: 20, maxLength: 20 }), (a, r, topics) => {
        if (covers(a, r)) for (const t of topics) if (matches(r, t)) expect(matches(a, t)).toBe(true);
      }),
      { numRuns: 500 },
    );
  });
});

describe('device and app permissions', () => {
  it('a device publishes only in its uplink space and subscribes only in its downlink space', () => {
    expect(mayPublish(dev, 'devices/dev-1/up/telemetry')).toBe(true);
    expect(mayPublish(dev, 'devices/dev-2/up/telemetry')).toBe(false);
    expect(mayPublish(dev, 'devices/dev-1/down/cmd')).toBe(false);
    expect(mayPublish(dev, '$SYS/x')).toBe(false);
    expect(mayPublish(dev, 'devices/dev-1/up/+')).toBe(false);
    expect(maySubscribe(dev, 'devices/dev-1/down/#')).toBe(true);
    expect(maySubscribe(dev, 'devices/dev-1/down/cmd')).toBe(true);
    expect(maySubscribe(dev, 'devices/+/down/#')).toBe(false);
    expect(maySubscribe(dev, 'devices/dev-1/up/#')).toBe(false);
    expect(maySubscribe(dev, '$SYS/#')).toBe(false);
    expect(mayReceive(dev, 'devices/dev-1/down/cmd')).toBe(true);
    expect(mayReceive(dev, 'devices/dev-2/down/cmd')).toBe(false);
  });

  it('an app follows its ACL, never publishes into a device uplink space, and stays out of $SYS', () => {
    expect(mayPublish(app, 'devices/dev-1/down/cmd')).toBe(true);
    expect(mayPublish(app, 'devices/dev-1/up/telemetry')).toBe(false);
    const greedy: Principal = { role: 'app', id: 'g', publish: ['#'], subscribe: ['#'] };
    expect(mayPublish(greedy, 'devices/dev-1/up/telemetry')).toBe(false);
    expect(mayPublish(greedy, '$SYS/broker')).toBe(false);
    expect(maySubscribe(greedy, '$SYS/#')).toBe(false);
    expect(maySubscribe(app, 'devices/+/up/#')).toBe(true);
    expect(maySubscribe(app, 'devices/#')).toBe(false);
    expect(mayReceive(app, 'devices/dev-3/up/t')).toBe(true);
    expect(mayReceive(app, 'devices/dev-3/down/t')).toBe(false);
  });

  it('finds the owning device of uplink and downlink topics', () => {
    expect(
      uplinkOwner(
        { uplink: 'devices/{id}/up/#', downlink: 'devices/{id}/down/#', status: 'devices/{id}/status' },
        'devices/dev-7/up/a/b',
      ),
    ).toBe('dev-7');
    expect(
      downlinkOwner(
        { uplink: 'devices/{id}/up/#', downlink: 'devices/{id}/down/#', status: 'devices/{id}/status' },
        'devices/dev-7/down',
      ),
    ).toBe('dev-7');
    expect(
      uplinkOwner(
        { uplink: 'devices/{id}/up/#', downlink: 'devices/{id}/down/#', status: 'devices/{id}/status' },
        'other/dev-7/up',
      ),
    ).toBeUndefined();
  });
});
