// The packet guard as pure code: Remaining Length framing, the bounds before and after CONNECT, filter counts, and
// the same verdict however the bytes are split.
import fc from 'fast-check';
import mqttPacket from 'mqtt-packet';
import { describe, expect, it } from 'vitest';
import { type PacketLimits, PacketScanner } from '../../broker/packet-guard.js';

const LIMITS: PacketLimits = { maxPacketSize: 1000, maxPreConnectBytes: 300, maxTopicFiltersPerPacket: 5 };

const gen = (p: object): Buffer => mqttPacket.generate(p as mqttPacket.Packet);
const connect = (passwordBytes = 10): Buffer =>
  gen({
    cmd: 'connect',
    protocolId: 'MQTT',
    protocolVersion: 4,
    clientId: 'c',
    clean: true,
    keepalive: 60,
    username: 'u',
    password: Buffer.alloc(passwordBytes),
  });
const publish = (payloadBytes: number): Buffer =>
  gen({ cmd: 'publish', topic: 't', payload: Buffer.alloc(payloadBytes), qos: 0 });
const subscribe = (n: number): Buffer =>
  gen({
    cmd: 'subscribe',
    messageId: 1,
    subscriptions: Array.from({ length: n }, (_, i) => ({ topic: `f/${i}`, qos: 1 })),
  });
const unsubscribe = (n: number): Buffer =>
  gen({ cmd: 'unsubscribe', messageId: 1, unsubscriptions: Array.from({ length: n }, (_, i) => `f/${i}`) });

/** Scans `bytes` in the given pieces with CONNECT accepted after `acceptAfter` bytes; returns the first refusal. */
function verdict(bytes: Buffer, pieces: number[] = [bytes.length], acceptAfter = Infinity, limits = LIMITS) {
  let fed = 0;
  const scanner = new PacketScanner(limits, () => fed >= acceptAfter);
  let at = 0;
  for (const size of [...pieces, bytes.length]) {
    const chunk = bytes.subarray(at, Math.min(bytes.length, at + size));
    at += chunk.length;
    const r = scanner.scan(chunk);
    if (r) return r;
    fed = at;
    if (at >= bytes.length) break;
  }
  return undefined;
}

const byteAtATime = (b: Buffer) => Array.from({ length: b.length }, () => 1);

