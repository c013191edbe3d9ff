// Test fixtures for emulated chips: a temp chip file with a fast KDF, filled locally with known keys.
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { SecurityChip } from '../../hsm-emulator/chip.js';
import type { ChipOptions } from '../../hsm-emulator/chip.js';
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
  chip.applyFill({ batchId, loginKey, keys: keys.map((k) => ({ ...k, key: k.key.slice() })) });
  return { keys: new Map(keys.map((k) => [k.index, k])), loginKey };
}
