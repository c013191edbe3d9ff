// The key filling machine: draws keys from the QRNG and loads one chip and the key service with the same batch,
// all or nothing on both sides (register pending -> write chip -> commit; retry by batch id, or cancel).
import { randomBytes } from 'node:crypto';
import { type KmsClient, KmsHttpError } from '../kms-api/client.js';
import type { SecurityChip } from './chip.js';
import { ChipError } from './chip-errors.js';
import type { Qrng } from './qrng.js';

/** The key service accepts at most this many keys per batch; larger fills are split. */
export const MAX_BATCH_KEYS = 4096;

export interface FillRequest {
  up: number;
  down: number;
  /** Fill a (new) login key; default: when the chip has none. */
  loginKey?: boolean;
  /** Batch id to use or to resume; default: a new one. Large fills use `<id>`, `<id>.2`, ... */
  batchId?: string;
  onProgress?: (keysDone: number, keysTotal: number) => void;
}

export interface FillResult {
  batches: string[];
  up: number;
  down: number;
  loginKey: boolean;
  /** Batches found half-done and completed or cancelled before this fill. */
  recovered: Array<{ batchId: string; action: 'committed' | 'cancelled' }>;
}

export type FillCrashPoint = 'after-register' | 'after-chip-write';

export class FillError extends Error {
  constructor(
    message: string,
    readonly batchId: string,
  ) {
    super(message);
    this.name = 'FillError';
  }
}

export class FillingMachine {
  constructor(
    private readonly qrng: Qrng,
    /** An admin client of the key service. */
    private readonly kms: KmsClient,
    /** Test hook: throw at a point to simulate the machine dying there. */
    private readonly crashPoint?: (p: FillCrashPoint) => void,
  ) {}

  async fill(chip: SecurityChip, req: FillRequest): Promise<FillResult> {
    const deviceId = chip.deviceId;
    await this.ensureDevice(deviceId, chip.status().serial);
    const base = req.batchId ?? `${deviceId}.${Date.now().toString(36)}.${randomBytes(3).toString('hex')}`;
    const total = req.up + req.down;
    const wantLogin = req.loginKey ?? !chip.status().hasLoginKey;
    const result: FillResult = { batches: [], up: 0, down: 0, loginKey: false, recovered: [] };
    const chunks = Math.max(1, Math.ceil(total / MAX_BATCH_KEYS));
    let upLeft = req.up;
    let downLeft = req.down;
    for (let c = 0; c < chunks; c++) {
      const batchId = c === 0 ? base : `${base}.${c + 1}`;
      const n = Math.min(MAX_BATCH_KEYS, upLeft + downLeft);
      const up = Math.min(upLeft, n);
      const down = n - up;
      const outcome = await this.fillOne(chip, batchId, up, down, wantLogin && c === 0, result);
      if (outcome.filled) {
        result.batches.push(outcome.batchId);
        result.up += up;
        result.down += down;
        result.loginKey ||= wantLogin && c === 0;
      }
      upLeft -= up;
      downLeft -= down;
      req.onProgress?.(total - upLeft - downLeft, total);
    }
    return result;
  }

  /** Fills until the chip holds at least `target` keys per pool, if either pool is below `lowWater`. */
  async topUp(chip: SecurityChip, lowWater: number, target: number): Promise<FillResult | undefined> {
    const s = chip.status();
    if (s.uplinkKeys >= lowWater && s.downlinkKeys >= lowWater) return undefined;
    return this.fill(chip, { up: Math.max(0, target - s.uplinkKeys), down: Math.max(0, target - s.downlinkKeys) });
  }

  private async ensureDevice(deviceId: string, serial: string | null): Promise<void> {
    try {
      await this.kms.device(deviceId);
    } catch (err) {
      if (!(err instanceof KmsHttpError && err.code === 'KMS_ERR_NOT_FOUND')) throw err;
      await this.kms.registerDevice(deviceId, serial ?? undefined);
    }
  }

  /** One batch. Resumes or cancels a half-done batch with the same id first. */
  private async fillOne(
    chip: SecurityChip,
    batchId: string,
    up: number,
    down: number,
    withLogin: boolean,
    result: FillResult,
  ): Promise<{ filled: boolean; batchId: string }> {
    const deviceId = chip.deviceId;
    const existing = await this.kms.batch(deviceId, batchId).catch((err: unknown) => {
      if (err instanceof KmsHttpError && err.code === 'KMS_ERR_NOT_FOUND') return undefined;
      throw err;
    });
    if (existing) {
      if (existing.state === 'committed') {
        if (!chip.hasBatch(batchId)) {
          throw new FillError(
            `batch ${batchId} is committed in the key service but missing from this chip (restored from an old copy?)`,
            batchId,
          );
        }
        return { filled: false, batchId };
      }
      if (existing.state === 'pending') {
        if (chip.hasBatch(batchId)) {
          // The machine died after writing the chip: completing the commit finishes the fill.
          await this.kms.commitBatch(deviceId, batchId);
          result.recovered.push({ batchId, action: 'committed' });
          return { filled: false, batchId };
        }
        // The keys never reached the chip and cannot be drawn again: cancel, then fill afresh under a new id.
        await this.kms.cancelBatch(deviceId, batchId);
        result.recovered.push({ batchId, action: 'cancelled' });
        batchId = `${batchId}.retry-${randomBytes(2).toString('hex')}`;
      } else {
        batchId = `${batchId}.retry-${randomBytes(2).toString('hex')}`;
      }
    }

    const device = await this.kms.device(deviceId);
    const start = Math.max(chip.status().nextKeyIndex, device.next_key_index);
    const material = this.qrng.bytes(16 * (up + down) + (withLogin ? 16 : 0));
    const keys = Array.from({ length: up + down }, (_, i) => ({
      index: start + i,
      direction: (i < up ? 'up' : 'down') as 'up' | 'down',
      key: material.subarray(16 * i, 16 * i + 16),
    }));
    const loginKey = withLogin ? material.subarray(16 * (up + down)) : undefined;
    try {
      // 1. Register pending: not claimable yet. If this fails, the chip has not been touched.
      await this.kms.registerBatch(deviceId, {
        batch_id: batchId,
        ...(loginKey ? { login_key: Buffer.from(loginKey).toString('base64') } : {}),
        keys: keys.map((k) => ({
          key_index: k.index,
          direction: k.direction,
          key: Buffer.from(k.key).toString('base64'),
        })),
      });
      this.crashPoint?.('after-register');
      // 2. Write the chip (one atomic file replacement).
      try {
        chip.applyFill({ batchId, ...(loginKey ? { loginKey } : {}), keys });
      } catch (err) {
        await this.kms.cancelBatch(deviceId, batchId).catch(() => undefined);
        throw err instanceof ChipError
          ? err
          : new FillError(`writing the chip failed; batch ${batchId} cancelled: ${(err as Error).message}`, batchId);
      }
      this.crashPoint?.('after-chip-write');
      // 3. Commit: the keys become claimable and the login key active.
      try {
        await this.kms.commitBatch(deviceId, batchId);
      } catch (err) {
        throw new FillError(
          `the chip holds batch ${batchId} but the key service did not confirm it; run the fill again with --batch-id ${batchId} to complete it (${(err as Error).message})`,
          batchId,
        );
      }
      return { filled: true, batchId };
    } finally {
      material.fill(0);
    }
  }
}
