// One device-id rule (docs/PROTOCOL.md §14), held by every place that accepts an id: each vector of
// test/vectors/qkey-device-ids.json goes through the spec's code, the key service, the chip and the broker.
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientIdProblem } from '../../broker/client-id.js';
import { KmsHttpError } from '../../kms-api/client.js';
import { ID_PATTERN } from '../../kms-api/common-schemas.js';
import {
  assertDeviceId,
  DEVICE_ID_MAX_LENGTH,
  DEVICE_ID_PATTERN,
  deviceIdProblem,
  isValidDeviceId,
} from '../../protocol/index.js';
import { newChip } from '../helpers/chip.js';
import { RawMqtt } from '../helpers/raw-mqtt.js';
import { startTestSystem, type TestSystem } from '../helpers/system.js';
import { loadVectors } from '../helpers/vectors.js';

interface IdVector {
  id: string;
  valid: boolean;
  why: string;
}
const vectors = loadVectors<IdVector>('qkey-device-ids.json').vectors;
const valid = vectors.filter((v) => v.valid);
const invalid = vectors.filter((v) => !v.valid);
const label = (v: IdVector) => `${JSON.stringify(v.id.length > 24 ? `${v.id.slice(0, 24)}...` : v.id)} (${v.why})`;
const doc = readFileSync(new URL('../../docs/PROTOCOL.md', import.meta.url), 'utf8');

let sys: TestSystem;
beforeAll(async () => {
  sys = await startTestSystem();
});
afterAll(async () => {
  await sys.stop();
});

describe('the spec (protocol/device-id.ts and docs/PROTOCOL.md §14)', () => {
  it('the vectors cover both sides of every bound', () => {
    expect(valid.some((v) => v.id.length === DEVICE_ID_MAX_LENGTH)).toBe(true);
    expect(invalid.some((v) => v.id.length === DEVICE_ID_MAX_LENGTH + 1)).toBe(true);
    expect(invalid.some((v) => v.id === '')).toBe(true);
  });

  it.each(vectors.map((v) => [label(v), v] as const))('%s', (_, v) => {
    expect(isValidDeviceId(v.id)).toBe(v.valid);
    expect(deviceIdProblem(v.id) === undefined).toBe(v.valid);
    if (v.valid) expect(assertDeviceId(v.id)).toBe(v.id);
    else expect(() => assertDeviceId(v.id)).toThrow(/PROTO_ERR_ARGUMENT|not valid/);
    // A device id is also a well-formed client id at the broker; an invalid one is not, unless it has an
    // application's shape <appId>/<name>, which the user name check then refuses.
    if (v.valid) expect(clientIdProblem(v.id)).toBeUndefined();
  });

  it('the document states the rule the code enforces, and the key service validates with the same pattern', () => {
    const section = doc.slice(doc.indexOf('\n## 14. '), doc.indexOf('\n## 15. '));
    expect(section).toContain(`\n${DEVICE_ID_PATTERN}\n`);
    expect(section).toContain(`${DEVICE_ID_MAX_LENGTH}`);
    expect(section).toContain('test/vectors/qkey-device-ids.json');
    expect(ID_PATTERN).toBe(DEVICE_ID_PATTERN);
  });
});

describe('the key service (device registration)', () => {
  it.each(vectors.map((v) => [label(v), v] as const))('%s', async (_, v) => {
    const outcome = await sys.kms.admin.registerDevice(v.id).then(
      (d) => d.device_id,
      (err: unknown) => (err instanceof KmsHttpError ? err.status : err),
    );
    expect(outcome).toBe(v.valid ? v.id : 400);
  });

  it('ids are case-sensitive: Case-1 and case-1 are two devices', async () => {
    await sys.kms.admin.registerDevice('Case-1');
    await sys.kms.admin.registerDevice('case-1');
    expect((await sys.kms.admin.device('Case-1')).device_id).toBe('Case-1');
    expect((await sys.kms.admin.device('case-1')).device_id).toBe('case-1');
  });

  it.each(invalid.filter((v) => v.id !== '').map((v) => [label(v), v] as const))(
    "in a path, %s is never found: 400 (404 with a '/', which splits the path)",
    async (_, v) => {
      const status = await sys.kms.admin.device(v.id).then(
        () => 200,
        (err: unknown) => (err instanceof KmsHttpError ? err.status : err),
      );
      // A '/' (sent as %2F) is read as a path separator (key-service/canonical-url.ts): no such route.
      expect(status).toBe(v.id.includes('/') ? 404 : 400);
    },
  );

  it.each(invalid.map((v) => [label(v), v] as const))('login challenge for %s: 400', async (_, v) => {
    const status = await sys.kms.anon.challenge(v.id).then(
      () => 200,
      (err: unknown) => (err instanceof KmsHttpError ? err.status : err),
    );
    expect(status).toBe(400);
  });
});

describe('the chip (personalisation)', () => {
  it.each(invalid.map((v) => [label(v), v] as const))('%s is refused', (_, v) => {
    expect(() => newChip(v.id)).toThrow(/PROTO_ERR_ARGUMENT|not valid/);
  });
});

describe('the broker (CONNECT with client id = user name = the id)', () => {
  it.each(valid.map((v) => [label(v), v] as const))('%s: filled, logged in and connected (CONNACK 0)', async (_, v) => {
    const chip = await sys.device(v.id, 1, 1); // registered by the key-service test above, or here
    const client = await sys.connectDevice(chip);
    expect(client.connected).toBe(true);
    await client.endAsync();
  });

  it.each(invalid.map((v) => [label(v), v] as const))('%s: CONNACK 2 identifier rejected', async (_, v) => {
    const { raw, returnCode } = await RawMqtt.connect(sys.mqttUrl, { clientId: v.id, username: v.id, password: 'x' });
    expect(returnCode).toBe(2);
    await raw.closedWithin(5000);
  });
});
