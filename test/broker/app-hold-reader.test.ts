// The stored-queue reader of an application's hold (broker/hooks/app-hold.ts): it hands Aedes one stored message at
// a time, reads the next only once the forward hook has had it, and hands a message the hook could not seal after
// all (its key used up between the look and the seal) to Aedes again under the next key, in its place.
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { AppSessionKeys } from '../../broker/app-session-keys.js';
import { AppDeliveryHold } from '../../broker/hooks/app-hold.js';

const LIMIT = 8;
const limits = { ms: 60_000, count: 100, bytes: 1 << 20 };
const report = { end: () => undefined, dropped: () => undefined };
type Stored = { cmd: 'publish'; qos: 1; topic: string; payload: Buffer };

/** A key service, an app that announces its next key a little after it is due, and the hold between them. */
function session() {
  const keys = new AppSessionKeys('app', { messages: LIMIT, bytes: 1 << 20, seconds: 3600 });
  let generation = 0;
  keys.install(0, new Uint8Array(16).fill(1));
  let announcing = false;
  const hold: AppDeliveryHold = new AppDeliveryHold(
    (p) => {
      if (keys.canSeal(p.payload.length)) return 'sealable';
      if (!announcing) {
        announcing = true; // told to rotate: the app's handshake takes a few milliseconds
        setTimeout(() => {
          keys.install(++generation, new Uint8Array(16).fill(generation + 1));
          announcing = false;
          hold.open();
        }, 5);
      }
      return 'needs-key';
    },
    limits,
    report,
    true,
  );
  return { keys, hold, generation: () => generation };
}

const queue = (texts: string[], share = false): Stored[] => {
  const one = Buffer.from('shared');
  return texts.map((t) => ({ cmd: 'publish', qos: 1, topic: 'a/t', payload: share ? one : Buffer.from(t) }));
};

/** Aedes' emptyQueue, minus the socket: a packet object of its own per message, the forward hook, then the next. */
async function sendQueue(
  s: ReturnType<typeof session>,
  stored: Stored[],
  beforeSeal: (i: number) => void = () => undefined,
): Promise<Array<{ index: number; generation: number }>> {
  const sent: Array<{ index: number; generation: number }> = [];
  const indexOf = new Map(stored.map((p, i) => [p, i] as const));
  let i = 0;
  for await (const item of s.hold.storedQueue(Readable.from(stored))) {
    const packet = { ...(item as Stored), index: indexOf.get(item as Stored) ?? (item as { index: number }).index };
    beforeSeal(i++);
    if (s.keys.seal(packet.payload, packet.topic)) sent.push({ index: packet.index, generation: s.generation() });
    else s.hold.defer(packet as never);
    s.hold.forwarded(); // the plugin's outermost forward wrapper
  }
  return sent;
}

describe('the stored-queue reader', () => {
  it('hands Aedes one message and reads no further until the forward hook has had it', async () => {
    const s = session();
    const reader = s.hold.storedQueue(Readable.from(queue(['0', '1', '2'])));
    const yielded: unknown[] = [];
    reader.on('data', (p) => yielded.push(p));
    const failed = new Promise<Error>((resolve) => reader.once('error', resolve));
    await new Promise((r) => setTimeout(r, 50));
    expect(yielded).toHaveLength(1);
    s.hold.forwarded();
    await new Promise((r) => setTimeout(r, 50));
    expect(yielded).toHaveLength(2);
    s.hold.close(); // fails the read (Aedes must not mark the closed client connected); the store keeps the rest
    expect((await failed).message).toMatch(/closed while its stored queue was being sent/);
    expect(yielded).toHaveLength(2);
  });

  it('a queue several keys long goes out whole and in order, each key sealing at most its limit', async () => {
    const s = session();
    const texts = Array.from({ length: 30 }, (_, i) => String(i));
    const sent = await sendQueue(s, queue(texts));
    expect(sent.map((x) => x.index)).toEqual(texts.map((_, i) => i));
    const perKey = new Map<number, number>();
    for (const x of sent) perKey.set(x.generation, (perKey.get(x.generation) ?? 0) + 1);
    for (const n of perKey.values()) expect(n).toBeLessThanOrEqual(LIMIT);
  });

  it('copies that share one payload Buffer (overlapping subscriptions) are counted one by one', async () => {
    const s = session();
    const sent = await sendQueue(
      s,
      queue(
        Array.from({ length: 12 }, (_, i) => String(i)),
        true,
      ),
    );
    expect(sent).toHaveLength(12);
    expect(sent.filter((x) => x.generation === 0)).toHaveLength(LIMIT);
  });

  it('one the hook cannot seal after all (the app used the key up meanwhile) goes again under the next key, in its place', async () => {
    const s = session();
    const texts = Array.from({ length: 12 }, (_, i) => String(i));
    // Before the fourth seal, the app's own publishes use up what was left of the key.
    const sent = await sendQueue(s, queue(texts), (i) => {
      if (i === 3) while (s.keys.canSeal(1)) s.keys.seal(Buffer.from('app-up'), 'x');
    });
    expect(sent.map((x) => x.index)).toEqual(texts.map((_, i) => i));
    expect(sent[3]!.generation).toBe(1);
  });
});
