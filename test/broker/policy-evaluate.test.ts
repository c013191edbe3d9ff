// The pure policy evaluation: precedence (principal over role, most specific filter), the default rule, what each
// rule allows on publish and on delivery, and rotation limits; properties checked with fast-check.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { PolicyEntryJson } from '../../kms-api/policy-schemas.js';
import { topicFilterProblem } from '../../kms-api/policy-check.js';
import {
  compareSpecificity,
  compilePolicy,
  contentViolation,
  defaultRule,
  deliveryFor,
  endToEndApp,
  EMPTY_POLICY,
  filtersOverlap,
  headerViolation,
  type PolicyRole,
  type PolicyRule,
  publishHandling,
  rotationFor,
  ruleFor,
} from '../../broker/policy/evaluate.js';
import { matches } from '../../broker/topic-policy.js';

let n = 0;
function entry(e: Partial<PolicyEntryJson> & Pick<PolicyEntryJson, 'role' | 'filter'>): PolicyEntryJson {
  return { policy_id: `p${n++}`, encryption: 'required', version: 1, updated_at: 0, ...e };
}

const level = fc.constantFrom('a', 'b', 'c');
const topicLevels = fc.array(level, { minLength: 1, maxLength: 4 });
const role = fc.constantFrom<PolicyRole>('device', 'app');
const subject = fc.record({ role, id: fc.constantFrom('d1', 'd2', 'x') });

/** A filter that matches `levels`: some levels made '+', possibly cut short by '#'. */
function matchingFilter(levels: string[]) {
  return fc
    .record({
      plus: fc.array(fc.boolean(), { minLength: levels.length, maxLength: levels.length }),
      cut: fc.integer({ min: 0, max: levels.length + 1 }),
    })
    .map(({ plus, cut }) => {
      const out = levels.map((l, i) => (plus[i] ? '+' : l));
      return cut <= levels.length ? [...out.slice(0, cut), '#'].join('/') : out.join('/');
    });
}

/** Every decision a rule takes, for one message. */
function decisions(
  rule: ReturnType<typeof defaultRule>,
  r: PolicyRole,
  m: { qos: number; retain: boolean; length: number; suite: number },
) {
  return [
    publishHandling(rule, r),
    headerViolation(rule, m.qos, m.retain),
    contentViolation(rule, m.length, m.suite),
    deliveryFor(rule, r, m.length, m.suite),
  ];
}

const message = fc.record({
  qos: fc.constantFrom(0, 1, 2),
  retain: fc.boolean(),
  length: fc.nat({ max: 1 << 20 }),
  suite: fc.constantFrom(1, 2),
});

