// The emulated security chip: PIN and lock, refusing damaged or foreign files, sessions, rotation, sequence
// reservation across crashes, downlink replay, and that no operation returns key material.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SecurityChip } from '../../hsm-emulator/chip.js';
import { sealFactoryBatch } from '../../hsm-emulator/factory-batch.js';
import { ephemeralIssuer } from '../../hsm-emulator/filling-machine.js';
import { ChipError, type ChipErrorCode } from '../../hsm-emulator/chip-errors.js';
import {
  EnvelopeKey,
  loginProof,
  openEnvelope,
  parseEnvelope,
  ProtocolError,
  sealEnvelope,
} from '../../protocol/index.js';
import { FAST_KDF, fillLocally, newChip, TEST_PIN } from '../helpers/chip.js';
import { removeDir, tempDir } from '../helpers/kms.js';

const dirs: string[] = [];
afterAll(() => dirs.forEach(removeDir));
function chipFor(id: string, options = {}) {
  const c = newChip(id, options);
  dirs.push(c.dir);
  return c;
}

function chipCode(fn: () => unknown): ChipErrorCode | 'OK' {
  try {
    fn();
    return 'OK';
  } catch (err) {
    if (!(err instanceof ChipError)) throw err;
    return err.code;
  }
}

const TOPIC = (id: string) => `devices/${id}/up/t`;
const enc = new TextEncoder();

describe('PIN', () => {
  it('opens with the right PIN; wrong PINs count down and then lock the chip for good', () => {
    const { chip, path } = chipFor('dev-pin');
    chip.close();
    expect(SecurityChip.open(path, TEST_PIN).deviceId).toBe('dev-pin');
    for (let i = 0; i < 4; i++) {
      const e = (() => {
        try {
          SecurityChip.open(path, '0000');
        } catch (err) {
          return err as ChipError;
        }
      })()!;
      expect(e.code).toBe('CHIP_ERR_PIN');
      expect(e.message).toContain(`${4 - i} attempt(s) left`);
    }
    expect(chipCode(() => SecurityChip.open(path, '0000'))).toBe('CHIP_ERR_LOCKED');
    expect(chipCode(() => SecurityChip.open(path, TEST_PIN))).toBe('CHIP_ERR_LOCKED');
  });

  it('a correct PIN resets the failed-attempt counter', () => {
    const { path } = chipFor('dev-pin2');
    for (let i = 0; i < 4; i++) chipCode(() => SecurityChip.open(path, '1111'));
    SecurityChip.open(path, TEST_PIN).close();
    expect(chipCode(() => SecurityChip.open(path, '1111'))).toBe('CHIP_ERR_PIN');
  });
});

