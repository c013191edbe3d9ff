// The policy table's routes: the admin's set/list/show/delete with versions and audit records, the brokers' feed,
// and what an attacker or a careless administrator sends (other callers, other spellings, malformed entries).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsHttpError, KmsClient } from '../../kms-api/client.js';
import { MAX_POLICY_ENTRIES, type PolicyBodyJson } from '../../kms-api/policy-schemas.js';
import { brokerClient, removeDir, startTestKms, type TestKms } from '../helpers/kms.js';

let t: TestKms;
let broker: KmsClient;

beforeAll(async () => {
  t = await startTestKms();
  broker = await brokerClient(t, 'broker-policy');
});
afterAll(async () => {
  await t.stop();
  removeDir(t.dataDir);
});

async function outcome(p: Promise<unknown>): Promise<string> {
  return p.then(
    () => 'OK',
    (e: KmsHttpError) => {
      const problem = (e.details[0] as { problem?: string } | undefined)?.problem;
      return `${e.status} ${e.code}${problem ? ` ${problem}` : ''}`;
    },
  );
}

const uplinkRule: PolicyBodyJson = {
  role: 'device',
  filter: 'devices/+/up/#',
  encryption: 'required',
  suites: [2, 1],
  max_payload: 1024,
  max_qos: 1,
  retain: false,
};

describe('the admin manages the table', () => {
  it('set creates (201) then replaces (200); every change bumps the version, an unchanged set does not', async () => {
    const v0 = (await t.admin.policies()).version;
    const created = await t.admin.request<{ version: number; suites: number[] }>(
      'PUT',
      '/api/v1/admin/policies/uplink',
      uplinkRule,
    );
    expect(created.version).toBe(v0 + 1);
    expect(created.suites).toEqual([1, 2]);
    const again = await t.admin.setPolicy('uplink', { ...uplinkRule, suites: [1, 2] });
    expect(again.version).toBe(v0 + 1);
    const changed = await t.admin.setPolicy('uplink', { ...uplinkRule, max_payload: 2048 });
    expect(changed.version).toBe(v0 + 2);
    expect(await t.admin.policy('uplink')).toMatchObject({ policy_id: 'uplink', max_payload: 2048, version: v0 + 2 });
    const table = await t.admin.policies();
    expect(table.version).toBe(v0 + 2);
    expect(table.entries.map((e) => e.policy_id)).toContain('uplink');
  });

  it('delete removes the entry and bumps the version; an unknown entry is 404', async () => {
    await t.admin.setPolicy('to-delete', { role: 'app', filter: 'telemetry/#', encryption: 'plaintext' });
    const v = (await t.admin.policies()).version;
    expect((await t.admin.deletePolicy('to-delete')).version).toBe(v + 1);
    expect(await outcome(t.admin.policy('to-delete'))).toBe('404 KMS_ERR_NOT_FOUND');
    expect(await outcome(t.admin.deletePolicy('to-delete'))).toBe('404 KMS_ERR_NOT_FOUND');
  });

  it('every change is audited with the entry before and after', async () => {
    await t.admin.setPolicy('audited', {
      role: 'device',
      principal: 'dev-a',
      filter: 'devices/dev-a/#',
      encryption: 'optional',
    });
    await t.admin.setPolicy('audited', {
      role: 'device',
      principal: 'dev-a',
      filter: 'devices/dev-a/#',
      encryption: 'required',
    });
    await t.admin.deletePolicy('audited');
    const sets = (await t.admin.audit({ action: 'policy.set', device_id: 'dev-a' })).entries;
    expect(
      sets.map((e) => [
        (e.detail?.before as { encryption?: string } | null)?.encryption ?? null,
        (e.detail?.after as { encryption: string }).encryption,
      ]),
    ).toEqual([
      [null, 'optional'],
      ['optional', 'required'],
    ]);
    const deletes = (await t.admin.audit({ action: 'policy.delete', device_id: 'dev-a' })).entries;
    expect(deletes).toHaveLength(1);
    expect(deletes[0]!.actor).toBe('admin');
  });

  it('brokers poll the feed by version: the whole table when it changed, only the version when not', async () => {
    const now = await broker.policyFeed(0);
    expect(now.entries).toBeDefined();
    const same = await broker.policyFeed(now.version);
    expect(same).toEqual({ version: now.version });
    await t.admin.setPolicy('feed', { role: 'app', filter: 'feed/#', encryption: 'plaintext', max_qos: 0 });
    const next = await broker.policyFeed(now.version);
    expect(next.version).toBe(now.version + 1);
    expect(next.entries!.find((e) => e.policy_id === 'feed')).toMatchObject({ max_qos: 0 });
  });
});