describe('precedence', () => {
  it('an empty table has no rule: the default applies (devices sealed, applications plaintext)', () => {
    expect(ruleFor(EMPTY_POLICY, { role: 'device', id: 'd1' }, 'devices/d1/up/t')).toBeUndefined();
    expect(publishHandling(defaultRule('device'), 'device')).toBe('open');
    expect(publishHandling(defaultRule('app'), 'app')).toBe('pass');
    expect(deliveryFor(defaultRule('device'), 'device', 10, 1)).toBe('seal');
    expect(deliveryFor(defaultRule('app'), 'app', 10, 1)).toBe('pass');
  });

  it('property: the default policy written out as entries decides exactly as no policy at all', () => {
    const explicit = compilePolicy(1, [
      entry({ role: 'device', filter: '#', encryption: 'required' }),
      entry({ role: 'app', filter: '#', encryption: 'plaintext' }),
    ]);
    fc.assert(
      fc.property(subject, topicLevels, message, (s, levels, m) => {
        const topic = levels.join('/');
        const written = ruleFor(explicit, s, topic) ?? defaultRule(s.role);
        const none = ruleFor(EMPTY_POLICY, s, topic) ?? defaultRule(s.role);
        expect(decisions(written, s.role, m)).toEqual(decisions(none, s.role, m));
      }),
    );
  });

  it('property: of two role entries matching a topic, the more specific filter wins, in either order', () => {
    fc.assert(
      fc.property(
        topicLevels.chain((levels) => fc.tuple(fc.constant(levels), matchingFilter(levels), matchingFilter(levels))),
        ([levels, f1, f2]) => {
          fc.pre(f1 !== f2);
          const topic = levels.join('/');
          const a = entry({ role: 'device', filter: f1 });
          const b = entry({ role: 'device', filter: f2 });
          const winner = compareSpecificity(f1, f2) < 0 ? a : b;
          for (const order of [
            [a, b],
            [b, a],
          ]) {
            expect(ruleFor(compilePolicy(2, order), { role: 'device', id: 'd1' }, topic)?.policy_id).toBe(
              winner.policy_id,
            );
          }
          // At the first level where the two differ, the winner's level is at least as specific.
          const rank = (l: string | undefined) => (l === undefined ? 3 : l === '#' ? 0 : l === '+' ? 1 : 2);
          const lw = winner.filter.split('/');
          const ll = (winner === a ? f2 : f1).split('/');
          const i = lw.findIndex((l, k) => l !== ll[k]);
          if (i >= 0) expect(rank(lw[i])).toBeGreaterThanOrEqual(rank(ll[i]));
        },
      ),
    );
  });

  it('property: an entry naming the principal wins over any role entry; other principals fall to the role', () => {
    fc.assert(
      fc.property(
        topicLevels.chain((levels) => fc.tuple(fc.constant(levels), matchingFilter(levels), matchingFilter(levels))),
        ([levels, principalFilter, roleFilter]) => {
          const topic = levels.join('/');
          const mine = entry({ role: 'device', principal: 'd1', filter: principalFilter });
          const all = entry({ role: 'device', filter: roleFilter });
          const policy = compilePolicy(3, [all, mine]);
          expect(ruleFor(policy, { role: 'device', id: 'd1' }, topic)?.policy_id).toBe(mine.policy_id);
          expect(ruleFor(policy, { role: 'device', id: 'd2' }, topic)?.policy_id).toBe(all.policy_id);
          // An application with the same id is another principal.
          expect(ruleFor(policy, { role: 'app', id: 'd1' }, topic)).toBeUndefined();
        },
      ),
    );
  });

  it('property: a rule is found only where its filter matches the topic', () => {
    fc.assert(
      fc.property(topicLevels, topicLevels, (topicL, filterL) => {
        const filter = filterL.join('/');
        const policy = compilePolicy(1, [entry({ role: 'app', filter })]);
        const found = ruleFor(policy, { role: 'app', id: 'a' }, topicL.join('/'));
        expect(found !== undefined).toBe(matches(filter, topicL.join('/')));
      }),
    );
  });

  it('specificity examples: literal over +, + over #, the parent over its # child', () => {
    expect(compareSpecificity('a/b', 'a/+')).toBeLessThan(0);
    expect(compareSpecificity('a/+', 'a/#')).toBeLessThan(0);
    expect(compareSpecificity('a', 'a/#')).toBeLessThan(0);
    expect(compareSpecificity('a/b/#', 'a/#')).toBeLessThan(0);
    expect(compareSpecificity('a/b/+', 'a/+/c')).toBeLessThan(0);
    expect(compareSpecificity('#', 'a/#')).toBeGreaterThan(0);
  });

  it('a new table starts with an empty lookup cache', () => {
    const p1 = compilePolicy(1, [entry({ role: 'device', filter: 'a/#', max_qos: 0 })]);
    expect(ruleFor(p1, { role: 'device', id: 'd' }, 'a/b')?.max_qos).toBe(0);
    const p2 = compilePolicy(2, [entry({ role: 'device', filter: 'a/#', max_qos: 1 })]);
    expect(ruleFor(p2, { role: 'device', id: 'd' }, 'a/b')?.max_qos).toBe(1);
  });
});

describe('what a rule allows', () => {
  const base = { policy_id: 'x', role: 'device' as const, filter: '#', version: 1, updated_at: 0 };

  it('publish: encryption mode per role; an unknown mode refuses (fail closed)', () => {
    expect(publishHandling({ ...base, encryption: 'optional' }, 'device')).toBe('open-if-sealed');
    expect(publishHandling({ ...base, encryption: 'plaintext' }, 'device')).toBe('pass');
    expect(publishHandling({ ...base, encryption: 'required' }, 'app')).toBe('encryption');
    expect(publishHandling({ ...base, encryption: 'optional' }, 'app')).toBe('pass');
    expect(publishHandling({ ...base, encryption: 'end-to-end' }, 'device')).toBe('encryption');
    expect(deliveryFor({ ...base, encryption: 'end-to-end' }, 'app', 1, 1)).toBe('encryption');
  });

  it('QoS, retain, size and suite limits', () => {
    const rule = { ...base, encryption: 'required', max_qos: 1 as const, retain: false, max_payload: 10, suites: [2] };
    expect(headerViolation(rule, 2, false)).toBe('qos');
    expect(headerViolation(rule, 1, true)).toBe('retain');
    expect(headerViolation(rule, 1, false)).toBeUndefined();
    expect(contentViolation(rule, 11)).toBe('payload');
    expect(contentViolation(rule, 10, 1)).toBe('suite');
    expect(contentViolation(rule, 10, 2)).toBeUndefined();
    expect(headerViolation({ ...base, encryption: 'required', retain: true }, 2, true)).toBeUndefined();
  });

  it('delivery: devices sealed unless plaintext, suite checked only when sealed; apps never sealed', () => {
    const rule = { ...base, encryption: 'optional', suites: [1], max_payload: 5 };
    expect(deliveryFor(rule, 'device', 5, 1)).toBe('seal');
    expect(deliveryFor(rule, 'device', 5, 2)).toBe('suite');
    expect(deliveryFor(rule, 'device', 6, 1)).toBe('payload');
    expect(deliveryFor(rule, 'app', 5, 2)).toBe('pass');
    expect(deliveryFor({ ...base, encryption: 'plaintext' }, 'device', 5, 2)).toBe('pass');
    expect(deliveryFor({ ...base, encryption: 'required' }, 'app', 5, 1)).toBe('encryption');
  });
});

