// The one-at-a-time stored-queue reader of broker/hooks/app-hold.ts, unit level: a stored message that needs the key
// waits for the announcement also when a live delivery made the hold wait first (it is not skipped as if the hold had
// expired, and it goes out before the live one); and only a failed store update of the message in flight lets the
// reader go on (a PUBREC's PUBREL with an unknown identifier, or a PUBREL entry of the queue itself, does not).
import { EventEmitter } from 'node:events';
import { Readable } from 'node:stream';
import type { AedesPublishPacket, Client } from 'aedes';
import { describe, expect, it } from 'vitest';
import { AppDeliveryHold, holdForAppKey } from '../../broker/hooks/app-hold.js';

type Deliver = (packet: AedesPublishPacket, cb: () => void) => void;

function pkt(topic: string): AedesPublishPacket {
  return { cmd: 'publish', topic, payload: Buffer.from(topic), qos: 1, retain: false, dup: false } as never;
}

const tick = (ms = 10) => new Promise((r) => setTimeout(r, ms));

function setup() {
  let announced = false;
  const ends: Array<{ outcome: string; leftStored: number }> = [];
  const h = new AppDeliveryHold(
    (p) => (p.topic.startsWith('sealed/') ? (announced ? 'sealable' : 'needs-key') : 'plain'),
    { ms: 60_000, count: 10, bytes: 1 << 20 },
    { end: (outcome, _held, leftStored) => ends.push({ outcome, leftStored }), dropped: () => undefined },
    true,
  );
  const delivered: string[] = [];
  const client = new EventEmitter() as EventEmitter & { deliver0: Deliver; deliverQoS: Deliver };
  client.deliver0 = client.deliverQoS = (p, cb) => (delivered.push(p.topic), cb());
  h.gate(client as unknown as Client);
  const announce = () => {
    announced = true;
    h.open();
  };
  return { h, client, delivered, announce, ends };
}

describe('the stored-queue reader', () => {
  it('a stored message needing the key waits for the announcement even when a live delivery engaged the hold first', async () => {
    const { h, client, delivered, announce, ends } = setup();
    const yielded: string[] = [];
    const reader = h.storedQueue(Readable.from([pkt('plain/a'), pkt('sealed/b'), pkt('plain/c')]));
    reader.on('data', (p: { topic: string }) => yielded.push(p.topic));
    reader.on('error', () => undefined); // a close fails the read (Aedes' pipeline has the error)
    const ended = new Promise((r) => reader.once('end', r));
    await tick();
    expect(yielded).toEqual(['plain/a']); // in flight: Aedes has not called the forward hook yet
    // A live delivery needing the key arrives meanwhile (a device publishes): held, and it engages the hold.
    client.deliverQoS(pkt('sealed/live'), () => undefined);
    h.forwarded(); // the forward hook had plain/a
    await tick();
    announce(); // within the hold
    await tick();
    for (;;) {
      // Aedes' forward hook for whatever is in flight
      const n = yielded.length;
      h.forwarded();
      await tick();
      if (yielded.length === n) break;
    }
    client.emit('connected');
    await ended;
    // Expected: the stored sealed/b goes out on this connection, before the live one (it is older).
    expect(yielded).toEqual(['plain/a', 'sealed/b', 'plain/c']);
    expect(delivered).toEqual(['sealed/live']);
    expect(ends.every((e) => e.leftStored === 0)).toBe(true);
  });

  it('a failed store update of another packet does not let the reader run ahead of the forward hook', async () => {
    // holdForAppKey on a fake persistence: plain app (no key, no policy), persistent session.
    const queue = [pkt('plain/a'), pkt('plain/b'), pkt('plain/c')];
    const store = {
      outgoingStream: () => Readable.from(queue),
      outgoingUpdate: (_c: unknown, p: { cmd: string }) =>
        p.cmd === 'pubrel' ? Promise.reject(new Error('no such packet')) : Promise.resolve(),
      outgoingClearMessageId: () => Promise.resolve(undefined),
    };
    const client = new EventEmitter() as EventEmitter & Record<string, unknown>;
    Object.assign(client, {
      id: 'app/x',
      clean: false,
      deliver0: (_p: unknown, cb: () => void) => cb(),
      deliverQoS: (_p: unknown, cb: () => void) => cb(),
      broker: { persistence: store },
    });
    const state = { principal: { role: 'app', id: 'app' } } as never;
    const ctx = { states: new Map([[client, state]]), policy: { current: { size: 0 } }, o: {} } as never;
    holdForAppKey(ctx, client as never, state, { ms: 60_000, count: 10, bytes: 1 << 20 });
    const hold = (state as { appHold: AppDeliveryHold }).appHold;
    const yielded: string[] = [];
    const reader = (store.outgoingStream as (c: unknown) => Readable)(client); // wrapped by holdForAppKey
    reader.on('data', (p: { topic: string }) => yielded.push(p.topic));
    reader.on('error', () => undefined); // a close fails the read (Aedes' pipeline has the error)
    await tick();
    expect(yielded).toEqual(['plain/a']); // in flight: its forward hook has not run yet
    // The app sends a PUBREC with an identifier the store does not know, while plain/a is in flight: Aedes' pubrec
    // handler asks the store to turn that entry into a PUBREL; the update fails.
    await store.outgoingUpdate(client, { cmd: 'pubrel', messageId: 999 } as never).catch(() => undefined);
    await tick();
    // plain/a's forward hook has not run, yet the reader went on: plain/b is out too, and plain/a's hook call will
    // resolve plain/b's wait (one ahead from then on).
    expect(yielded).toEqual(['plain/a']);
    hold.close();
  });
});