describe('who may call', () => {
  it('no token, a broker token or a wrong token gets 401 on every admin policy route', async () => {
    for (const client of [t.anon, broker, new KmsClient(t.url, { token: 'test-admin-tokem' })]) {
      expect(await outcome(client.policies())).toBe('401 KMS_ERR_UNAUTHORIZED');
      expect(await outcome(client.policy('uplink'))).toBe('401 KMS_ERR_UNAUTHORIZED');
      expect(await outcome(client.setPolicy('evil', { role: 'device', filter: '#', encryption: 'plaintext' }))).toBe(
        '401 KMS_ERR_UNAUTHORIZED',
      );
      expect(await outcome(client.deletePolicy('uplink'))).toBe('401 KMS_ERR_UNAUTHORIZED');
    }
    expect(await outcome(t.admin.policy('evil'))).toBe('404 KMS_ERR_NOT_FOUND');
  });

  it('the feed is for brokers only: anonymous and admin callers get 401', async () => {
    expect(await outcome(t.anon.policyFeed(0))).toBe('401 KMS_ERR_UNAUTHORIZED');
    expect(await outcome(t.admin.policyFeed(0))).toBe('401 KMS_ERR_UNAUTHORIZED');
  });

  it.each([
    '/api/v1/admin/%70olicies',
    '/api/v1//admin/./policies/',
    '/api/v1/admin/x/../policies',
    '/API/V1/ADMIN/POLICIES',
    '/api/v1/admin;p=1/policies',
    '/api/v1%2Fadmin%2Fpolicies',
  ])('the spelling %s reaches the admin route and its credential check, or nothing', async (path) => {
    expect(await outcome(t.anon.request('GET', path))).toBe('401 KMS_ERR_UNAUTHORIZED');
    expect(await outcome(broker.request('GET', path))).toBe('401 KMS_ERR_UNAUTHORIZED');
    expect(
      await outcome(broker.request('PUT', `${path}/spelled`, { role: 'device', filter: '#', encryption: 'plaintext' })),
    ).toBe('401 KMS_ERR_UNAUTHORIZED');
    expect(await outcome(t.admin.request('GET', path))).toBe('OK');
  });
});

