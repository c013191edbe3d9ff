// The device login proof and its wire encodings (docs/PROTOCOL.md §13): the worked vectors of
// test/vectors/qkey-login.json on both backends, built again from the spec's text, printed in the document, and
// the key service accepting exactly the documented encodings.
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsHttpError } from '../../kms-api/client.js';
import {
  LOGIN_CHALLENGE_LENGTH,
  loginProof,
  nativeBackend,
  portableBackend,
  ProtocolError,
} from '../../protocol/index.js';
import { provisionDevice, type ProvisionedDevice, removeDir, startTestKms, type TestKms } from '../helpers/kms.js';
import { hex, loadVectors, toHex } from '../helpers/vectors.js';

interface LoginVector {
  name: string;
  loginKey: string;
  deviceId: string;
  challenge: string;
  challengeBase64: string;
  macInput: string;
  mac: string;
  macBase64: string;
  tokenRequest: string;
}
const { vectors } = loadVectors<LoginVector>('qkey-login.json');
const doc = readFileSync(new URL('../../docs/PROTOCOL.md', import.meta.url), 'utf8');
const section13 = doc.slice(doc.indexOf('\n## 13. '), doc.indexOf('\n## 14. '));

describe('worked vectors', () => {
  it.each(vectors.map((v) => [v.name, v] as const))('%s', (_, v) => {
    // The MAC input, from the words of §13: "qkey-mqtt/login/v1" || u16 len(deviceId) || deviceId || challenge.
    const id = Buffer.from(v.deviceId, 'ascii');
    const length = Buffer.from([id.length >> 8, id.length & 0xff]);
    const input = Buffer.concat([
      Buffer.from('qkey-mqtt/login/v1', 'ascii'),
      length,
      id,
      Buffer.from(hex(v.challenge)),
    ]);
    expect(input.toString('hex')).toBe(v.macInput);
    for (const backend of [nativeBackend, portableBackend]) {
      expect(toHex(backend.hmacSm3(hex(v.loginKey), input))).toBe(v.mac);
      expect(toHex(loginProof(hex(v.loginKey), v.deviceId, hex(v.challenge), backend))).toBe(v.mac);
    }
    // Standard base64 with padding (RFC 4648 §4), as the key service sends and expects it.
    expect(Buffer.from(hex(v.challenge)).toString('base64')).toBe(v.challengeBase64);
    expect(Buffer.from(hex(v.mac)).toString('base64')).toBe(v.macBase64);
    expect(JSON.parse(v.tokenRequest)).toEqual({
      grant_type: 'device_challenge',
      device_id: v.deviceId,
      challenge: v.challengeBase64,
      mac: v.macBase64,
    });
  });

  it('between them, the base64 strings use both characters that differ from base64url', () => {
    const all = vectors.map((v) => v.challengeBase64 + v.macBase64).join('');
    expect(all).toContain('+');
    expect(all).toContain('/');
  });

  it('docs/PROTOCOL.md §13 prints every vector', () => {
    for (const v of vectors) {
      for (const value of [v.loginKey, v.challengeBase64, v.mac, v.macBase64]) expect(section13).toContain(value);
    }
    expect(section13).toContain(vectors[0]!.tokenRequest);
  });
});

describe('loginProof', () => {
  it('binds the device id and the challenge', () => {
    const v = vectors[0]!;
    const key = hex(v.loginKey);
    expect(toHex(loginProof(key, 'dev-0002', hex(v.challenge)))).not.toBe(v.mac);
    expect(toHex(loginProof(key, v.deviceId, new Uint8Array(32).fill(1)))).not.toBe(v.mac);
  });

  it('refuses wrong key and challenge lengths and an empty device id', () => {
    const key = hex(vectors[0]!.loginKey);
    expect(() => loginProof(key.subarray(1), 'd', Buffer.alloc(32))).toThrow(ProtocolError);
    expect(() => loginProof(key, 'd', Buffer.alloc(31))).toThrow(ProtocolError);
    expect(() => loginProof(key, '', Buffer.alloc(32))).toThrow(ProtocolError);
  });
});

describe('the key service takes exactly the documented encodings', () => {
  let t: TestKms;
  let dev: ProvisionedDevice;
  beforeAll(async () => {
    t = await startTestKms();
    dev = await provisionDevice(t.admin, 'dev-encodings', 1, 1);
  });
  afterAll(async () => {
    await t.stop();
    removeDir(t.dataDir);
  });

  /** A fresh challenge as the key service sends it, and the proof over it. */
  async function fresh(): Promise<{ challenge: string; mac: Buffer }> {
    const { challenge } = await t.anon.challenge(dev.deviceId);
    const bytes = Buffer.from(challenge, 'base64');
    return { challenge, mac: Buffer.from(loginProof(dev.loginKey, dev.deviceId, bytes)) };
  }
  const status = (p: Promise<unknown>) =>
    p.then(
      () => 200,
      (err: unknown) => (err instanceof KmsHttpError ? err.status : err),
    );

  it('the challenge: 32 bytes, standard base64, padded (44 characters)', async () => {
    for (let i = 0; i < 20; i++) {
      const { challenge } = await t.anon.challenge(dev.deviceId);
      expect(challenge).toMatch(/^[A-Za-z0-9+/]{43}=$/);
      expect(Buffer.from(challenge, 'base64')).toHaveLength(LOGIN_CHALLENGE_LENGTH);
      expect(Buffer.from(challenge, 'base64').toString('base64')).toBe(challenge);
    }
  });

  it('the MAC in standard padded base64 is accepted', async () => {
    const { challenge, mac } = await fresh();
    expect(await status(t.anon.deviceToken(dev.deviceId, challenge, mac.toString('base64')))).toBe(200);
  });

  it('the MAC in base64url, without padding, or with nonzero unused bits is refused (400)', async () => {
    const spellings = (mac: Buffer): string[] => {
      const standard = mac.toString('base64');
      const last = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'.indexOf(standard[42]!);
      const noncanonical = `${standard.slice(0, 42)}${'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'[last + 1]}=`;
      return [mac.toString('base64url'), standard.slice(0, 43), noncanonical, `${standard}=`, ` ${standard}`];
    };
    for (let i = 0; i < 4; i++) {
      const { challenge, mac } = await fresh();
      for (const spelling of spellings(mac)) {
        if (spelling === mac.toString('base64')) continue; // base64url equals base64 when neither '+' nor '/' occurs
        // Same bytes once decoded leniently: only the spelling is wrong.
        expect(await status(t.anon.deviceToken(dev.deviceId, challenge, spelling)), spelling).toBe(400);
      }
    }
  });

  it('the challenge must come back exactly as it was sent', async () => {
    const { challenge, mac } = await fresh();
    expect(await status(t.anon.deviceToken(dev.deviceId, challenge.slice(0, 43), mac.toString('base64')))).toBe(400);
    // The same bytes in base64url (a challenge with '+' or '/' in it, as about three in four are): refused.
    let other = await fresh();
    for (let i = 0; i < 50 && !/[+/]/.test(other.challenge); i++) other = await fresh();
    const url = `${Buffer.from(other.challenge, 'base64').toString('base64url')}=`;
    expect(url).not.toBe(other.challenge);
    expect(await status(t.anon.deviceToken(dev.deviceId, url, other.mac.toString('base64')))).toBe(400);
  });
});
