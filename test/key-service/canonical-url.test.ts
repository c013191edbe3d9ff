// The request target a route is matched on: every spelling of a path becomes one, and nothing else changes.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { canonicalUrl, fullCanonicalUrl } from '../../key-service/canonical-url.js';

describe('canonicalUrl', () => {
  it.each([
    ['/api/v1/admin/devices', '/api/v1/admin/devices'],
    ['/api/v1/%61dmin/devices', '/api/v1/admin/devices'],
    ['/api/v1%2Fadmin%2fdevices', '/api/v1/admin/devices'],
    ['/api//v1///admin/devices/', '/api/v1/admin/devices'],
    ['/api/v1/./admin/zz/../devices', '/api/v1/admin/devices'],
    ['/api/v1/zz/%2e%2E/admin/devices', '/api/v1/admin/devices'],
    ['/api/v1/admin;a=1/devices;jsessionid=2', '/api/v1/admin/devices'],
    ['/api/v1/admin;x%2F/devices', '/api/v1/admin/devices'],
    ['http://127.0.0.1:7070/api/v1/admin/devices?a=1', '/api/v1/admin/devices?a=1'],
    ['/../../etc/passwd', '/etc/passwd'],
    ['', '/'],
    ['/', '/'],
  ])('%s -> %s', (target, canonical) => {
    expect(canonicalUrl(target)).toBe(canonical);
  });

  it('keeps the query as sent, and reserved characters other than / encoded', () => {
    expect(canonicalUrl('/a?b=/../c;d')).toBe('/a?b=/../c;d');
    expect(canonicalUrl('/keys/a%3Fb%23c%25d%3B/status')).toBe('/keys/a%3Fb%23c%25d%3B/status');
  });

  it('decodes once: a double-encoded letter stays a literal percent sign', () => {
    expect(canonicalUrl('/api/v1/%2561dmin/devices')).toBe('/api/v1/%2561dmin/devices');
  });

  it('leaves the case of every segment alone (parameters such as device ids are case-sensitive)', () => {
    expect(canonicalUrl('/API/v1/keys/Dev-A/status')).toBe('/API/v1/keys/Dev-A/status');
  });

  it('gives what the full algorithm gives for any target, including those it returns unchanged', () => {
    const piece = fc.constantFrom('/', '.', '..', '%', '%2e', '%2F', '%41', ';', ';x', '?', 'a', 'Z', '-', ':', '//');
    const target = fc.array(piece, { maxLength: 12 }).map((parts) => parts.join(''));
    fc.assert(
      fc.property(target, (t) => {
        expect(canonicalUrl(t)).toBe(fullCanonicalUrl(t));
        expect(canonicalUrl(`/${t}`)).toBe(fullCanonicalUrl(`/${t}`));
      }),
      { numRuns: 5000 },
    );
    expect(canonicalUrl('/api/v1/keys/dev-1/enc_keys')).toBe('/api/v1/keys/dev-1/enc_keys');
  });
});