describe('malformed and contradictory entries are refused and change nothing', () => {
  const ok: PolicyBodyJson = { role: 'device', filter: 'devices/+/up/#', encryption: 'required' };
  it.each([
    ['no encryption', { role: 'device', filter: '#' }, '400 KMS_ERR_BAD_REQUEST'],
    ['an unknown mode', { ...ok, encryption: 'broker-blind' }, '400 KMS_ERR_BAD_REQUEST'],
    ['an unknown field', { ...ok, sneaky: true }, '400 KMS_ERR_BAD_REQUEST'],
    ['an unknown role', { ...ok, role: 'broker' }, '400 KMS_ERR_BAD_REQUEST'],
    ['an unknown suite', { ...ok, suites: [3] }, '400 KMS_ERR_BAD_REQUEST'],
    ['no suites', { ...ok, suites: [] }, '400 KMS_ERR_BAD_REQUEST'],
    ['a suite twice', { ...ok, suites: [1, 1] }, '400 KMS_ERR_BAD_REQUEST'],
    ['QoS 3', { ...ok, max_qos: 3 }, '400 KMS_ERR_BAD_REQUEST'],
    ['a negative size', { ...ok, max_payload: -1 }, '400 KMS_ERR_BAD_REQUEST'],
    ['a size beyond MQTT', { ...ok, max_payload: 268_435_456 }, '400 KMS_ERR_BAD_REQUEST'],
    ['a fractional size', { ...ok, max_payload: 1.5 }, '400 KMS_ERR_BAD_REQUEST'],
    ['empty rotation', { ...ok, rotation: {} }, '400 KMS_ERR_BAD_REQUEST'],
    ['zero rotation', { ...ok, rotation: { messages: 0 } }, '400 KMS_ERR_BAD_REQUEST'],
    ['a bad principal id', { ...ok, principal: '../dev' }, '400 KMS_ERR_BAD_REQUEST'],
    ['an empty filter', { ...ok, filter: '' }, '400 KMS_ERR_BAD_REQUEST'],
    ['a filter too long', { ...ok, filter: 'a/'.repeat(600) }, '400 KMS_ERR_BAD_REQUEST'],
    ["'#' not last", { ...ok, filter: 'devices/#/up' }, '400 KMS_ERR_POLICY_INVALID filter_wildcard'],
    ["'#' inside a level", { ...ok, filter: 'devices/x#' }, '400 KMS_ERR_POLICY_INVALID filter_wildcard'],
    ["'+' inside a level", { ...ok, filter: 'devices/+x/up' }, '400 KMS_ERR_POLICY_INVALID filter_wildcard'],
    ['U+0000', { ...ok, filter: 'devices/\u0000' }, '400 KMS_ERR_POLICY_INVALID filter_null'],
    [
      'plaintext with suites',
      { ...ok, encryption: 'plaintext', suites: [1] },
      '400 KMS_ERR_POLICY_INVALID plaintext_with_suites',
    ],
    [
      'plaintext with rotation',
      { ...ok, encryption: 'plaintext', rotation: { messages: 5 } },
      '400 KMS_ERR_POLICY_INVALID plaintext_with_rotation',
    ],
    [
      'end-to-end naming no application',
      { ...ok, encryption: 'end-to-end' },
      '400 KMS_ERR_POLICY_INVALID end_to_end_without_app',
    ],
    [
      'end-to-end for an application role',
      { ...ok, role: 'app', encryption: 'end-to-end', app: 'vault' },
      '400 KMS_ERR_POLICY_INVALID end_to_end_role',
    ],
    [
      'end-to-end with rotation',
      { ...ok, encryption: 'end-to-end', app: 'vault', rotation: { messages: 5 } },
      '400 KMS_ERR_POLICY_INVALID end_to_end_with_rotation',
    ],
    ['an app on another mode', { ...ok, app: 'vault' }, '400 KMS_ERR_POLICY_INVALID app_without_end_to_end'],
    ['an app id that is no id', { ...ok, encryption: 'end-to-end', app: '../x' }, '400 KMS_ERR_BAD_REQUEST'],
    ['an array', [ok], '400 KMS_ERR_BAD_REQUEST'],
    ['null', null, '400 KMS_ERR_BAD_REQUEST'],
  ])('%s', async (_name, body, expected) => {
    const before = await t.admin.policies();
    expect(await outcome(t.admin.request('PUT', '/api/v1/admin/policies/bad', body))).toBe(expected);
    expect(await t.admin.policies()).toEqual(before);
  });

  it('a bad policy id, unparsable JSON and an oversized body', async () => {
    const put = (path: string, body: string) =>
      fetch(`${t.url}${path}`, {
        method: 'PUT',
        headers: { authorization: 'Bearer test-admin-token', 'content-type': 'application/json' },
        body,
      }).then(async (r) => `${r.status} ${((await r.json()) as { code: string }).code}`);
    expect(await put('/api/v1/admin/policies/-bad', JSON.stringify(ok))).toBe('400 KMS_ERR_BAD_REQUEST');
    expect(await put('/api/v1/admin/policies/truncated', '{"role":"device","filter":"#"')).toBe(
      '400 KMS_ERR_BAD_REQUEST',
    );
    const huge = JSON.stringify({ ...ok, filter: 'a'.repeat(2 * 1024 * 1024) });
    expect(await put('/api/v1/admin/policies/huge', huge)).toBe('413 KMS_ERR_TOO_LARGE');
    expect(await outcome(t.admin.policy('truncated'))).toBe('404 KMS_ERR_NOT_FOUND');
  });

  it('end-to-end entries that can govern one device name one application (one end-to-end key per session)', async () => {
    const e2e = (over: object) => ({ role: 'device', encryption: 'end-to-end', ...over });
    const set = (id: string, body: object) => outcome(t.admin.request('PUT', `/api/v1/admin/policies/${id}`, body));
    expect(await set('e2e-a', e2e({ principal: 'd-a', filter: 'devices/d-a/up/s/#', app: 'app-a' }))).toBe('OK');
    // Another device's entry may name another application.
    expect(await set('e2e-b', e2e({ principal: 'd-b', filter: 'devices/d-b/up/s/#', app: 'app-b' }))).toBe('OK');
    const before = await t.admin.policies();
    // The same device, or every device (a role-wide entry), with another application: refused, nothing changes.
    for (const body of [
      e2e({ principal: 'd-a', filter: 'devices/d-a/down/s/#', app: 'app-b' }),
      e2e({ filter: 'devices/+/up/other/#', app: 'app-a' }),
    ])
      expect(await set('e2e-c', body)).toBe('409 KMS_ERR_CONFLICT end_to_end_app_conflict');
    expect(await t.admin.policies()).toEqual(before);
    // The same application for more of that device's topics is fine; so is changing the one entry that names it.
    expect(await set('e2e-c', e2e({ principal: 'd-a', filter: 'devices/d-a/down/s/#', app: 'app-a' }))).toBe('OK');
    expect(await set('e2e-b', e2e({ principal: 'd-b', filter: 'devices/d-b/up/s/#', app: 'app-c' }))).toBe('OK');
    for (const id of ['e2e-a', 'e2e-b', 'e2e-c']) await t.admin.request('DELETE', `/api/v1/admin/policies/${id}`);
  });

  it('a second entry for the same subject and filter is a conflict; the same subject with another filter is not', async () => {
    await t.admin.setPolicy('first', { role: 'app', principal: 'app-1', filter: 'x/#', encryption: 'plaintext' });
    expect(
      await outcome(
        t.admin.setPolicy('second', { role: 'app', principal: 'app-1', filter: 'x/#', encryption: 'optional' }),
      ),
    ).toBe('409 KMS_ERR_CONFLICT duplicate_subject_filter');
    expect(await outcome(t.admin.setPolicy('second', { role: 'app', filter: 'x/#', encryption: 'optional' }))).toBe(
      'OK',
    );
    expect(
      await outcome(
        t.admin.setPolicy('second', { role: 'app', principal: 'app-2', filter: 'x/#', encryption: 'optional' }),
      ),
    ).toBe('OK');
  });
});

describe('the table is bounded', () => {
  it(`holds at most ${MAX_POLICY_ENTRIES} entries; a replacement is still accepted when it is full`, async () => {
    const policies = t.kms.context.policies;
    const have = (await t.admin.policies()).entries.length;
    t.kms.context.store.db.transaction(() => {
      for (let i = have; i < MAX_POLICY_ENTRIES; i++)
        policies.set(
          `bulk-${i}`,
          {
            role: 'device',
            principal: `dev-${i}`,
            filter: `devices/dev-${i}/up/#`,
            encryption: 'required',
            max_qos: 1,
          },
          'admin',
        );
    })();
    expect(
      await outcome(t.admin.setPolicy('one-more', { role: 'app', filter: 'more/#', encryption: 'plaintext' })),
    ).toBe('409 KMS_ERR_CONFLICT table_full');
    expect(
      await outcome(t.admin.setPolicy(`bulk-${have}`, { role: 'app', filter: 'more/#', encryption: 'plaintext' })),
    ).toBe('OK');
    const feed = await broker.policyFeed(0);
    expect(feed.entries).toHaveLength(MAX_POLICY_ENTRIES);
  });
});
