// Review of ea17abc, unit level: the stored-queue reader counts what it let through ahead of the forward hook in a
// Set<Buffer> keyed by the payload object. Two stored messages of one client can share a payload Buffer: Aedes'
// in-memory persistence stores one copy per matching subscription (overlapping filters), each `new Packet(packet)`
// with the publisher's payload. The second copy is then not counted, and the reader lets through more than the key
// can seal: the extra copies fail to seal in the hook, are kept in the store, and this connection never gets them.
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { AppSessionKeys } from '../../broker/app-session-keys.js';
import { AppDeliveryHold } from '../../broker/hooks/app-hold.js';

const LIMIT = 8;

/** Reads the stored queue as Aedes' pipeline does when the hook lags behind: everything the reader yields at once. */
async function letThrough(stored: Array<{ topic: string; payload: Buffer }>) {
  const keys = new AppSessionKeys('app', { messages: LIMIT, bytes: 1 << 20, seconds: 3600 });
  keys.install(0, new Uint8Array(16).fill(7));
  const hold = new AppDeliveryHold(
    (_p, ahead) => (keys.canSeal(ahead) ? 'sealable' : 'needs-key'),
    { ms: 60_000, count: 100, bytes: 1 << 20 },
    { end: () => undefined, dropped: () => undefined },
    true,
  );
  const reader = hold.storedQueue(Readable.from(stored.map((p) => ({ cmd: 'publish', qos: 1, ...p }))));
  const yielded: Array<{ payload: Buffer; topic: string }> = [];
  reader.on('data', (p: { payload: Buffer; topic: string }) => yielded.push(p));
  await new Promise((r) => setTimeout(r, 50)); // the reader runs until it waits for the next key
  reader.pause();
  // Now the hook reaches each one: forwarded, then sealed under the key.
  let unsealable = 0;
  for (const p of yielded) {
    hold.forwarded(p.payload);
    if (!keys.seal(p.payload, p.topic)) unsealable++;
  }
  hold.close();
  return { passed: yielded.length, unsealable };
}

describe('seals ahead', () => {
  it('distinct payloads: the reader stops at what the key can seal (sound)', async () => {
    const stored = Array.from({ length: 12 }, (_, i) => ({ topic: 't', payload: Buffer.from(String(i)) }));
    expect(await letThrough(stored)).toEqual({ passed: LIMIT, unsealable: 0 });
  });

  it('two copies per message sharing their payload Buffer: still no more than the key can seal', async () => {
    const stored = Array.from({ length: 6 }, (_, i) => Buffer.from(String(i))).flatMap((payload) => [
      { topic: 'a/t', payload },
      { topic: 'a/t', payload },
    ]);
    // Fails: { passed: 12, unsealable: 4 }.
    expect(await letThrough(stored)).toEqual({ passed: LIMIT, unsealable: 0 });
  });
});
