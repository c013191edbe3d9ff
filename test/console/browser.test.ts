// The console in a real headless browser (Debian's chromium, driven by puppeteer-core): sign in, add an app and
// see its secret once, revoke a device through its confirmation and see it revoked, page the audit log, set a
// policy entry; the browser reports no CSP violation and no script can read the session cookie. Screenshots go to
// test-artifacts/.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { provisionDevice, startTestKms, type TestKms } from '../helpers/kms.js';

/** Debian's package; .ci/run installs it. */
const CHROMIUM = process.env.QKEY_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = join(import.meta.dirname, '..', '..', 'test-artifacts');

let t: TestKms;
let browser: Browser;
let page: Page;
const consoleMessages: string[] = [];

beforeAll(async () => {
  t = await startTestKms({ console: { enabled: true } });
  await provisionDevice(t.admin, 'dev-browser', 4, 4);
  for (let i = 0; i < 55; i++) await t.admin.registerDevice(`fleet-${String(i).padStart(2, '0')}`);
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Root in CI containers has no user namespace for Chromium's sandbox; the page is our own console.
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-dev-shm-usage'],
  });
  page = await browser.newPage();
  await page.setViewport({ width: 1200, height: 900 });
  page.on('console', (m) => consoleMessages.push(m.text()));
  mkdirSync(ARTIFACTS, { recursive: true });
}, 30_000);
afterAll(async () => {
  await browser?.close();
  await t?.stop();
});

const heading = () => page.$eval('h1', (h) => h.textContent?.trim());
async function submit(selector: string): Promise<void> {
  await Promise.all([page.waitForNavigation(), page.click(selector)]);
}

describe('console in headless Chromium', () => {
  it('signs in, adds an app, revokes a device, pages the audit log, sets a policy', { timeout: 30_000 }, async () => {
    // Signing in: the console's address leads to the form; the token goes in a password field, never the URL.
    await page.goto(`${t.url}/console/`);
    expect(await heading()).toBe('Sign in');
    await page.type('#token', 'test-admin-token');
    await submit('button[type=submit]');
    expect(await heading()).toBe('Devices');
    expect(page.url()).toBe(`${t.url}/console/devices`);
    expect(await page.evaluate('document.cookie')).toBe(''); // HttpOnly
    expect(await page.$eval('main', (m) => m.textContent)).toContain('dev-browser');

    // An app: its secret is shown once, works, and is gone from the next view.
    await submit('nav a[href="/console/apps"]');
    await page.type('#id', 'app-browser');
    await submit('form[action="/console/apps"] button[type=submit]');
    const secret = await page.$eval('#client-secret', (c) => c.textContent!.trim());
    expect(secret).toMatch(/^[A-Za-z0-9_-]{32}$/);
    await page.screenshot({ path: join(ARTIFACTS, 'console-app-secret.png'), fullPage: true });
    expect((await t.anon.clientToken('app-browser', secret)).access_token).toBeTruthy();
    await page.reload();
    expect(await page.content()).not.toContain(secret);

    // A device: revoked only after its confirmation, then shown revoked.
    await page.goto(`${t.url}/console/devices/dev-browser`);
    await submit('a[href="/console/devices/dev-browser/revoke"]');
    expect(await heading()).toBe('Revoke device dev-browser?');
    expect((await t.admin.device('dev-browser')).state).toBe('active');
    await page.type('#reason', 'browser test');
    await submit('button.danger');
    expect(page.url()).toBe(`${t.url}/console/devices/dev-browser`);
    expect(await page.$eval('.state-revoked', (s) => s.textContent)).toBe('revoked');
    expect((await t.admin.device('dev-browser')).state).toBe('revoked');
    await page.screenshot({ path: join(ARTIFACTS, 'console-device-revoked.png'), fullPage: true });

    // The audit log, newest first, then its older page.
    await submit('nav a[href="/console/audit"]');
    const ids = () => page.$$eval('tbody tr td.num:first-child', (cells) => cells.map((c) => Number(c.textContent)));
    const first = await ids();
    expect(first).toHaveLength(50);
    expect(first).toEqual([...first].sort((a, b) => b - a));
    expect(await page.$eval('tbody tr td:nth-child(4)', (c) => c.textContent)).toBe('device.revoke');
    await submit('a[rel=next]');
    const second = await ids();
    expect(second.length).toBeGreaterThan(0);
    expect(Math.max(...second)).toBeLessThan(Math.min(...first));
    await page.screenshot({ path: join(ARTIFACTS, 'console-audit-older.png'), fullPage: true });

    // A policy entry, set through the form: the brokers' table moves to its next version, audited.
    await submit('nav a[href="/console/policies"]');
    expect(await heading()).toBe('Policies');
    await page.type('#id', 'browser-limits');
    await page.select('#role', 'app');
    await page.type('#filter', 'devices/+/up/#');
    await page.select('#encryption', 'required');
    await page.type('#max_payload', '512');
    await submit('form[action="/console/policies"] button[type=submit]');
    expect(page.url()).toBe(`${t.url}/console/policies/browser-limits`);
    expect(await heading()).toBe('Policy browser-limits');
    expect(await t.admin.policy('browser-limits')).toMatchObject({
      role: 'app',
      filter: 'devices/+/up/#',
      encryption: 'required',
      max_payload: 512,
      version: 1,
    });
    expect((await t.admin.audit({ action: 'policy.set' })).entries[0]).toMatchObject({ actor: 'admin:console' });
    await page.screenshot({ path: join(ARTIFACTS, 'console-policy-set.png'), fullPage: true });

    // Logging out ends the session: the console leads back to the form.
    await submit('form[action="/console/logout"] button');
    expect(await heading()).toBe('Sign in');
    await page.goto(`${t.url}/console/devices`);
    expect(await heading()).toBe('Sign in');

    // The stylesheet loaded under the CSP, and nothing was refused by it.
    expect(consoleMessages.filter((m) => /Content Security Policy|Refused/i.test(m))).toEqual([]);
  });
});