describe('filters', () => {
  it('property: two filters that both match some topic overlap', () => {
    fc.assert(
      fc.property(
        topicLevels.chain((levels) => fc.tuple(matchingFilter(levels), matchingFilter(levels))),
        ([a, b]) => {
          expect(filtersOverlap(a, b)).toBe(true);
        },
      ),
    );
  });

  it('overlap examples', () => {
    expect(filtersOverlap('devices/+/down/#', 'devices/d1/down/x')).toBe(true);
    expect(filtersOverlap('devices/d2/#', 'devices/d1/down/#')).toBe(false);
    expect(filtersOverlap('a/b', 'a/b/c')).toBe(false);
    expect(filtersOverlap('a/+', 'a/#')).toBe(true);
  });

  it('the key service refuses wildcards in the wrong place and U+0000', () => {
    for (const bad of ['a/#/b', 'a#', 'a/b#', '#/a', 'a/+b', 'a+/b', '++', 'a/\u0000'])
      expect(topicFilterProblem(bad), bad).toBeDefined();
    for (const good of ['#', '+', 'a/+/b', 'a/#', '+/+/#', '$SYS/#', 'a//b'])
      expect(topicFilterProblem(good), good).toBeUndefined();
  });
});

describe('rotation', () => {
  const base = { messages: 10_000, bytes: 1 << 24, seconds: 3600 };
  it('the tightest limits of the entries meeting the downlink space apply, never looser than the broker', () => {
    const policy = compilePolicy(1, [
      entry({ role: 'device', filter: 'devices/+/down/#', rotation: { messages: 100, seconds: 7200 } }),
      entry({ role: 'device', principal: 'd1', filter: 'devices/d1/down/x', rotation: { bytes: 4096 } }),
      entry({ role: 'device', filter: 'devices/+/up/#', rotation: { messages: 1 } }),
      entry({ role: 'app', filter: '#', rotation: { messages: 2 } }),
    ]);
    expect(rotationFor(policy, 'd1', 'devices/d1/down/#', base)).toEqual({ messages: 100, bytes: 4096, seconds: 3600 });
    expect(rotationFor(policy, 'd2', 'devices/d2/down/#', base)).toEqual({
      messages: 100,
      bytes: 1 << 24,
      seconds: 3600,
    });
    expect(rotationFor(EMPTY_POLICY, 'd1', 'devices/d1/down/#', base)).toEqual(base);
  });
});

describe('end-to-end entries', () => {
  const rule = (over: object) =>
    ({ policy_id: 'p', role: 'device', filter: '#', version: 1, updated_at: 0, ...over }) as PolicyRule;
  it('a device publish is forwarded sealed; an application under the mode, or an entry naming no app, is refused', () => {
    expect(publishHandling(rule({ encryption: 'end-to-end', app: 'vault' }), 'device')).toBe('forward-sealed');
    expect(publishHandling(rule({ encryption: 'end-to-end', app: 'vault' }), 'app', true)).toBe('encryption');
    expect(publishHandling(rule({ encryption: 'end-to-end' }), 'device')).toBe('encryption');
    expect(endToEndApp(rule({ encryption: 'end-to-end', app: 'vault' }))).toBe('vault');
    expect(endToEndApp(rule({ encryption: 'required', app: 'vault' }))).toBeUndefined();
  });
  it('the device entry decides by precedence: its own entry wins over the role-wide end-to-end one', () => {
    const policy = compilePolicy(3, [
      rule({ policy_id: 'role', filter: 'devices/+/up/secret/#', encryption: 'end-to-end', app: 'vault' }),
      rule({ policy_id: 'own', principal: 'd1', filter: 'devices/d1/up/#', encryption: 'required' }),
    ]);
    const of = (id: string) => ruleFor(policy, { role: 'device', id }, `devices/${id}/up/secret/x`);
    expect(endToEndApp(of('d2')!)).toBe('vault');
    expect(of('d1')!.policy_id).toBe('own');
  });
});
