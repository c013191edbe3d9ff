// bench/hsm: QRNG output rate with health tests on, keys filled per second into chip plus key service, and chip
// seal operations per second, each beside a baseline measured in the same run. Run: npm run bench:hsm
import { randomFillSync } from 'node:crypto';
import { join } from 'node:path';
import { SecurityChip } from '../hsm-emulator/chip.js';
import { FillingMachine } from '../hsm-emulator/filling-machine.js';
import { HealthTests } from '../hsm-emulator/health-tests.js';
import { Qrng } from '../hsm-emulator/qrng.js';
import { loadKmsConfig } from '../key-service/config.js';
import { KmsClient } from '../kms-api/client.js';
import { initDataDir } from '../key-service/data-dir.js';
import { startKms } from '../key-service/server.js';
import { EnvelopeKey, sealEnvelope } from '../protocol/index.js';
import { formatBytesPerSecond, formatRate, median, table } from './_measure.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';

const MiB = 1 << 20;
const QRNG_TARGET = 50 * MiB;

function rate(fn: () => number, ms: number): number {
  const samples: number[] = [];
  for (let r = 0; r < 5; r++) {
    let units = 0;
    const start = performance.now();
    while (performance.now() - start < ms) units += fn();
    samples.push(units / ((performance.now() - start) / 1000));
  }
  return median(samples);
}

const dir = mkdtempSync(join(tmpdir(), 'qkey-bench-hsm-'));
try {
  // 1. QRNG: conditioned output with health tests, beside the raw OS source and the health tests alone.
  const qrng = new Qrng();
  const buf = new Uint8Array(MiB);
  const tests = new HealthTests(6);
  const qrngRate = rate(() => qrng.bytes(64 * 1024).length, 400);
  const osRate = rate(() => (randomFillSync(buf), buf.length), 400);
  const healthRate = rate(() => (randomFillSync(buf), tests.feed(buf), buf.length), 400);
  console.log('bench/hsm\n');
  console.log(
    table([
      ['QRNG', 'rate', 'vs OS CSPRNG'],
      ['OS CSPRNG (raw noise stand-in)', formatBytesPerSecond(osRate), '1.00x'],
      ['raw + SP 800-90B health tests', formatBytesPerSecond(healthRate), `${(healthRate / osRate).toFixed(2)}x`],
      ['QRNG output (tests + SM3 + SM4-CTR)', formatBytesPerSecond(qrngRate), `${(qrngRate / osRate).toFixed(2)}x`],
    ]),
  );
  console.log(
    `target: QRNG >= 50 MiB/s with health tests on: ${formatBytesPerSecond(qrngRate)} ${qrngRate >= QRNG_TARGET ? 'PASS' : 'FAIL'}\n`,
  );

  // 2. Fill: keys per second into chip + key service, beside registering the same batches in the key service alone.
  initDataDir(join(dir, 'kms'), { adminToken: 'bench' });
  const kms = await startKms(
    loadKmsConfig({ port: 0, dataDir: join(dir, 'kms'), logLevel: 'warn', adminToken: 'bench' }, { env: {} }),
  );
  const admin = new KmsClient(kms.url, { token: 'bench' });
  const machine = new FillingMachine(qrng, admin);
  const FILL = 4096;
  const fills: number[] = [];
  for (let n = 0; n < 3; n++) {
    const chip = SecurityChip.create(join(dir, `fill-${n}.chip`), {
      deviceId: `bench-fill-${n}`,
      pin: '1234',
      kdfIterations: 1000,
    });
    const start = performance.now();
    await machine.fill(chip, { up: FILL / 2, down: FILL / 2 });
    fills.push(FILL / ((performance.now() - start) / 1000));
    chip.close();
  }
  const fillRate = median(fills);
  const kmsOnly: number[] = [];
  for (let i = 0; i < 3; i++) {
    const id = `bench-kms-${i}`;
    await admin.registerDevice(id);
    const keys = Array.from({ length: FILL }, (_, k) => ({
      key_index: k,
      direction: (k % 2 ? 'up' : 'down') as 'up' | 'down',
      key: Buffer.from(qrng.bytes(16)).toString('base64'),
    }));
    const start = performance.now();
    await admin.registerBatch(id, { batch_id: `${id}-b`, keys });
    await admin.commitBatch(id, `${id}-b`);
    kmsOnly.push(FILL / ((performance.now() - start) / 1000));
  }
  await kms.close();
  const kmsRate = median(kmsOnly);
  console.log(
    table([
      ['fill (4096-key batches)', 'keys/s', 'ratio'],
      ['key service registration alone', formatRate(kmsRate), '1.00x'],
      ['filling machine: QRNG + key service + chip', formatRate(fillRate), `${(fillRate / kmsRate).toFixed(2)}x`],
    ]),
  );

  // 3. Chip seal operations per second (64-byte telemetry), beside sealing with a bare envelope key.
  const chip = SecurityChip.create(join(dir, 'seal.chip'), {
    deviceId: 'bench-seal',
    pin: '1234',
    kdfIterations: 1000,
  });
  chip.applyFill({
    batchId: 'b',
    keys: Array.from({ length: 64 }, (_, i) => ({ index: i, direction: 'up' as const, key: qrng.bytes(16) })),
  });
  chip.beginSession();
  const payload = qrng.bytes(64);
  const topic = 'devices/bench-seal/up/telemetry';
  const chipRate = rate(() => (chip.sealUplink(payload, topic), 1), 300);
  const key = new EnvelopeKey(qrng.bytes(16));
  let seq = 0;
  const rawRate = rate(
    () => (sealEnvelope(payload, { key, keyIndex: 1, seq: seq++, deviceId: 'bench-seal', topic, direction: 'up' }), 1),
    300,
  );
  console.log(
    `\n${table([
      ['seal, 64 B', 'ops/s', 'ratio'],
      ['envelope seal, bare key', formatRate(rawRate), '1.00x'],
      [
        'chip seal (session key, rotation, durable seq reservation every 256)',
        formatRate(chipRate),
        `${(chipRate / rawRate).toFixed(2)}x`,
      ],
    ])}`,
  );
  chip.close();
  process.exitCode = qrngRate >= QRNG_TARGET ? 0 : 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
