// The console's policy pages over real HTTP: the table with its version, set (create, then change), show, delete
// with confirmation, every change audited as the admin API's (actor admin:console), and the admin API's own checks.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestKms, type TestKms } from '../helpers/kms.js';
import { ConsoleBrowser } from './client.js';

let t: TestKms;

beforeAll(async () => {
  t = await startTestKms({ console: { enabled: true } });
});
afterAll(async () => {
  await t.stop();
});

async function signedIn(): Promise<ConsoleBrowser> {
  const b = new ConsoleBrowser(t.url);
  expect((await b.login('test-admin-token')).status).toBe(303);
  return b;
}

describe('console policies', () => {
  it('lists the table with its version, sets, changes, shows and deletes an entry, each change audited', async () => {
    const b = await signedIn();
    const empty = await b.get('/console/policies');
    expect(empty.status).toBe(200);
    expect(empty.flat).toContain('<strong id="policy-version">0</strong>');
    expect(empty.flat).toContain('No entries');
    expect(empty.flat).toContain('<a href="/console/policies" aria-current="page">Policies</a>');
    const csrf = await b.csrf('/console/policies');

    const set = await b.post('/console/policies', {
      csrf,
      id: 'uplink-limits',
      role: 'device',
      principal: '',
      filter: 'devices/+/up/#',
      encryption: 'required',
      suites: 'SM4-GCM, 2',
      max_payload: '4096',
      max_qos: '1',
      retain: 'no',
      rotate_messages: '',
      rotate_bytes: '',
      rotate_seconds: '600',
    });
    expect(set.status).toBe(303);
    expect(set.headers.location).toBe('/console/policies/uplink-limits');
    expect(await t.admin.policy('uplink-limits')).toMatchObject({
      role: 'device',
      filter: 'devices/+/up/#',
      encryption: 'required',
      suites: [1, 2],
      max_payload: 4096,
      max_qos: 1,
      retain: false,
      rotation: { seconds: 600 },
      version: 1,
    });
    const entry = await b.get('/console/policies/uplink-limits');
    expect(entry.status).toBe(200);
    expect(entry.flat).toContain('<dd>every device</dd>');
    expect(entry.flat).toContain('<dd>SM4-GCM, SM4-CTR-HMAC-SM3</dd>');
    // The edit form carries the entry as it is.
    expect(entry.flat).toContain('<input type="hidden" name="id" value="uplink-limits">');
    expect(entry.flat).toMatch(/<option value="no" selected>refused<\/option>/);

    // Changed: only the fields typed count; the rest is gone (the form is the whole entry, as PUT is).
    const change = await b.post('/console/policies', {
      csrf,
      id: 'uplink-limits',
      role: 'app',
      principal: 'dashboard',
      filter: 'devices/+/up/#',
      encryption: 'optional',
    });
    expect(change.status).toBe(303);
    expect(await t.admin.policy('uplink-limits')).toEqual(
      expect.objectContaining({ role: 'app', principal: 'dashboard', encryption: 'optional', version: 2 }),
    );
    expect(await t.admin.policy('uplink-limits')).not.toHaveProperty('suites');
    const list = await b.get('/console/policies');
    expect(list.flat).toContain('<strong id="policy-version">2</strong>');
    expect(list.flat).toContain('app<code>dashboard</code>');

    const confirm = await b.get('/console/policies/uplink-limits/delete');
    expect(confirm.status).toBe(200);
    expect(confirm.flat).toContain('Delete entry uplink-limits');
    expect(await t.admin.policy('uplink-limits')).toMatchObject({ version: 2 }); // the GET changed nothing
    const del = await b.post('/console/policies/uplink-limits/delete', { csrf });
    expect(del.status).toBe(303);
    expect(del.headers.location).toBe('/console/policies');
    expect((await t.admin.policies()).version).toBe(3);
    expect((await b.get('/console/policies/uplink-limits')).status).toBe(404);

    const audit = await t.admin.audit({ action: 'policy.set' });
    expect(audit.entries.map((e) => [e.actor, (e.detail as { version: number }).version])).toEqual([
      ['admin:console', 1],
      ['admin:console', 2],
    ]);
    expect(audit.entries[1]!.detail).toMatchObject({
      policy_id: 'uplink-limits',
      before: { role: 'device', version: 1 },
      after: { role: 'app', principal: 'dashboard', version: 2 },
    });
    const deleted = await t.admin.audit({ action: 'policy.delete' });
    expect(deleted.entries[0]).toMatchObject({
      actor: 'admin:console',
      detail: { policy_id: 'uplink-limits', version: 3 },
    });
  });

  it("refuses what the admin API refuses, with the API's reasons, and changes nothing", async () => {
    const b = await signedIn();
    const csrf = await b.csrf('/console/policies');
    const before = (await t.admin.policies()).version;
    const base = { csrf, id: 'bad', role: 'device', filter: 'a/#', encryption: 'required' };
    const refused: Array<[Record<string, string>, RegExp]> = [
      [{ filter: 'a/#/b' }, /whole level/],
      [{ filter: 'a/b#' }, /whole level/],
      [{ filter: 'x'.repeat(1025) }, /filter/],
      [{ filter: 'a\u0000b' }, /U\+0000/],
      [{ encryption: 'sealed' }, /encryption/],
      [{ role: 'broker' }, /role/],
      [{ principal: '-x' }, /principal/],
      [{ suites: '3' }, /suites/],
      [{ suites: 'AES' }, /suites/],
      [{ encryption: 'plaintext', suites: '1' }, /cannot name envelope suites/],
      [{ encryption: 'plaintext', rotate_seconds: '60' }, /rotation/],
      [{ max_payload: '268435456' }, /max_payload/],
      [{ max_payload: '1e3' }, /max_payload/],
      [{ max_qos: '3' }, /max_qos/],
      [{ retain: 'yep' }, /retain/],
      [{ rotate_messages: '0' }, /rotation/],
      [{ id: 'has space' }, /id/],
    ];
    for (const [fields, reason] of refused) {
      const r = await b.post('/console/policies', { ...base, ...fields });
      expect(r.status, JSON.stringify(fields)).toBe(400);
      expect(r.flat, JSON.stringify(fields)).toMatch(reason);
      expect(r.flat).toContain('Nothing was changed.');
    }
    // Another entry for the same subject and filter: a conflict, as at the API.
    await t.admin.setPolicy('first', { role: 'device', filter: 'same/#', encryption: 'required' });
    const dup = await b.post('/console/policies', { ...base, id: 'second', filter: 'same/#' });
    expect(dup.status).toBe(409);
    expect((await t.admin.policies()).version).toBe(before + 1);
    expect((await t.admin.policies()).entries.map((e) => e.policy_id)).not.toContain('bad');
    expect((await t.admin.policies()).entries.map((e) => e.policy_id)).not.toContain('second');
    expect((await b.post('/console/policies/nothing-here/delete', { csrf })).status).toBe(404);
  });
});