describe('damaged and foreign files are refused, never reset', () => {
  it('truncated file, trailing bytes, foreign file, other device, missing file, existing file', () => {
    const { chip, path } = chipFor('dev-tamper');
    fillLocally(chip, 2, 2);
    chip.close();
    const good = readFileSync(path);
    const check = (bytes: Buffer, code: ChipErrorCode) => {
      writeFileSync(path, bytes);
      expect(chipCode(() => SecurityChip.open(path, TEST_PIN))).toBe(code);
    };
    for (const n of [0, 3, 8, 30, 94, 95, good.length - 33, good.length - 1])
      check(good.subarray(0, n), 'CHIP_ERR_TAMPERED');
    check(Buffer.concat([good, Buffer.from([0])]), 'CHIP_ERR_TAMPERED');
    check(Buffer.from('{"not":"a chip"}'), 'CHIP_ERR_FOREIGN');
    check(Buffer.alloc(200, 0x41), 'CHIP_ERR_FOREIGN');
    writeFileSync(path, good);
    expect(chipCode(() => SecurityChip.open(path, TEST_PIN, { expectDevice: 'dev-other' }))).toBe('CHIP_ERR_FOREIGN');
    expect(chipCode(() => SecurityChip.open(path, TEST_PIN))).toBe('OK');
    expect(chipCode(() => SecurityChip.open(join(tempDir(), 'none.chip'), TEST_PIN))).toBe('CHIP_ERR_NOT_FOUND');
    expect(chipCode(() => SecurityChip.create(path, { deviceId: 'x', pin: TEST_PIN, kdfIterations: FAST_KDF }))).toBe(
      'CHIP_ERR_EXISTS',
    );
  });

  it('a flipped bit at every byte position reads as tampered, costs no attempt and leaves the file as it was', () => {
    const { chip, path } = chipFor('dev-flip');
    fillLocally(chip, 2, 2);
    chip.close();
    const good = readFileSync(path);
    const seen = new Map<string, number>();
    for (let at = 0; at < good.length; at++) {
      const bad = Buffer.from(good);
      bad[at]! ^= 1 << (at % 8);
      writeFileSync(path, bad);
      for (const pin of [TEST_PIN, '0000']) {
        const code = chipCode(() => SecurityChip.open(path, pin));
        seen.set(code, (seen.get(code) ?? 0) + 1);
        if (code !== 'CHIP_ERR_TAMPERED') throw new Error(`flip at byte ${at} with PIN ${pin} read as ${code}`);
      }
      expect(readFileSync(path).equals(bad)).toBe(true); // no attempt was written
    }
    expect([...seen.keys()]).toEqual(['CHIP_ERR_TAMPERED']);
    writeFileSync(path, good);
    // Not one attempt was spent on all those damaged files.
    expect(() => SecurityChip.open(path, '0000')).toThrow(/4 attempt\(s\) left/);
    SecurityChip.open(path, TEST_PIN).close();
  }, 120_000);

  it('an edited failed-attempt counter is tampering, not a reset: a locked chip stays locked', () => {
    const { chip, path } = chipFor('dev-counter');
    chip.close();
    for (let i = 0; i < 5; i++) chipCode(() => SecurityChip.open(path, '0000'));
    expect(chipCode(() => SecurityChip.open(path, TEST_PIN))).toBe('CHIP_ERR_LOCKED');
    const locked = readFileSync(path);
    expect(locked[10]).toBe(5);
    for (const value of [0, 1, 4]) {
      const edited = Buffer.from(locked);
      edited[10] = value;
      writeFileSync(path, edited);
      expect(chipCode(() => SecurityChip.open(path, TEST_PIN))).toBe('CHIP_ERR_TAMPERED');
    }
  });

  it('the attempt is on disk before the PIN is checked: stopping the chip mid-check does not save it', () => {
    const { chip, path } = chipFor('dev-count-first');
    chip.close();
    const crash = () => {
      throw new Error('power cut');
    };
    for (let i = 0; i < 2; i++)
      expect(() => SecurityChip.open(path, '0000', { pinCrashPoint: crash })).toThrow('power cut');
    expect(readFileSync(path)[10]).toBe(2);
    expect(() => SecurityChip.open(path, '0000')).toThrow(/2 attempt\(s\) left/);
    // A correct PIN cut off mid-check also counts until the next correct PIN resets it.
    expect(() => SecurityChip.open(path, TEST_PIN, { pinCrashPoint: crash })).toThrow('power cut');
    expect(readFileSync(path)[10]).toBe(4);
    SecurityChip.open(path, TEST_PIN).close();
    expect(readFileSync(path)[10]).toBe(0);
  });

  it('an older or unknown file format is refused with a clear error', () => {
    const { chip, path } = chipFor('dev-format');
    chip.close();
    const good = readFileSync(path);
    const v1 = Buffer.concat([Buffer.from('QKCHIP01'), Buffer.from([1, 0]), Buffer.alloc(100)]);
    writeFileSync(path, v1);
    expect(() => SecurityChip.open(path, TEST_PIN)).toThrow(/format 1 is not supported/);
    expect(chipCode(() => SecurityChip.open(path, TEST_PIN))).toBe('CHIP_ERR_FORMAT');
    const v3 = Buffer.from(good);
    v3[8] = 3;
    v3[9] = 0xfc;
    writeFileSync(path, v3);
    expect(() => SecurityChip.open(path, TEST_PIN)).toThrow(/format 3 is not supported by this release/);
  });
});

