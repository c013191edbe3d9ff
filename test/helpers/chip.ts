// Test fixtures for emulated chips: a temp chip file with a fast KDF, filled locally with known keys.
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { SecurityChip } from '../../hsm-emulator/chip.js';
import type { ChipOptions } from '../../hsm-emulator/chip.js';
import { sealFactoryBatch } from '../../hsm-emulator/factory-batch.js';
import { ephemeralIssuer } from '../../hsm-emulator/filling-machine.js';
import { tempDir } from './kms.js';

export const TEST_PIN = '246810';
/** The minimum the file format accepts; production chips use the default (200,000). */
export const FAST_KDF = 1000;

export function newChip(deviceId: string, options: ChipOptions = {}, dir = tempDir('qkey-chip-')) {
  const path = join(dir, `${deviceId}.chip`);
  const chip = SecurityChip.create(path, { deviceId, pin: TEST_PIN, kdfIterations: FAST_KDF }, options);
  return { chip, path, dir };
}

/** Fills keys 0..up-1 (uplink) and up..up+down-1 (downlink) plus a login key; returns them by index. */
export function fillLocally(chip: SecurityChip, up: number, down: number, batchId = 'local-1') {
  const keys = Array.from({ length: up + down }, (_, i) => ({
    index: chip.status().nextKeyIndex + i,
    direction: (i < up ? 'up' : 'down') as 'up' | 'down',
    key: new Uint8Array(randomBytes(16)),
  }));
  const loginKey = new Uint8Array(randomBytes(16));
  const sealed = sealFactoryBatch(
    {
      deviceId: chip.deviceId,
      batchId,
      firstIndex: keys[0]?.index ?? chip.status().nextKeyIndex,
      up: keys.filter((k) => k.direction === 'up').map((k) => k.key),
      down: keys.filter((k) => k.direction === 'down').map((k) => k.key),
      loginKey,
    },
    chip.status().transportKey,
    ephemeralIssuer(),
  );
  chip.importBatch(sealed);
  return { keys: new Map(keys.map((k) => [k.index, k])), loginKey };
}
