// How long a durable write takes on a folder's file system: write 16 KiB and fdatasync, as a WAL commit does.
import { closeSync, fdatasyncSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { median } from './_measure.js';

/** Median milliseconds of `count` 16 KiB write + fdatasync rounds on a scratch file in `dir` (removed after). */
export function durableWriteMs(dir: string, count = 50): number {
  const file = join(dir, 'durable-write.probe');
  const fd = openSync(file, 'w', 0o600);
  const block = Buffer.alloc(16 * 1024, 0x5a);
  const times: number[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const start = performance.now();
      writeSync(fd, block, 0, block.length, (i % 8) * block.length);
      fdatasyncSync(fd);
      times.push(performance.now() - start);
    }
  } finally {
    closeSync(fd);
    rmSync(file, { force: true });
  }
  return median(times);
}