describe('sessions and sealing', () => {
  it('each session takes a fresh uplink key at its first seal; the broker side opens what the chip seals', () => {
    const { chip, path } = chipFor('dev-seal');
    const { keys } = fillLocally(chip, 3, 1);
    const used: number[] = [];
    for (let s = 0; s < 3; s++) {
      chip.beginSession();
      // §9.1: a session that seals nothing takes no key, however many there are.
      chip.beginSession();
      expect(chip.status().uplinkKeys).toBe(3 - s);
      const env = chip.sealUplink(enc.encode(`hello ${s}`), TOPIC('dev-seal'));
      const keyIndex = parseEnvelope(env).keyIndex;
      used.push(keyIndex);
      const key = new EnvelopeKey(keys.get(keyIndex)!.key);
      expect(
        new TextDecoder().decode(
          openEnvelope(env, { key, deviceId: 'dev-seal', topic: TOPIC('dev-seal'), direction: 'up' }).payload,
        ),
      ).toBe(`hello ${s}`);
    }
    expect(used).toEqual([0, 1, 2]);
    chip.beginSession();
    expect(chipCode(() => chip.sealUplink(enc.encode('x'), TOPIC('dev-seal')))).toBe('CHIP_ERR_POOL_EMPTY');
    chip.close();
    const reopened = SecurityChip.open(path, TEST_PIN);
    expect(reopened.status()).toMatchObject({ uplinkKeys: 0, downlinkKeys: 1, sessions: 7 });
  });

  it("seals one will per session at seq 0 under the session's uplink key, opened only as a will of that topic", () => {
    const { chip } = chipFor('dev-will');
    const { keys } = fillLocally(chip, 2, 0);
    const topic = 'devices/dev-will/up/status';
    expect(chipCode(() => chip.sealWill(enc.encode('gone'), topic))).toBe('CHIP_ERR_NO_SESSION');
    chip.beginSession();
    const will = chip.sealWill(enc.encode('gone'), topic);
    const keyIndex = parseEnvelope(will).keyIndex;
    expect(parseEnvelope(will)).toMatchObject({ keyIndex: 0, seq: 0 });
    const key = new EnvelopeKey(keys.get(keyIndex)!.key);
    const open = (direction: 'up' | 'will', t = topic) =>
      openEnvelope(will, { key, deviceId: 'dev-will', topic: t, direction }).payload;
    expect(new TextDecoder().decode(open('will'))).toBe('gone');
    expect(() => open('up')).toThrow(ProtocolError);
    expect(() => open('will', 'devices/dev-will/up/other')).toThrow(ProtocolError);
    // A second will under the same key and nonce would reuse the nonce.
    expect(chipCode(() => chip.sealWill(enc.encode('again'), topic))).toBe('CHIP_ERR_WILL');
    // Telemetry under the same key starts at seq 0 too; the direction keeps the nonces apart.
    expect(parseEnvelope(chip.sealUplink(enc.encode('t'), topic))).toMatchObject({ keyIndex, seq: 0 });
    chip.beginSession();
    chip.sealUplink(enc.encode('t'), topic);
    expect(chipCode(() => chip.sealWill(enc.encode('late'), topic))).toBe('CHIP_ERR_WILL');
    expect(chip.sealWill(new Uint8Array(0), topic)).toHaveLength(0);
  });

  it('rotates to the next key after the message limit, and passes empty payloads through', () => {
    const { chip } = chipFor('dev-rot', { rotation: { messages: 3 } });
    fillLocally(chip, 3, 0);
    chip.beginSession();
    const indices = Array.from(
      { length: 7 },
      () => parseEnvelope(chip.sealUplink(enc.encode('x'), TOPIC('dev-rot'))).keyIndex,
    );
    expect(indices).toEqual([0, 0, 0, 1, 1, 1, 2]);
    expect(chip.sealUplink(new Uint8Array(0), TOPIC('dev-rot'))).toHaveLength(0);
    expect(chipCode(() => chipFor('dev-nosession').chip.sealUplink(enc.encode('x'), 't'))).toBe('CHIP_ERR_NO_SESSION');
  });

  it('a crash between reserving sequence numbers and using them never repeats a (key, seq) pair', () => {
    let crash = false;
    const { chip, path } = chipFor('dev-crash', {
      crashPoint: (p: string) => {
        if (crash && p === 'after-reserve') throw new Error('power loss');
      },
    });
    fillLocally(chip, 4, 0);
    const seen = new Set<string>();
    const record = (env: Uint8Array) => {
      const h = parseEnvelope(env);
      const id = `${h.keyIndex}:${h.seq}`;
      expect(seen.has(id)).toBe(false);
      seen.add(id);
    };
    chip.beginSession();
    for (let i = 0; i < 300; i++) record(chip.sealUplink(enc.encode('a'), TOPIC('dev-crash')));
    crash = true;
    expect(() => {
      for (let i = 0; i < 300; i++) record(chip.sealUplink(enc.encode('b'), TOPIC('dev-crash')));
    }).toThrow('power loss');
    // After power loss the chip restarts from its file: the next session must not reuse key 0.
    const again = SecurityChip.open(path, TEST_PIN);
    again.beginSession();
    for (let i = 0; i < 300; i++) record(again.sealUplink(enc.encode('c'), TOPIC('dev-crash')));
    expect(again.status().session).toMatchObject({ keyIndex: 1 });
    expect(seen.size).toBe(512 + 300); // sealed before the crash at the reservation for seq 512, then after
  });

  it('a crash right after taking a key out of the pool loses that key, never reuses it', () => {
    const { chip, path } = chipFor('dev-take', {
      crashPoint: (p: string) => {
        if (p === 'after-take-key') throw new Error('power loss');
      },
    });
    fillLocally(chip, 2, 0);
    chip.beginSession();
    expect(() => chip.sealUplink(enc.encode('x'), TOPIC('dev-take'))).toThrow('power loss');
    const again = SecurityChip.open(path, TEST_PIN);
    again.beginSession();
    expect(parseEnvelope(again.sealUplink(enc.encode('x'), TOPIC('dev-take'))).keyIndex).toBe(1);
  });
});

