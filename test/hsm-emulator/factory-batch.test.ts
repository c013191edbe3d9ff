// The factory key-batch format (docs/PROTOCOL.md §21): the stored vectors decoded step by step with sm-crypto and
// SM4-GCM apart from the import code, a chip importing them, and every kind of damage or misdirection refused.
import { readFileSync } from 'node:fs';
import smCrypto from 'sm-crypto';
import { describe, expect, it } from 'vitest';
import { ChipError } from '../../hsm-emulator/chip-errors.js';
import {
  FactoryBatchError,
  inspectFactoryBatch,
  openFactoryBatch,
  sealFactoryBatch,
} from '../../hsm-emulator/factory-batch.js';
import { ephemeralIssuer } from '../../hsm-emulator/filling-machine.js';
import { sm2KeyPair } from '../../hsm-emulator/sm2.js';
import { GcmKey, getBackend, isValidDeviceId } from '../../protocol/index.js';
import { newChip } from '../helpers/chip.js';
import { removeDir } from '../helpers/kms.js';

interface Vector {
  name: string;
  device_id: string;
  batch_id: string;
  first_index: number;
  login_key: string | null;
  up: string[];
  down: string[];
  header: string;
  wrapped_cek: string;
  cek: string;
  ciphertext: string;
  tag: string;
  signature: string;
  batch: string;
}
const file = JSON.parse(readFileSync(new URL('../vectors/qkey-factory-batch.json', import.meta.url), 'utf8')) as {
  chip_transport_private_key: string;
  chip_transport_public_key: string;
  issuer_public_key: string;
  sm2_signer_id: string;
  batches: Vector[];
};
const transport = { privateKey: file.chip_transport_private_key, publicKey: file.chip_transport_public_key };

describe('stored vectors', () => {
  it.each(file.batches.map((v) => [v.name, v] as const))('%s: decodes by the spec alone', (_name, v) => {
    const batch = Buffer.from(v.batch, 'hex');
    // §21.2 header, field by field.
    const header = Buffer.from(v.header, 'hex');
    expect(batch.subarray(0, header.length)).toEqual(header);
    expect(header.subarray(0, 4).toString()).toBe('QKFB');
    expect(header[4]).toBe(1);
    expect(header[5]).toBe(v.login_key ? 1 : 0);
    expect(header.readUInt16BE(6)).toBe(0);
    let at = 8;
    const str = () => {
      const n = header.readUInt16BE(at);
      const s = header.subarray(at + 2, at + 2 + n).toString('utf8');
      at += 2 + n;
      return s;
    };
    expect(str()).toBe(v.device_id);
    expect(isValidDeviceId(v.device_id)).toBe(true); // §14
    expect(str()).toBe(v.batch_id);
    expect(header.readUInt32BE(at)).toBe(v.first_index);
    expect(header.readUInt32BE(at + 4)).toBe(v.up.length);
    expect(header.readUInt32BE(at + 8)).toBe(v.down.length);
    at += 12;
    expect(header.subarray(at, at + 65).toString('hex')).toBe(file.chip_transport_public_key);
    expect(header.subarray(at + 65, at + 130).toString('hex')).toBe(file.issuer_public_key);
    expect(at + 130).toBe(header.length);
    // §21.3 body: u16 length, wrapped content key, ciphertext, tag; §21.4 signature over all before it.
    expect(batch.readUInt16BE(header.length)).toBe(113);
    const signed = batch.subarray(0, batch.length - 64);
    expect(
      smCrypto.sm2.doVerifySignature(Array.from(signed), v.signature, file.issuer_public_key, {
        hash: true,
        userId: file.sm2_signer_id,
      }),
    ).toBe(true);
    const cek = smCrypto.sm2.doDecrypt(v.wrapped_cek.slice(2), file.chip_transport_private_key, 1, { output: 'array' });
    expect(Buffer.from(cek).toString('hex')).toBe(v.cek);
    const gcm = new GcmKey(getBackend().createBlockCipher(Buffer.from(v.cek, 'hex')));
    const plain = gcm.open(new Uint8Array(12), header, Buffer.from(v.ciphertext, 'hex'), Buffer.from(v.tag, 'hex'));
    expect(Buffer.from(plain!).toString('hex')).toBe(
      [...(v.login_key ? [v.login_key] : []), ...v.up, ...v.down].join(''),
    );
  });

  it.each(file.batches.map((v) => [v.name, v] as const))('%s: the import code opens it to the same keys', (_n, v) => {
    const opened = openFactoryBatch(Buffer.from(v.batch, 'hex'), transport);
    const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
    expect({
      deviceId: opened.deviceId,
      batchId: opened.batchId,
      firstIndex: opened.firstIndex,
      up: opened.up.map(hex),
      down: opened.down.map(hex),
      loginKey: opened.loginKey ? hex(opened.loginKey) : null,
      issuer: opened.issuer,
    }).toEqual({
      deviceId: v.device_id,
      batchId: v.batch_id,
      firstIndex: v.first_index,
      up: v.up,
      down: v.down,
      loginKey: v.login_key,
      issuer: file.issuer_public_key,
    });
  });
});

