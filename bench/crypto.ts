// bench/crypto: envelope seal+open per suite beside raw node:crypto sm4-ctr encrypt+decrypt and the sm-crypto path.
// Run: npm run bench:crypto [-- --ms 300 --rounds 5]. Prints rates and ratios against the raw baseline of the same run.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import {
  EnvelopeKey,
  nativeBackend,
  openEnvelope,
  portableBackend,
  SUITE_SM4_CTR_HMAC_SM3,
  SUITE_SM4_GCM,
  type SuiteId,
  sealEnvelope,
  sm4GcmAddonStatus,
} from '../protocol/index.js';
import { type Case, formatBytesPerSecond, formatRate, measureInterleaved, table } from './_measure.js';

const { values } = parseArgs({
  options: { ms: { type: 'string', default: '300' }, rounds: { type: 'string', default: '5' } },
});
const ms = Number(values.ms);
const rounds = Number(values.rounds);

const SIZES = [64, 256, 1024, 16384];
/** Issue #2 targets: default suite seal+open vs raw sm4-ctr encrypt+decrypt. */
const TARGETS: Record<number, number> = { 64: 0.6, 1024: 0.5 };

const rawKey = randomBytes(16);
const iv = randomBytes(16);
const ctx = {
  deviceId: 'bench-device-0001',
  topic: 'devices/bench-device-0001/up/telemetry',
  direction: 'up' as const,
};

function rawCtrCase(payload: Buffer): Case {
  return {
    name: 'raw sm4-ctr enc+dec (node:crypto)',
    run: () => {
      const enc = createCipheriv('sm4-ctr', rawKey, iv);
      const ct = Buffer.concat([enc.update(payload), enc.final()]);
      const dec = createDecipheriv('sm4-ctr', rawKey, iv);
      return Buffer.concat([dec.update(ct), dec.final()]);
    },
  };
}

function envelopeCase(name: string, key: EnvelopeKey, suite: SuiteId, payload: Uint8Array): Case {
  let seq = 0;
  return {
    name,
    run: () => {
      const env = sealEnvelope(payload, { key, keyIndex: 1, seq: seq++ & 0xffffffff, suite, ...ctx });
      return openEnvelope(env, { key, ...ctx }).payload;
    },
  };
}

const nativeKey = new EnvelopeKey(rawKey, nativeBackend);
/** OpenSSL's SM4 with GCM in JavaScript: what the native backend does when the addon is not built. */
const withoutAddon = { ...nativeBackend, createGcm: undefined };
const jsGcmKey = new EnvelopeKey(rawKey, withoutAddon);
const portableKey = new EnvelopeKey(rawKey, portableBackend);
let failed = false;

console.log(
  `bench/crypto: node ${process.version}, OpenSSL ${process.versions.openssl}, SM4-GCM addon: ${sm4GcmAddonStatus().reason}, ${rounds} rounds x ${ms} ms, medians`,
);
for (const size of SIZES) {
  const payload = randomBytes(size);
  const cases = [
    rawCtrCase(payload),
    envelopeCase('envelope SM4-GCM seal+open (native)', nativeKey, SUITE_SM4_GCM, payload),
    envelopeCase('envelope SM4-GCM seal+open (native, without the addon)', jsGcmKey, SUITE_SM4_GCM, payload),
    envelopeCase('envelope SM4-CTR-HMAC-SM3 seal+open (native)', nativeKey, SUITE_SM4_CTR_HMAC_SM3, payload),
    envelopeCase('envelope SM4-GCM seal+open (sm-crypto)', portableKey, SUITE_SM4_GCM, payload),
    envelopeCase('envelope SM4-CTR-HMAC-SM3 seal+open (sm-crypto)', portableKey, SUITE_SM4_CTR_HMAC_SM3, payload),
  ];
  // sm-crypto is ~100x slower at 16 KiB; fewer rounds keep the run short without changing the medians much.
  const rates = measureInterleaved(cases, rounds, size > 4096 ? Math.max(100, ms / 2) : ms);
  const base = rates.get(cases[0]!.name)!;
  const rows = [['case', 'ops', 'payload', 'ratio']];
  for (const c of cases) {
    const r = rates.get(c.name)!;
    rows.push([c.name, formatRate(r), formatBytesPerSecond(r * size), `${(r / base).toFixed(2)}x`]);
  }
  console.log(`\n${size} B\n${table(rows)}`);
  const target = TARGETS[size];
  if (target !== undefined) {
    const ratio = rates.get(cases[1]!.name)! / base;
    const ok = ratio >= target;
    failed ||= !ok;
    console.log(
      `target: SM4-GCM seal+open >= ${target}x raw sm4-ctr at ${size} B: ${ratio.toFixed(2)}x ${ok ? 'PASS' : 'FAIL'}`,
    );
  }
}
process.exitCode = failed ? 1 : 0;