describe('downlink, login and secrecy', () => {
  it('refuses a downlink key below the highest it opened (a stale command), and a forged envelope changes nothing', () => {
    const { chip, path } = chipFor('dev-stale');
    const { keys } = fillLocally(chip, 0, 4);
    const topic = 'devices/dev-stale/down/cmd';
    const sealAt = (index: number, text: string) =>
      sealEnvelope(enc.encode(text), {
        key: new EnvelopeKey(keys.get(index)!.key),
        keyIndex: index,
        seq: 0,
        deviceId: 'dev-stale',
        topic,
        direction: 'down',
      });
    chip.beginSession();
    // A forged envelope naming the highest key: refused, and the chip still accepts lower keys afterwards.
    const forged = sealAt(3, 'x');
    forged[forged.length - 1]! ^= 1;
    expect(() => chip.openDownlink(forged, topic)).toThrow(ProtocolError);
    expect(new TextDecoder().decode(chip.openDownlink(sealAt(1, 'now'), topic))).toBe('now');
    // Key 0 was claimed for a session this chip never saw (a token thief's): its command is stale now.
    expect(chipCode(() => chip.openDownlink(sealAt(0, 'UNLOCK'), topic))).toBe('CHIP_ERR_STALE_KEY');
    chip.close();
    const again = SecurityChip.open(path, TEST_PIN);
    again.beginSession(); // keys 0 and 1 are erased: 1 was used, 0 is below it
    expect(again.status().downlinkKeys).toBe(2);
    expect(new TextDecoder().decode(again.openDownlink(sealAt(3, 'later'), topic))).toBe('later');
  });

  it('opens downlink envelopes once; replays, unknown keys and other topics are refused', () => {
    const { chip, path } = chipFor('dev-down');
    const { keys } = fillLocally(chip, 2, 2);
    chip.beginSession();
    const key = new EnvelopeKey(keys.get(2)!.key);
    const topic = 'devices/dev-down/down/cmd';
    const env = sealEnvelope(enc.encode('reboot'), {
      key,
      keyIndex: 2,
      seq: 0,
      deviceId: 'dev-down',
      topic,
      direction: 'down',
    });
    expect(new TextDecoder().decode(chip.openDownlink(env, topic))).toBe('reboot');
    expect(() => chip.openDownlink(env, topic)).toThrow(expect.objectContaining({ code: 'PROTO_ERR_REPLAY' }));
    expect(() => chip.openDownlink(env, `${topic}/x`)).toThrow(ProtocolError);
    const unknown = sealEnvelope(enc.encode('x'), {
      key,
      keyIndex: 9,
      seq: 0,
      deviceId: 'dev-down',
      topic,
      direction: 'down',
    });
    expect(chipCode(() => chip.openDownlink(unknown, topic))).toBe('CHIP_ERR_UNKNOWN_KEY');
    // A downlink key used in one session is erased when the next session starts.
    chip.beginSession();
    expect(chip.status().downlinkKeys).toBe(1);
    expect(chipCode(() => chip.openDownlink(env, topic))).toBe('CHIP_ERR_UNKNOWN_KEY');
    chip.close();
    expect(SecurityChip.open(path, TEST_PIN).status().downlinkKeys).toBe(1);
  });

  it('computes the login proof of docs/PROTOCOL.md §13', () => {
    const { chip } = chipFor('dev-login');
    expect(chipCode(() => chip.loginProof(new Uint8Array(32)))).toBe('CHIP_ERR_NO_LOGIN_KEY');
    const { loginKey } = fillLocally(chip, 1, 1);
    const challenge = new Uint8Array(32).fill(3);
    expect(Buffer.from(chip.loginProof(challenge))).toEqual(Buffer.from(loginProof(loginKey, 'dev-login', challenge)));
  });

  it('fills are idempotent by batch id and refuse reused indices; status and the file reveal no key', () => {
    const { chip, path } = chipFor('dev-secret');
    const { keys, loginKey } = fillLocally(chip, 2, 2, 'b1');
    const again = (batchId: string, firstIndex: number) =>
      sealFactoryBatch(
        { deviceId: 'dev-secret', batchId, firstIndex, up: [new Uint8Array(16)], down: [] },
        chip.status().transportKey,
        ephemeralIssuer(),
      );
    expect(chip.importBatch(again('b1', 9))).toBe('already-applied');
    expect(chipCode(() => chip.importBatch(again('b2', 1)))).toBe('CHIP_ERR_FILL');
    const status = JSON.stringify(chip.status());
    const file = readFileSync(path);
    for (const k of [loginKey, ...[...keys.values()].map((x) => x.key)]) {
      const h = Buffer.from(k).toString('hex');
      expect(status).not.toContain(h);
      expect(file.indexOf(Buffer.from(k))).toBe(-1);
      expect(file.indexOf(Buffer.from(h))).toBe(-1);
    }
  });
});

