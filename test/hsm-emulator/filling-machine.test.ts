// The filling machine against a real key service: both sides get the same keys, all or nothing, and half-done
// fills are completed or cancelled by retrying with the same batch id.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SecurityChip } from '../../hsm-emulator/chip.js';
import { FillingMachine } from '../../hsm-emulator/filling-machine.js';
import { Qrng } from '../../hsm-emulator/qrng.js';
import { KmsClient, KmsUnreachableError } from '../../kms-api/client.js';
import { EnvelopeKey, keyIdFor, parseEnvelope, loginProof, openEnvelope } from '../../protocol/index.js';
import { newChip, TEST_PIN } from '../helpers/chip.js';
import { brokerClient, removeDir, startTestKms, type TestKms } from '../helpers/kms.js';

let t: TestKms;
let broker: KmsClient;
const qrng = new Qrng();
const dirs: string[] = [];

beforeAll(async () => {
  t = await startTestKms();
  broker = await brokerClient(t);
});
afterAll(async () => {
  await t.stop();
  removeDir(t.dataDir);
  dirs.forEach(removeDir);
});

function chipFor(id: string) {
  const c = newChip(id);
  dirs.push(c.dir);
  return c;
}

describe('fill', () => {
  it('loads chip and key service with the same keys: a broker opens what the chip seals, and login works', async () => {
    const { chip } = chipFor('dev-fm');
    const progress: number[] = [];
    const r = await new FillingMachine(qrng, t.admin).fill(chip, {
      up: 5,
      down: 3,
      onProgress: (d) => progress.push(d),
    });
    expect(r).toMatchObject({ up: 5, down: 3, loginKey: true, recovered: [] });
    expect(progress).toEqual([8]);
    expect(chip.status()).toMatchObject({ uplinkKeys: 5, downlinkKeys: 3, hasLoginKey: true, nextKeyIndex: 8 });
    expect(await t.admin.device('dev-fm')).toMatchObject({
      pool: { up: 5, down: 3 },
      has_login_key: true,
      next_key_index: 8,
    });

    chip.beginSession();
    const env = chip.sealUplink(new TextEncoder().encode('21.5'), 'devices/dev-fm/up/t');
    const { keyIndex } = parseEnvelope(env);
    const delivered = await broker.decKeys('dev-fm', [keyIdFor('dev-fm', keyIndex)], undefined, [
      { envelope: env, topic: 'devices/dev-fm/up/t', direction: 'up' },
    ]);
    const key = new EnvelopeKey(Buffer.from(delivered.keys[0]!.key, 'base64'));
    expect(
      new TextDecoder().decode(
        openEnvelope(env, { key, deviceId: 'dev-fm', topic: 'devices/dev-fm/up/t', direction: 'up' }).payload,
      ),
    ).toBe('21.5');

    const { challenge } = await t.anon.challenge('dev-fm');
    const mac = Buffer.from(chip.loginProof(Buffer.from(challenge, 'base64'))).toString('base64');
    expect((await t.anon.deviceToken('dev-fm', challenge, mac)).token_type).toBe('Bearer');
  });

  it('splits large fills into batches of at most 4096 keys and reports progress; top-up refills low pools', async () => {
    const { chip } = chipFor('dev-big');
    const progress: number[] = [];
    const fm = new FillingMachine(qrng, t.admin);
    const r = await fm.fill(chip, { up: 5000, down: 3000, onProgress: (d) => progress.push(d) });
    expect(r.batches).toHaveLength(2);
    expect(progress).toEqual([4096, 8000]);
    expect((await t.admin.device('dev-big')).pool).toEqual({ up: 5000, down: 3000 });
    expect(await fm.topUp(chip, 100, 200)).toBeUndefined();
    const { chip: low } = chipFor('dev-low');
    await fm.fill(low, { up: 2, down: 50 });
    const top = await fm.topUp(low, 10, 20);
    expect(top).toMatchObject({ up: 18, down: 0 });
    expect(low.status()).toMatchObject({ uplinkKeys: 20, downlinkKeys: 50 });
  });
});

