// kill -9 of `qkey chip fill` at every crash point of a fill, then the same command again: chip and key service
// agree key for key, nothing is left pending, and the device logs in and publishes.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { SecurityChip } from '../../hsm-emulator/chip.js';
import type { FillCrashPoint } from '../../hsm-emulator/filling-machine.js';
import { runQkey } from '../helpers/cli.js';
import { removeDir, tempDir } from '../helpers/kms.js';
import { QKEY_BIN } from '../helpers/process.js';
import { nextMessage, startTestSystem, type TestSystem } from '../helpers/system.js';

const PIN = '97531';
const POINTS: FillCrashPoint[] = ['after-plan', 'after-register', 'after-chip-write', 'after-commit'];
const dir = tempDir('qkey-fill-crash-');
let sys: TestSystem;

beforeAll(async () => {
  sys = await startTestSystem();
});
afterAll(async () => {
  await sys.stop();
  removeDir(dir);
});

function fill(
  chip: string,
  env: Record<string, string> = {},
): Promise<{ code: number | null; signal: string | null; out: string }> {
  const args = ['chip', 'fill', '--chip', chip, '--kms', sys.kms.url, '--token', 'test-admin-token', '--data', dir];
  const child = spawn(process.execPath, [QKEY_BIN, ...args, '--up', '4100', '--down', '6'], {
    env: { ...process.env, QKEY_CHIP_PIN: PIN, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal, out })));
}

for (const point of POINTS) {
  it(`killed ${point}, then run again: chip and key service agree and the device works`, async () => {
    const id = `dev-kill-${point}`;
    const chipPath = join(dir, `${id}.chip`);
    process.env.QKEY_CHIP_PIN = PIN;
    try {
      expect((await runQkey('chip', 'init', '--chip', chipPath, '--device', id, '--kdf-iterations', '1000')).code).toBe(
        0,
      );
    } finally {
      delete process.env.QKEY_CHIP_PIN;
    }
    const killed = await fill(chipPath, { QKEY_TEST_FILL_CRASH: point });
    expect(killed.signal).toBe('SIGKILL');
    // The fill id and the batch id were printed before anything was written.
    const fillId = /^fill (\S+):/m.exec(killed.out)?.[1];
    expect(fillId).toBeDefined();
    if (point !== 'after-plan')
      expect(killed.out).toMatch(new RegExp(`^batch ${fillId!.replace(/\./g, '\\.')}\\.0: `, 'm'));

    if (point === 'after-register' || point === 'after-chip-write') {
      const show = await runQkey('admin', '--kms', sys.kms.url, '--token', 'test-admin-token', 'device', 'show', id);
      expect(show.out).toMatch(/^pending +batch \S+\.0 since /m);
    }
    const rerun = await fill(chipPath);
    expect(rerun.code, rerun.out).toBe(0);
    expect(rerun.out).toContain(`fill ${fillId}:`);
    expect(rerun.out).toContain('resuming an unfinished fill');

    const chip = SecurityChip.open(chipPath, PIN);
    const device = await sys.kms.admin.device(id);
    const s = chip.status();
    expect({ up: s.uplinkKeys, down: s.downlinkKeys }).toEqual({ up: 4100, down: 6 }); // the plan, not twice it
    expect(device.pool).toEqual({ up: 4100, down: 6 });
    expect(device.pending_batches).toEqual([]);
    expect(s.fill).toBeNull();
    const keys = (await sys.kms.admin.deviceKeys(id)).keys.filter((k) => k.state === 'filled');
    expect(keys.map((k) => k.key_index).sort((a, b) => a - b)).toEqual([
      ...Array.from({ length: 4100 }, (_, i) => s.nextKeyIndex - 4106 + i),
      ...Array.from({ length: 6 }, (_, i) => s.nextKeyIndex - 6 + i),
    ]);

    const app = await sys.connectApp(`app-${point}`, { subscribe: [`devices/${id}/up/#`] });
    await app.subscribeAsync(`devices/${id}/up/#`);
    const device_ = await sys.connectDevice(chip);
    const got = nextMessage(app);
    const topic = `devices/${id}/up/t`;
    await device_.publishAsync(topic, Buffer.from(chip.sealUplink(Buffer.from('after the crash'), topic)), { qos: 1 });
    expect((await got).payload.toString()).toBe('after the crash');
    await device_.endAsync();
    chip.close();
  }, 120_000);
}