function protoCode(fn: () => unknown): string {
  try {
    fn();
    return 'OK';
  } catch (err) {
    if (!(err instanceof ProtocolError)) throw err;
    return err.code;
  }
}

describe('end-to-end channel (docs/PROTOCOL.md §23.2, §23.4)', () => {
  it('seals end-to-end topics under a key of their own, rising apart from the broker key, abandoned at session start', () => {
    const { chip, path } = chipFor('dev-e2e-chip');
    const keys = fillLocally(chip, 6, 0);
    const keyOf = (i: number) => keys.keys.get(i)!.key;
    chip.beginSession();
    const index = (e: Uint8Array) => parseEnvelope(e).keyIndex;
    const b1 = chip.sealUplink(enc.encode('b'), TOPIC('dev-e2e-chip'));
    const e1 = chip.sealUplink(enc.encode('e'), 'devices/dev-e2e-chip/up/secret', 'end-to-end');
    const e2 = chip.sealUplink(enc.encode('e'), 'devices/dev-e2e-chip/up/secret', 'end-to-end');
    const b2 = chip.sealUplink(enc.encode('b'), TOPIC('dev-e2e-chip'));
    expect([index(b1), index(e1), index(e2), index(b2)]).toEqual([0, 1, 1, 0]);
    expect(parseEnvelope(e2).seq).toBe(1);
    // The end-to-end envelope opens under its own key as an ordinary uplink, never under the broker key.
    const ctx = { deviceId: 'dev-e2e-chip', topic: 'devices/dev-e2e-chip/up/secret', direction: 'up' as const };
    expect(Buffer.from(openEnvelope(e1, { ...ctx, key: keyOf(1) }).payload).toString()).toBe('e');
    expect(() => openEnvelope(e1, { ...ctx, key: keyOf(0) })).toThrow(ProtocolError);

    // A command sealed by the application under the end-to-end key (e2e-down) opens once, in this session only.
    const down = 'devices/dev-e2e-chip/down/secret';
    const command = sealEnvelope(enc.encode('go'), {
      key: keyOf(1),
      keyIndex: 1,
      seq: 0,
      deviceId: 'dev-e2e-chip',
      topic: down,
      direction: 'e2e-down',
    });
    expect(Buffer.from(chip.openEndToEnd(command, down)).toString()).toBe('go');
    expect(protoCode(() => chip.openEndToEnd(command, down))).toBe('PROTO_ERR_REPLAY');
    // Sealed as a broker downlink (direction down), or under the broker key, it does not open.
    const asDown = sealEnvelope(enc.encode('go'), {
      key: keyOf(1),
      keyIndex: 1,
      seq: 5,
      deviceId: 'dev-e2e-chip',
      topic: down,
      direction: 'down',
    });
    expect(protoCode(() => chip.openEndToEnd(asDown, down))).toBe('PROTO_ERR_TAG');
    const underBrokerKey = sealEnvelope(enc.encode('go'), {
      key: keyOf(0),
      keyIndex: 0,
      seq: 0,
      deviceId: 'dev-e2e-chip',
      topic: down,
      direction: 'e2e-down',
    });
    expect(chipCode(() => chip.openEndToEnd(underBrokerKey, down))).toBe('CHIP_ERR_UNKNOWN_KEY');

    // The file remembers the end-to-end key in use; a new session abandons it and its commands.
    chip.close();
    const again = SecurityChip.open(path, TEST_PIN);
    again.beginSession();
    const fresh = { ...{ key: keyOf(1), keyIndex: 1, deviceId: 'dev-e2e-chip', topic: down }, seq: 1 };
    expect(
      chipCode(() => again.openEndToEnd(sealEnvelope(enc.encode('x'), { ...fresh, direction: 'e2e-down' }), down)),
    ).toBe('CHIP_ERR_UNKNOWN_KEY');
    const e3 = again.sealUplink(enc.encode('e'), 'devices/dev-e2e-chip/up/secret', 'end-to-end');
    const b3 = again.sealUplink(enc.encode('b'), TOPIC('dev-e2e-chip'));
    expect([index(e3), index(b3)]).toEqual([2, 3]);
    again.close();
  });
});
