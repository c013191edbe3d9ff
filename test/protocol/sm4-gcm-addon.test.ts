// The native SM4-GCM addon: built and active on x86-64, published vectors, agreement with the JavaScript GCM on
// random inputs, no plaintext released for a forged message, and the QKEY_SM4GCM_ADDON switch.
import { spawnSync } from 'node:child_process';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { nativeBackend } from '../../protocol/backend.js';
import { GcmKey } from '../../protocol/gcm.js';
import { addonEncryptBlocks, createAddonGcmKey, sm4GcmAddonStatus } from '../../protocol/sm4-gcm-addon.js';
import { type GcmVector, hex, loadVectors, type Sm4Vector, toHex } from '../helpers/vectors.js';

const status = sm4GcmAddonStatus();
const addonIt = status.active ? it : it.skip;

describe('SM4-GCM addon', () => {
  it.runIf(process.arch === 'x64' && process.env.QKEY_SM4GCM_ADDON === undefined)(
    'is built and active on x86-64 (npm ci builds it; a broken build must not pass silently)',
    () => {
      expect(status).toEqual({ active: true, reason: expect.stringContaining('addon') as string });
    },
  );

  addonIt('SM4 alone matches GB/T 32907-2016 Appendix A, including the 1,000,000-iteration example', () => {
    const file = loadVectors<Sm4Vector>('gbt32907-sm4.json');
    for (const v of file.vectors) {
      expect(toHex(addonEncryptBlocks(hex(v.key), hex(v.plaintext), v.iterations)!)).toBe(v.ciphertext);
    }
  });

  addonIt('seals and opens the RFC 8998 Appendix A.1 SM4-GCM vector', () => {
    const file = loadVectors<GcmVector>('rfc8998-sm4-gcm.json');
    for (const v of file.vectors) {
      const k = createAddonGcmKey(hex(v.key))!;
      const { ciphertext, tag } = k.seal(hex(v.iv), hex(v.aad), hex(v.plaintext));
      expect(toHex(ciphertext)).toBe(v.ciphertext);
      expect(toHex(tag)).toBe(v.tag);
      expect(toHex(k.open(hex(v.iv), hex(v.aad), hex(v.ciphertext), hex(v.tag))!)).toBe(v.plaintext);
    }
  });

  addonIt('agrees with GcmKey (JavaScript GCM over OpenSSL SM4) on random keys, nonces, AAD and lengths', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 16, maxLength: 16 }),
        fc.uint8Array({ minLength: 12, maxLength: 12 }),
        fc.uint8Array({ maxLength: 90 }),
        fc.uint8Array({ maxLength: 700 }),
        (key, nonce, aad, plaintext) => {
          const addon = createAddonGcmKey(key)!;
          const js = new GcmKey(nativeBackend.createBlockCipher(key));
          const a = addon.seal(nonce, aad, plaintext);
          const j = js.seal(nonce, aad, plaintext);
          expect(toHex(a.ciphertext)).toBe(toHex(j.ciphertext));
          expect(toHex(a.tag)).toBe(toHex(j.tag));
          expect(toHex(js.open(nonce, aad, a.ciphertext, a.tag)!)).toBe(toHex(plaintext));
          expect(toHex(addon.open(nonce, aad, j.ciphertext, j.tag)!)).toBe(toHex(plaintext));
          // sealInto at an offset leaves the bytes around it alone.
          const out = new Uint8Array(plaintext.length + 16 + 7).fill(0xa5);
          addon.sealInto(out, 3, nonce, aad, plaintext);
          expect(toHex(out.subarray(3, 3 + plaintext.length + 16))).toBe(toHex(j.ciphertext) + toHex(j.tag));
          expect([...out.subarray(0, 3), ...out.subarray(3 + plaintext.length + 16)].every((b) => b === 0xa5)).toBe(
            true,
          );
        },
      ),
      { numRuns: 150 },
    );
  });

  addonIt('refuses every single-bit change to nonce, AAD, ciphertext or tag', () => {
    const k = createAddonGcmKey(hex('000102030405060708090a0b0c0d0e0f'))!;
    const nonce = hex('0102030405060708090a0b0c');
    const aad = hex('a0a1a2a3a4a5a6a7a8a9aaab');
    const { ciphertext, tag } = k.seal(nonce, aad, new Uint8Array(40).fill(7));
    const parts = { nonce, aad, ciphertext, tag };
    for (const name of Object.keys(parts) as Array<keyof typeof parts>) {
      for (let bit = 0; bit < parts[name].length * 8; bit++) {
        const changed = { ...parts, [name]: Uint8Array.from(parts[name]) };
        changed[name][bit >> 3]! ^= 1 << (bit & 7);
        expect(k.open(changed.nonce, changed.aad, changed.ciphertext, changed.tag)).toBeUndefined();
      }
    }
  });

  addonIt('throws on a destroyed key and on arguments of the wrong size', () => {
    const k = createAddonGcmKey(new Uint8Array(16))!;
    expect(() => k.seal(new Uint8Array(11), new Uint8Array(0), new Uint8Array(1))).toThrow(/nonce/);
    expect(() => k.open(new Uint8Array(12), new Uint8Array(0), new Uint8Array(1), new Uint8Array(15))).toThrow(/tag/);
    k.destroy();
    expect(() => k.seal(new Uint8Array(12), new Uint8Array(0), new Uint8Array(1))).toThrow(/destroyed/);
  });

  addonIt('the table-driven SM4 (CPUs without AES-NI) gives the same bytes as the AES-NI path', () => {
    // Seals of every length from 0 to 300 under keys and nonces derived from the length, in a child process
    // whose addon was told to ignore AES-NI; compared with this process's addon and with GcmKey.
    const script = `import('./protocol/sm4-gcm-addon.js').then((m) => {
      const out = [];
      for (let n = 0; n <= 300; n += 7) {
        const k = m.createAddonGcmKey(new Uint8Array(16).fill(n));
        const s = k.seal(new Uint8Array(12).fill(n + 1), new Uint8Array(n % 40).fill(2), new Uint8Array(n).fill(n & 255));
        out.push(Buffer.concat([s.ciphertext, s.tag]).toString('hex'));
      }
      console.log(JSON.stringify({ status: m.sm4GcmAddonStatus(), out }));
    })`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      cwd: new URL('../../dist/', import.meta.url),
      env: { ...process.env, QKEY_SM4GCM_NO_AESNI: '1' },
      encoding: 'utf8',
    });
    const child = JSON.parse(r.stdout) as { status: { reason: string }; out: string[] };
    expect(child.status.reason).toContain('table-driven SM4');
    let i = 0;
    for (let n = 0; n <= 300; n += 7, i++) {
      const args = [new Uint8Array(12).fill(n + 1), new Uint8Array(n % 40).fill(2), new Uint8Array(n).fill(n & 255)];
      const here = createAddonGcmKey(new Uint8Array(16).fill(n))!.seal(args[0]!, args[1]!, args[2]!);
      const js = new GcmKey(nativeBackend.createBlockCipher(new Uint8Array(16).fill(n))).seal(
        args[0]!,
        args[1]!,
        args[2]!,
      );
      expect(child.out[i]).toBe(toHex(here.ciphertext) + toHex(here.tag));
      expect(child.out[i]).toBe(toHex(js.ciphertext) + toHex(js.tag));
    }
  });

  it('QKEY_SM4GCM_ADDON=off turns it off (the JavaScript GCM is used)', () => {
    const script = `import('./protocol/sm4-gcm-addon.js').then((m) => console.log(JSON.stringify(m.sm4GcmAddonStatus())))`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      cwd: new URL('../../dist/', import.meta.url),
      env: { ...process.env, QKEY_SM4GCM_ADDON: 'off' },
      encoding: 'utf8',
    });
    expect(JSON.parse(r.stdout)).toEqual({ active: false, reason: 'disabled by QKEY_SM4GCM_ADDON' });
  });
});