describe('PacketScanner', () => {
  it('refuses a first packet that is not CONNECT [MQTT-3.1.0-1], and a CONNECT with reserved flags set', () => {
    expect(verdict(publish(1))).toBe('not_connect');
    expect(verdict(Buffer.from([0xc0, 0x00]))).toBe('not_connect'); // PINGREQ
    expect(verdict(Buffer.from([0x11, 0x00]))).toBe('not_connect'); // [MQTT-2.2.2-2]
    expect(verdict(connect())).toBeUndefined();
  });

  it('refuses a 255 MiB header at its last length byte, before any body arrives', () => {
    // Remaining Length 268,435,455: the largest four bytes can say (MQTT 3.1.1 §2.2.3).
    const header = Buffer.from([0x10, 0xff, 0xff, 0xff, 0x7f]);
    expect(verdict(header)).toBe('too_large_before_connect');
    expect(verdict(header, byteAtATime(header))).toBe('too_large_before_connect');
    const afterConnect = Buffer.concat([connect(), Buffer.from([0x30, 0xff, 0xff, 0xff, 0x7f])]);
    expect(verdict(afterConnect, [connect().length], connect().length)).toBe('too_large');
  });

  it('refuses a Remaining Length with a continuation bit on its fourth byte, whatever follows', () => {
    expect(verdict(Buffer.from([0x10, 0x80, 0x80, 0x80, 0x80]))).toBe('malformed_length');
    expect(verdict(Buffer.from([0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), [1, 1, 1, 1, 1, 1])).toBe(
      'malformed_length',
    );
    // Four bytes, the last without continuation, is a valid encoding (of 2,097,152 here), refused only by size.
    expect(verdict(Buffer.from([0x10, 0x80, 0x80, 0x80, 0x01]))).toBe('too_large_before_connect');
  });

  it('lets a packet of exactly maxPacketSize through after CONNECT, and refuses one byte more', () => {
    const c = connect();
    const exact = publish(0);
    const payload = LIMITS.maxPacketSize - exact.length - 1; // the Remaining Length grows to two bytes
    expect(publish(payload)).toHaveLength(LIMITS.maxPacketSize);
    expect(verdict(Buffer.concat([c, publish(payload)]), [c.length, 7], c.length)).toBeUndefined();
    expect(verdict(Buffer.concat([c, publish(payload + 1)]), [c.length, 7], c.length)).toBe('too_large');
  });

  it('counts every byte before CONNECT is accepted: exactly maxPreConnectBytes passes, one more does not', () => {
    const base = connect(0).length;
    const exact = connect(0 + LIMITS.maxPreConnectBytes - base - 1); // the Remaining Length grows to two bytes
    expect(exact).toHaveLength(LIMITS.maxPreConnectBytes);
    expect(verdict(exact)).toBeUndefined();
    expect(verdict(connect(LIMITS.maxPreConnectBytes - base))).toBe('too_large_before_connect');
    // Small packets pipelined behind a CONNECT before it is accepted add up.
    const pipelined = Buffer.concat([connect(), ...Array.from({ length: 100 }, () => publish(1))]);
    expect(verdict(pipelined)).toBe('too_large_before_connect');
    expect(verdict(pipelined, [connect().length], connect().length)).toBeUndefined();
  });

  it('bounds topic filters per SUBSCRIBE and UNSUBSCRIBE at exactly maxTopicFiltersPerPacket', () => {
    const c = connect();
    for (const [make, name] of [
      [subscribe, 'subscribe'],
      [unsubscribe, 'unsubscribe'],
    ] as const) {
      const ok = Buffer.concat([c, make(5), make(1)]);
      const over = Buffer.concat([c, make(6)]);
      expect(verdict(ok, [c.length], c.length), name).toBeUndefined();
      expect(verdict(ok, byteAtATime(ok), c.length), name).toBeUndefined();
      expect(verdict(over, [c.length], c.length), name).toBe('too_many_filters');
      expect(verdict(over, byteAtATime(over), c.length), name).toBe('too_many_filters');
    }
    // Zero-length filters are counted too (the parser refuses them later).
    const empty = Buffer.from([0x82, 2 + 6 * 3, 0, 1, ...Array.from({ length: 6 }, () => [0, 0, 0]).flat()]);
    expect(verdict(Buffer.concat([c, empty]), [c.length], c.length)).toBe('too_many_filters');
  });

  it('refuses SUBSCRIBE with 10,000 filters at the sixth, long before the packet ends', () => {
    const c = connect();
    const big = Buffer.concat([c, subscribe(10_000)]);
    let fed = 0;
    const scanner = new PacketScanner({ ...LIMITS, maxPacketSize: 1 << 20 }, () => fed >= c.length);
    expect(scanner.scan(big.subarray(0, c.length))).toBeUndefined();
    fed = c.length;
    // Filters are "f/0".."f/5": 2 + 3 + 1 bytes each after a 2-byte packet id; the sixth starts at body byte 32.
    expect(scanner.scan(big.subarray(c.length, c.length + 4 + 2 + 6 * 5))).toBeUndefined();
    expect(scanner.scan(big.subarray(c.length + 4 + 2 + 6 * 5, c.length + 4 + 2 + 6 * 5 + 1))).toBe('too_many_filters');
  });

  it('gives the same verdict however a stream of packets is split', () => {
    const packet = fc.oneof(
      fc.integer({ min: 0, max: 1200 }).map(publish),
      fc.integer({ min: 1, max: 8 }).map(subscribe),
      fc.integer({ min: 1, max: 8 }).map(unsubscribe),
      fc.constant(gen({ cmd: 'pingreq' })),
    );
    fc.assert(
      fc.property(
        fc.array(packet, { maxLength: 6 }),
        fc.array(fc.integer({ min: 1, max: 64 }), { maxLength: 200 }),
        (packets, pieces) => {
          const c = connect();
          const stream = Buffer.concat([c, ...packets]);
          const whole = verdict(stream, [c.length, stream.length], c.length);
          const split = verdict(stream, [c.length, ...pieces], c.length);
          expect(split).toBe(whole);
        },
      ),
      { numRuns: 300 },
    );
  });
});