describe('refusals', () => {
  const v = file.batches[0]!;
  const good = Buffer.from(v.batch, 'hex');
  const refuse = (bytes: Uint8Array, key = transport) => {
    try {
      openFactoryBatch(bytes, key);
    } catch (err) {
      if (err instanceof FactoryBatchError) return err.message;
      throw err;
    }
    throw new Error('accepted');
  };

  it('a flipped bit anywhere is refused (every header byte, then every 5th byte)', () => {
    const headerLength = v.header.length / 2;
    for (let at = 0; at < good.length; at += at < headerLength ? 1 : 5) {
      const bad = Buffer.from(good);
      bad[at]! ^= 1 << (at % 8);
      expect(() => refuse(bad), `flip at ${at}`).not.toThrow();
    }
  }, 120_000);

  it('truncated, extended, another chip, another version', () => {
    expect(refuse(good.subarray(0, good.length - 1))).toMatch(/truncated|signature/);
    expect(refuse(Buffer.concat([good, Buffer.from([0])]))).toMatch(/trailing/);
    expect(refuse(good, sm2KeyPair())).toMatch(/another chip/);
    const v2 = Buffer.from(good);
    v2[4] = 2;
    expect(refuse(v2)).toMatch(/version 2 is not supported/);
    expect(() => inspectFactoryBatch(Buffer.from('QKFX'))).toThrow(FactoryBatchError);
  });

  it('a chip refuses a batch for another device or from an issuer it does not trust, and pins the first', () => {
    const made = newChip('dev-fb');
    try {
      const chip = made.chip;
      const seal = (deviceId: string, batchId: string, firstIndex: number, issuer = ephemeralIssuer()) =>
        sealFactoryBatch(
          { deviceId, batchId, firstIndex, up: [new Uint8Array(16).fill(1)], down: [] },
          chip.status().transportKey,
          issuer,
        );
      const code = (fn: () => unknown) => {
        try {
          fn();
          return 'OK';
        } catch (err) {
          return (err as ChipError).code;
        }
      };
      expect(code(() => chip.importBatch(seal('dev-other', 'b0', 0)))).toBe('CHIP_ERR_BATCH');
      expect(chip.status().issuer).toBeNull();
      expect(chip.importBatch(seal('dev-fb', 'b1', 0))).toBe('applied');
      expect(chip.status().issuer).toBe(ephemeralIssuer().publicKey);
      expect(code(() => chip.importBatch(seal('dev-fb', 'b2', 1, sm2KeyPair())))).toBe('CHIP_ERR_BATCH');
      expect(code(() => chip.importBatch(Buffer.from(v.batch, 'hex')))).toBe('CHIP_ERR_BATCH');
      expect(chip.status()).toMatchObject({ uplinkKeys: 1, batches: 1 });
    } finally {
      made.chip.close();
      removeDir(made.dir);
    }
  });
});
