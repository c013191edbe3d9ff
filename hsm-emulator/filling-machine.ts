// The key filling machine: draws keys from the QRNG and loads one chip and the key service with the same batches,
// all or nothing per batch (register pending -> load the sealed batch into the chip -> commit), resuming by itself.
import { randomBytes } from 'node:crypto';
import { type KmsClient, KmsHttpError } from '../kms-api/client.js';
import type { FillPlan, SecurityChip } from './chip.js';
import { ChipError } from './chip-errors.js';
import { MAX_BATCH_KEYS, sealFactoryBatch } from './factory-batch.js';
import type { Qrng } from './qrng.js';
import { type Sm2KeyPair, sm2KeyPair } from './sm2.js';

export { MAX_BATCH_KEYS };

export interface FillRequest {
  up: number;
  down: number;
  /** Fill a (new) login key; default: when the chip has none. */
  loginKey?: boolean;
  /** Fill id (batches are `<id>.<first key index>`); default: a new one, or the id of the fill to resume. */
  batchId?: string;
  onProgress?: (keysDone: number, keysTotal: number) => void;
}

export interface FillResult {
  /** The fill this run carried out or finished. */
  fillId: string;
  /** True when this run finished a fill an earlier run had started. */
  resumed: boolean;
  batches: string[];
  up: number;
  down: number;
  loginKey: boolean;
  /** Half-done batches found in the key service and completed or cancelled before anything new was filled. */
  recovered: Array<{ batchId: string; action: 'committed' | 'cancelled' }>;
  /** An unfinished fill with another plan, closed with what it had loaded before this one started. */
  abandoned?: { fillId: string; up: number; down: number };
}

export type FillCrashPoint = 'after-plan' | 'after-register' | 'after-chip-write' | 'after-commit';

/** What the machine is about to do, announced before it does it (the CLI prints these). */
export type FillEvent =
  | { kind: 'plan'; fillId: string; up: number; down: number; loginKey: boolean; resumed: boolean }
  | { kind: 'batch'; batchId: string; firstIndex: number; up: number; down: number; loginKey: boolean };

export class FillError extends Error {
  constructor(
    message: string,
    readonly batchId: string,
  ) {
    super(message);
    this.name = 'FillError';
  }
}

let processIssuer: Sm2KeyPair | undefined;
/** An issuer key that lives as long as this process: for tests and one-shot simulations, never for real chips. */
export function ephemeralIssuer(): Sm2KeyPair {
  return (processIssuer ??= sm2KeyPair());
}

export interface FillingMachineOptions {
  /** The key issuer's SM2 key pair that signs every batch (or how to load it, when first needed). */
  issuer?: Sm2KeyPair | (() => Sm2KeyPair);
  /** Test hook: throw (or kill the process) at a point to simulate the machine dying there. */
  crashPoint?: (p: FillCrashPoint) => void;
  onEvent?: (e: FillEvent) => void;
}

export class FillingMachine {
  private issuerKey: Sm2KeyPair | undefined;
  private readonly options: FillingMachineOptions;

  constructor(
    private readonly qrng: Qrng,
    /** An admin client of the key service. */
    private readonly kms: KmsClient,
    options: FillingMachineOptions | ((p: FillCrashPoint) => void) = {},
  ) {
    this.options = typeof options === 'function' ? { crashPoint: options } : options;
  }

  private get issuer(): Sm2KeyPair {
    const given = this.options.issuer ?? ephemeralIssuer;
    return (this.issuerKey ??= typeof given === 'function' ? given() : given);
  }

  /**
   * Fills `req.up` uplink and `req.down` downlink keys in batches of at most MAX_BATCH_KEYS, each all or nothing.
   * First settles what an interrupted run left: pending batches in the key service are committed when the chip
   * holds them and cancelled otherwise; an unfinished fill with the same plan is finished instead of starting anew.
   */
  async fill(chip: SecurityChip, req: FillRequest): Promise<FillResult> {
    const deviceId = chip.deviceId;
    await this.ensureDevice(deviceId, chip.status().serial);
    const recovered = await this.settlePending(chip);
    let abandoned: FillResult['abandoned'];
    let plan = chip.status().fill;
    let resumed = false;
    if (plan) {
      const same =
        req.batchId === plan.id ||
        (req.batchId === undefined &&
          plan.up === req.up &&
          plan.down === req.down &&
          (req.loginKey === undefined || req.loginKey === plan.loginKey));
      if (same) resumed = true;
      else {
        abandoned = { fillId: plan.id, up: plan.loaded.up, down: plan.loaded.down };
        chip.endFill();
        plan = null;
      }
    }
    if (!plan && req.batchId !== undefined && chip.hasFill(req.batchId)) {
      // That fill already finished on this chip: running it again changes nothing.
      return { fillId: req.batchId, resumed: false, batches: [], up: 0, down: 0, loginKey: false, recovered };
    }
    if (!plan) {
      const fresh: FillPlan = {
        id: req.batchId ?? `${deviceId}.${Date.now().toString(36)}.${randomBytes(3).toString('hex')}`,
        up: req.up,
        down: req.down,
        loginKey: req.loginKey ?? !chip.status().hasLoginKey,
      };
      this.options.onEvent?.({
        kind: 'plan',
        fillId: fresh.id,
        up: fresh.up,
        down: fresh.down,
        loginKey: fresh.loginKey,
        resumed,
      });
      chip.beginFill(fresh);
      this.options.crashPoint?.('after-plan');
      plan = chip.status().fill!;
    } else {
      this.options.onEvent?.({
        kind: 'plan',
        fillId: plan.id,
        up: plan.up,
        down: plan.down,
        loginKey: plan.loginKey,
        resumed,
      });
    }
    const result: FillResult = {
      fillId: plan.id,
      resumed,
      batches: [],
      up: 0,
      down: 0,
      loginKey: false,
      recovered,
      ...(abandoned ? { abandoned } : {}),
    };
    const total = plan.up + plan.down;
    let upLeft = plan.up - plan.loaded.up;
    let downLeft = plan.down - plan.loaded.down;
    let withLogin = plan.loginKey && !plan.loaded.loginKey;
    while (upLeft + downLeft > 0 || withLogin) {
      const n = Math.min(MAX_BATCH_KEYS, upLeft + downLeft);
      const up = Math.min(upLeft, n);
      const down = n - up;
      const batchId = await this.fillOne(chip, plan.id, up, down, withLogin);
      result.batches.push(batchId);
      result.up += up;
      result.down += down;
      result.loginKey ||= withLogin;
      upLeft -= up;
      downLeft -= down;
      withLogin = false;
      req.onProgress?.(total - upLeft - downLeft, total);
    }
    chip.endFill();
    return result;
  }