describe('failures and recovery', () => {
  it('an unreachable key service leaves the chip unchanged', async () => {
    const { chip, path } = chipFor('dev-down-kms');
    const before = JSON.stringify(chip.status());
    const dead = new KmsClient('http://127.0.0.1:1', { token: 'x', timeoutMs: 2000 });
    await expect(new FillingMachine(qrng, dead).fill(chip, { up: 2, down: 2 })).rejects.toBeInstanceOf(
      KmsUnreachableError,
    );
    expect(JSON.stringify(SecurityChip.open(path, TEST_PIN).status())).toBe(before);
  });

  it('machine dies after registering (chip untouched): a plain rerun cancels that batch and finishes the fill', async () => {
    const { chip } = chipFor('dev-crash-1');
    const events: string[] = [];
    const dying = new FillingMachine(qrng, t.admin, {
      onEvent: (e) => events.push(e.kind === 'plan' ? `plan ${e.fillId}` : `batch ${e.batchId}`),
      crashPoint: (p) => {
        if (p === 'after-register') throw new Error('machine died');
      },
    });
    await expect(dying.fill(chip, { up: 2, down: 2 })).rejects.toThrow('machine died');
    // The ids were announced before anything was written.
    const fillId = events[0]!.replace('plan ', '');
    expect(events).toEqual([`plan ${fillId}`, `batch ${fillId}.0`]);
    expect((await t.admin.batch('dev-crash-1', `${fillId}.0`)).state).toBe('pending');
    expect(chip.status()).toMatchObject({ uplinkKeys: 0, fill: { id: fillId, up: 2, down: 2 } });
    const r = await new FillingMachine(qrng, t.admin).fill(chip, { up: 2, down: 2 });
    expect(r).toMatchObject({ fillId, resumed: true, up: 2, down: 2, batches: [`${fillId}.4`] });
    expect(r.recovered).toEqual([{ batchId: `${fillId}.0`, action: 'cancelled' }]);
    expect((await t.admin.batch('dev-crash-1', `${fillId}.0`)).state).toBe('cancelled');
    expect(chip.status()).toMatchObject({ uplinkKeys: 2, downlinkKeys: 2, nextKeyIndex: 8, fill: null });
    expect(await t.admin.device('dev-crash-1')).toMatchObject({ pool: { up: 2, down: 2 }, pending_batches: [] });
  });

  it('machine dies after writing the chip: a plain rerun commits it and fills nothing more', async () => {
    const { chip } = chipFor('dev-crash-2');
    const dying = new FillingMachine(qrng, t.admin, (p) => {
      if (p === 'after-chip-write') throw new Error('machine died');
    });
    await expect(dying.fill(chip, { up: 3, down: 1, batchId: 'crash-2' })).rejects.toThrow('machine died');
    expect(chip.hasBatch('crash-2.0')).toBe(true);
    expect((await t.admin.device('dev-crash-2')).pool).toEqual({ up: 0, down: 0 });
    const r = await new FillingMachine(qrng, t.admin).fill(chip, { up: 3, down: 1 });
    expect(r).toMatchObject({ fillId: 'crash-2', resumed: true, up: 0, down: 0 });
    expect(r.recovered).toEqual([{ batchId: 'crash-2.0', action: 'committed' }]);
    expect((await t.admin.device('dev-crash-2')).pool).toEqual({ up: 3, down: 1 });
    // Running the same fill id once more changes nothing.
    const again = await new FillingMachine(qrng, t.admin).fill(chip, { up: 3, down: 1, batchId: 'crash-2' });
    expect(again).toMatchObject({ up: 0, down: 0, recovered: [] });
    expect(chip.status().uplinkKeys).toBe(3);
  });

  it('a rerun with another plan closes the unfinished fill with what it loaded, then fills the new one', async () => {
    const { chip } = chipFor('dev-crash-3');
    let batches = 0;
    const dying = new FillingMachine(qrng, t.admin, (p) => {
      if (p === 'after-commit' && ++batches === 1) throw new Error('machine died');
    });
    await expect(dying.fill(chip, { up: 5000, down: 0 })).rejects.toThrow('machine died');
    expect(chip.status().fill).toMatchObject({ up: 5000, loaded: { up: 4096 } });
    const r = await new FillingMachine(qrng, t.admin).fill(chip, { up: 1, down: 1 });
    expect(r.abandoned).toMatchObject({ up: 4096, down: 0 });
    expect(r).toMatchObject({ resumed: false, up: 1, down: 1 });
    expect(chip.status()).toMatchObject({ uplinkKeys: 4097, downlinkKeys: 1, fill: null });
    expect((await t.admin.device('dev-crash-3')).pool).toEqual({ up: 4097, down: 1 });
  });

  it('a login key filled by the machine works only once both sides committed', async () => {
    const { chip } = chipFor('dev-login-fm');
    await new FillingMachine(qrng, t.admin).fill(chip, { up: 1, down: 1 });
    const { challenge } = await t.anon.challenge('dev-login-fm');
    const mac = Buffer.from(chip.loginProof(Buffer.from(challenge, 'base64'))).toString('base64');
    expect(mac).not.toBe(
      Buffer.from(loginProof(new Uint8Array(16), 'dev-login-fm', Buffer.from(challenge, 'base64'))).toString('base64'),
    );
    expect((await t.anon.deviceToken('dev-login-fm', challenge, mac)).access_token).toMatch(/^qk1\./);
  });
});
