// `qkey admin app-keys ...`: the application key pool's levels, and its fill with keys drawn from the QRNG emulator.
import { randomBytes } from 'node:crypto';
import { appKeyLevels, fillAppKeys } from '../kms-api/app-session-client.js';
import { APP_KEY_FILL_MAX, type AppKeyLevelsJson } from '../kms-api/app-session-schemas.js';
import type { KmsClient } from '../kms-api/client.js';
import { BATCH_ID_PATTERN } from '../kms-api/common-schemas.js';
import { Qrng } from '../hsm-emulator/qrng.js';
import { intFlag, UsageError } from './io.js';

/** Keys one command fills at most: a hundred batches. */
export const MAX_APP_KEY_FILL = 100 * APP_KEY_FILL_MAX;

export const APP_KEYS_USAGE = `  app-keys                              the application key pool: unused, issued, claimed and expired keys
  app-keys fill --count <n> [--batch <id>]
                                        draw <n> (1 to ${MAX_APP_KEY_FILL}) 16-byte keys from the QRNG emulator into
                                        the application key pool, ${APP_KEY_FILL_MAX} per batch (<id>, <id>-2, ...);
                                        the keys are never printed; a batch id is used once`;

export const APP_KEYS_OPTIONS = {
  count: { type: 'string' },
  batch: { type: 'string' },
} as const;

type Print = (json: unknown, text: () => string) => void;

/** `<id>` for the first batch, `<id>-2` for the second, and so on. */
function batchIds(base: string, batches: number): string[] {
  const ids = Array.from({ length: batches }, (_, i) => (i === 0 ? base : `${base}-${i + 1}`));
  for (const id of ids)
    if (!new RegExp(BATCH_ID_PATTERN).test(id))
      throw new UsageError(
        `--batch ${JSON.stringify(base)} is not valid: 1 to 256 of A-Z a-z 0-9 . _ : -, starting with a letter or digit`,
      );
  return ids;
}

function levelsText(l: AppKeyLevelsJson): string {
  return `application key pool: ${l.filled} unused, ${l.issued} issued, ${l.claimed} claimed, ${l.expired} expired`;
}

/** A fill stopped part-way: what was filled before it stays filled; the message says which batches. */
export class AppKeyFillError extends Error {
  constructor(
    readonly reason: unknown,
    readonly filled: string[],
  ) {
    super((reason as Error).message);
    this.name = 'AppKeyFillError';
  }
}

export async function runAppKeysCommand(
  action: string | undefined,
  values: { count?: string; batch?: string },
  client: KmsClient,
  print: Print,
  qrng: () => Qrng = () => new Qrng(),
): Promise<void> {
  if (action === undefined) {
    if (values.count !== undefined || values.batch !== undefined)
      throw new UsageError('--count and --batch go with app-keys fill');
    const levels = await appKeyLevels(client);
    print(levels, () => levelsText(levels));
    return;
  }
  if (action !== 'fill') throw new UsageError(`unknown command ${JSON.stringify(`app-keys ${action}`)}`);
  const count = intFlag(values.count ?? missing('count'), 'count', 1, MAX_APP_KEY_FILL);
  const base =
    values.batch ?? `app-keys-${new Date().toISOString().replace(/[-:.]/g, '')}-${randomBytes(4).toString('hex')}`;
  const ids = batchIds(base, Math.ceil(count / APP_KEY_FILL_MAX));
  // The QRNG runs its start-up health test before its first output; a failure stops the fill (QrngHealthError).
  const source = qrng();
  const done: Array<{ batch_id: string; count: number }> = [];
  for (const [i, id] of ids.entries()) {
    const n = Math.min(APP_KEY_FILL_MAX, count - i * APP_KEY_FILL_MAX);
    let keys: string[] = [];
    try {
      const material = Buffer.from(source.bytes(16 * n));
      keys = Array.from({ length: n }, (_, k) => material.subarray(16 * k, 16 * k + 16).toString('base64'));
      material.fill(0);
      done.push(await fillAppKeys(client, id, keys));
    } catch (err) {
      throw new AppKeyFillError(
        err,
        done.map((d) => d.batch_id),
      );
    } finally {
      keys.fill('');
    }
  }
  const levels = await appKeyLevels(client);
  const filled = done.reduce((s, d) => s + d.count, 0);
  print({ batches: done, count: filled, levels }, () =>
    [
      `filled ${filled} application keys from the QRNG in ${done.length === 1 ? `batch ${done[0]!.batch_id}` : `batches ${done[0]!.batch_id} to ${done.at(-1)!.batch_id}`}`,
      levelsText(levels),
    ].join('\n'),
  );
}

function missing(flag: string): never {
  throw new UsageError(`missing --${flag}`);
}