  /** Fills until the chip holds at least `target` keys per pool, if either pool is below `lowWater`. */
  async topUp(chip: SecurityChip, lowWater: number, target: number): Promise<FillResult | undefined> {
    const s = chip.status();
    if (s.fill) return this.fill(chip, { up: s.fill.up, down: s.fill.down, batchId: s.fill.id });
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

  /** A pending batch is a fill that stopped between its steps: the chip holding it decides commit or cancel. */
  private async settlePending(chip: SecurityChip): Promise<FillResult['recovered']> {
    const recovered: FillResult['recovered'] = [];
    for (const b of (await this.kms.batches(chip.deviceId, 'pending')).batches) {
      if (chip.hasBatch(b.batch_id)) {
        await this.kms.commitBatch(chip.deviceId, b.batch_id);
        recovered.push({ batchId: b.batch_id, action: 'committed' });
      } else {
        // The keys never reached the chip and cannot be drawn again: they are destroyed.
        await this.kms.cancelBatch(chip.deviceId, b.batch_id);
        recovered.push({ batchId: b.batch_id, action: 'cancelled' });
      }
    }
    return recovered;
  }

  /** One batch: register pending, load the sealed batch into the chip, commit. Returns its id. */
  private async fillOne(chip: SecurityChip, fillId: string, up: number, down: number, withLogin: boolean) {
    const deviceId = chip.deviceId;
    const device = await this.kms.device(deviceId);
    const firstIndex = Math.max(chip.status().nextKeyIndex, device.next_key_index);
    // The first key index is never reused for a device (cancelled keys keep theirs), so neither is this id.
    const batchId = `${fillId}.${firstIndex}`;
    this.options.onEvent?.({ kind: 'batch', batchId, firstIndex, up, down, loginKey: withLogin });
    const material = this.qrng.bytes(16 * (up + down) + (withLogin ? 16 : 0));
    const keyAt = (i: number) => material.subarray(16 * i, 16 * i + 16);
    const upKeys = Array.from({ length: up }, (_, i) => keyAt(i));
    const downKeys = Array.from({ length: down }, (_, i) => keyAt(up + i));
    const loginKey = withLogin ? keyAt(up + down) : undefined;
    try {
      const sealed = sealFactoryBatch(
        { deviceId, batchId, firstIndex, up: upKeys, down: downKeys, ...(loginKey ? { loginKey } : {}) },
        chip.status().transportKey,
        this.issuer,
      );
      // 1. Register pending: not claimable yet. If this fails, the chip has not been touched.
      await this.kms.registerBatch(deviceId, {
        batch_id: batchId,
        suites: chip.status().suites,
        ...(loginKey ? { login_key: Buffer.from(loginKey).toString('base64') } : {}),
        keys: [...upKeys, ...downKeys].map((key, i) => ({
          key_index: firstIndex + i,
          direction: i < up ? ('up' as const) : ('down' as const),
          key: Buffer.from(key).toString('base64'),
        })),
      });
      this.options.crashPoint?.('after-register');
      // 2. Load the chip: it opens the sealed batch itself (one atomic file replacement).
      try {
        chip.importBatch(sealed);
      } catch (err) {
        await this.kms.cancelBatch(deviceId, batchId).catch(() => undefined);
        throw err instanceof ChipError
          ? err
          : new FillError(`writing the chip failed; batch ${batchId} cancelled: ${(err as Error).message}`, batchId);
      }
      this.options.crashPoint?.('after-chip-write');
      // 3. Commit: the keys become claimable and the login key active.
      try {
        await this.kms.commitBatch(deviceId, batchId);
      } catch (err) {
        throw new FillError(
          `the chip holds batch ${batchId} but the key service did not confirm it; run the same fill again to complete it (${(err as Error).message})`,
          batchId,
        );
      }
      this.options.crashPoint?.('after-commit');
      return batchId;
    } finally {
      material.fill(0);
    }
  }
}
