// `qkey demo`: shows a device's chip sealing telemetry and the broker side opening it, replay and tampering refused.
// Grows into the whole-system demo (key service, broker, simulated devices) as those parts land.
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import {
  bytesToHex,
  EnvelopeKey,
  getBackend,
  isProtocolError,
  keyIdFor,
  openEnvelope,
  ReplayWindow,
  SUITE_NAMES,
  sealEnvelope,
} from '../protocol/index.js';
import { type CliIo, EXIT_OK } from './io.js';

export async function runDemoCommand(argv: string[], io: CliIo): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { messages: { type: 'string', default: '3' } } });
  const count = Math.max(1, Math.min(100, Number(values.messages) || 3));
  const backend = getBackend();
  const deviceId = 'demo-device-0001';
  const topic = `devices/${deviceId}/up/telemetry`;
  const keyIndex = 1;
  // Stands in for one uplink key that a filling machine put into the chip and the key service.
  const key = new EnvelopeKey(randomBytes(16), backend);
  const replay = new ReplayWindow();
  io.out(`qkey demo: crypto backend ${backend.name}, device ${deviceId}, key_ID ${keyIdFor(deviceId, keyIndex)}`);
  let last: Uint8Array | undefined;
  for (let seq = 0; seq < count; seq++) {
    const payload = new TextEncoder().encode(JSON.stringify({ seq, temperature: 20 + seq / 10, t: Date.now() }));
    const envelope = sealEnvelope(payload, { key, keyIndex, seq, deviceId, topic, direction: 'up' });
    const opened = openEnvelope(envelope, { key, deviceId, topic, direction: 'up', replay });
    io.out(
      `  up   seq=${seq} ${SUITE_NAMES[opened.header.suite]} ${envelope.length} B envelope ` +
        `${bytesToHex(envelope.subarray(0, 10))}…  ->  ${new TextDecoder().decode(opened.payload)}`,
    );
    last = envelope;
  }
  for (const [what, attempt] of [
    ['replayed envelope', () => openEnvelope(last!, { key, deviceId, topic, direction: 'up', replay })],
    [
      'envelope moved to another topic',
      () => openEnvelope(last!, { key, deviceId, topic: `${topic}/x`, direction: 'up' }),
    ],
  ] as const) {
    try {
      attempt();
      io.out(`  ${what}: accepted (unexpected)`);
    } catch (err) {
      io.out(`  ${what}: refused with ${isProtocolError(err) ? err.code : (err as Error).message}`);
    }
  }
  key.destroy();
  return EXIT_OK;
}
