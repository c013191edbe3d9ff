// The hold of an application connection (broker/hooks/app-hold.ts) on its own: the stored queue stops at the first
// message needing the key, live deliveries wait in order and within their count (none overtakes another), expiry
// leaves what needs the key stored, close delivers nothing, and a key that runs out holds again until the next one.
import { EventEmitter } from 'node:events';
import { Readable } from 'node:stream';
import type { AedesPublishPacket, Client } from 'aedes';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AppDeliveryHold } from '../../broker/hooks/app-hold.js';

type Deliver = (packet: AedesPublishPacket, cb: () => void) => void;

function pkt(topic: string, extra: Partial<AedesPublishPacket> = {}): AedesPublishPacket {
  return { cmd: 'publish', topic, payload: Buffer.from(topic), qos: 1, retain: false, dup: false, ...extra } as never;
}

/** A client whose delivery functions record what reached them; `connected` ends Aedes' sending of the queue. */
function fakeClient() {
  const delivered: string[] = [];
  /** Topics whose delivery callback ran (delivered, or released undelivered). */
  const released: string[] = [];
  const client = new EventEmitter() as EventEmitter & { deliver0: Deliver; deliverQoS: Deliver };
  client.deliver0 = client.deliverQoS = (p, cb) => (delivered.push(p.topic), cb());
  return { client, delivered, released };
}

/** Topics under `sealed/` need the key. */
const needsKey = (p: { topic: string }) => p.topic.startsWith('sealed/');

/** A hold whose announcement (open) brings a key that seals everything after it. */
function hold(limits: { ms: number; count: number; bytes?: number } = { ms: 1000, count: 10 }) {
  const ends: string[] = [];
  let announced = false;
  const h = new AppDeliveryHold(
    (p) => (needsKey(p) && !announced ? 'needs-key' : 'plain'),
    { bytes: 1 << 20, ...limits },
    { end: (outcome) => ends.push(outcome), dropped: () => undefined },
    true,
  );
  const open = h.open.bind(h);
  h.open = () => {
    announced = true;
    open();
  };
  return { h, ends };
}

/** Reads the stored queue as Aedes does: the forward hook has each message before the reader reads the next. */
async function drain(h: AppDeliveryHold, r: Readable): Promise<Array<{ topic: string; dup?: boolean }>> {
  const out: Array<{ topic: string; dup?: boolean }> = [];
  for await (const x of r) {
    out.push(x as { topic: string; dup?: boolean });
    h.forwarded();
  }
  return out;
}

function live(client: { deliverQoS: Deliver }, topic: string, released: string[]) {
  let done = false;
  client.deliverQoS(pkt(topic), () => {
    done = true;
    released.push(topic);
  });
  return () => done;
}

afterEach(() => vi.useRealTimers());

describe('the stored queue', () => {
  it('passes what needs no key, stops at the first message needing it, and goes on, in order, when announced', async () => {
    const { h } = hold();
    const read = drain(h, h.storedQueue(Readable.from([pkt('plain/a'), pkt('sealed/b'), pkt('plain/c')])));
    await new Promise((r) => setTimeout(r, 20));
    let finished = false;
    void read.then(() => (finished = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(finished).toBe(false);
    h.open();
    expect((await read).map((p) => p.topic)).toEqual(['plain/a', 'sealed/b', 'plain/c']);
  });

  it('on expiry skips what needs the key (it stays stored) and passes the rest', async () => {
    const { h, ends } = hold({ ms: 30, count: 10 });
    const out = await drain(h, h.storedQueue(Readable.from([pkt('sealed/a'), pkt('plain/b'), pkt('sealed/c')])));
    expect(out.map((p) => p.topic)).toEqual(['plain/b']);
    expect(ends).toEqual(['expired']);
  });

  it('on close fails at once (Aedes must not go on to mark the closed client connected): nothing more is read', async () => {
    const { h, ends } = hold();
    const seen: string[] = [];
    const reader = h.storedQueue(Readable.from([pkt('plain/a'), pkt('sealed/b'), pkt('plain/c')]));
    const read = (async () => {
      for await (const x of reader) {
        seen.push((x as { topic: string }).topic);
        h.forwarded();
      }
    })();
    await new Promise((r) => setTimeout(r, 20));
    h.close();
    await expect(read).rejects.toThrow(/closed while its stored queue was being sent/);
    expect(seen).toEqual(['plain/a']);
    expect(ends).toEqual(['closed']);
  });

  it('passes everything untouched when nothing needs the key', async () => {
    const { h, ends } = hold();
    const out = await drain(h, h.storedQueue(Readable.from([pkt('plain/a'), pkt('plain/b')])));
    expect(out.map((p) => p.topic)).toEqual(['plain/a', 'plain/b']);
    expect(ends).toEqual([]);
  });
});

describe('live deliveries', () => {
  it('wait until the stored queue is sent, then pass as usual', () => {
    const { h } = hold();
    const { client, delivered, released } = fakeClient();
    h.gate(client as unknown as Client);
    live(client, 'plain/a', released);
    expect(delivered).toEqual([]);
    client.emit('connected');
    expect(delivered).toEqual(['plain/a']);
    live(client, 'plain/b', released);
    expect(delivered).toEqual(['plain/a', 'plain/b']);
  });

  it('needing the key: held in order, with those behind them, until the announcement', () => {
    const { h } = hold();
    const { client, delivered, released } = fakeClient();
    h.gate(client as unknown as Client);
    client.emit('connected');
    live(client, 'sealed/a', released);
    live(client, 'plain/b', released);
    live(client, 'sealed/c', released);
    expect(delivered).toEqual([]);
    h.open();
    expect(delivered).toEqual(['sealed/a', 'plain/b', 'sealed/c']);
  });

  it('beyond the count nothing more is held and nothing overtakes what is: it is left (released undelivered)', async () => {
    const { h } = hold({ ms: 1000, count: 2 });
    const { client, delivered, released } = fakeClient();
    h.gate(client as unknown as Client);
    client.emit('connected');
    live(client, 'sealed/a', released);
    live(client, 'sealed/b', released);
    const third = live(client, 'sealed/c', released);
    live(client, 'plain/d', released);
    await new Promise((r) => setImmediate(r));
    expect(third()).toBe(true);
    expect(released).toContain('plain/d');
    expect(delivered).toEqual([]); // Aedes would drop sealed/a and sealed/b as older than plain/d (its dedupe)
    h.open();
    expect(delivered).toEqual(['sealed/a', 'sealed/b']);
  });

  it('beyond the held payload bytes, one needing the key is left stored too', async () => {
    const { h } = hold({ ms: 1000, count: 10, bytes: 16 });
    const { client, delivered, released } = fakeClient();
    h.gate(client as unknown as Client);
    client.emit('connected');
    live(client, 'sealed/aaaaaaa', released); // 14 bytes of payload (the topic)
    const second = live(client, 'sealed/b', released); // 8 more: past 16
    await new Promise((r) => setImmediate(r));
    expect(second()).toBe(true);
    h.open();
    expect(delivered).toEqual(['sealed/aaaaaaa']);
  });

  it('on expiry: those needing the key are released undelivered, the rest delivered, in order', async () => {
    vi.useFakeTimers();
    const { h, ends } = hold({ ms: 500, count: 10 });
    const { client, delivered, released } = fakeClient();
    h.gate(client as unknown as Client);
    client.emit('connected');
    live(client, 'sealed/a', released);
    live(client, 'plain/b', released);
    vi.advanceTimersByTime(500);
    expect(ends).toEqual(['expired']);
    expect(delivered).toEqual(['plain/b']);
    live(client, 'sealed/c', released); // after expiry: left stored at once
    live(client, 'plain/d', released);
    await vi.runAllTimersAsync();
    expect(delivered).toEqual(['plain/b', 'plain/d']);
    expect(released).toContain('sealed/a');
    expect(released).toContain('sealed/c');
  });

  it('on close nothing held is delivered', async () => {
    const { h } = hold();
    const { client, delivered, released } = fakeClient();
    h.gate(client as unknown as Client);
    client.emit('connected');
    live(client, 'sealed/a', released);
    h.close();
    live(client, 'plain/b', released);
    await new Promise((r) => setImmediate(r));
    h.open(); // an announcement racing the close changes nothing
    expect(delivered).toEqual([]);
    expect(released.sort()).toEqual(['plain/b', 'sealed/a']);
  });
});

describe('a key that runs out (docs/PROTOCOL.md §22.6)', () => {
  /** Sealed deliveries spend the key's budget; one that finds it empty needs the next key. */
  function spending(budget: number) {
    const state = { budget };
    const ends: string[] = [];
    const h = new AppDeliveryHold(
      (p) => (!p.topic.startsWith('sealed/') ? 'plain' : state.budget === 0 ? 'needs-key' : 'sealable'),
      { ms: 1000, count: 10, bytes: 1 << 20 },
      { end: (outcome) => ends.push(outcome), dropped: () => undefined },
      true,
    );
    const { client, delivered, released } = fakeClient();
    const deliver = client.deliverQoS;
    client.deliver0 = client.deliverQoS = (p, cb) => {
      if (p.topic.startsWith('sealed/')) {
        expect(state.budget).toBeGreaterThan(0); // never handed on without a key to seal it
        state.budget--;
      }
      deliver(p, cb);
    };
    h.gate(client as unknown as Client);
    client.emit('connected'); // no stored queue
    h.open();
    return { h, state, ends, client, delivered, released };
  }

  it('holds from the first delivery that finds the key spent, in order, until the next announcement', () => {
    const { h, state, ends, client, delivered, released } = spending(2);
    for (const t of ['sealed/1', 'sealed/2', 'sealed/3', 'plain/4', 'sealed/5']) live(client, t, released);
    expect(delivered).toEqual(['sealed/1', 'sealed/2']);
    state.budget = 10;
    h.open();
    expect(delivered).toEqual(['sealed/1', 'sealed/2', 'sealed/3', 'plain/4', 'sealed/5']);
    expect(ends).toEqual(['open']);
  });

  it('holds again when more were held than the new key may seal', () => {
    const { h, state, client, delivered, released } = spending(0);
    for (const t of ['sealed/1', 'sealed/2', 'sealed/3']) live(client, t, released);
    expect(delivered).toEqual([]);
    state.budget = 1;
    h.open();
    expect(delivered).toEqual(['sealed/1']);
    live(client, 'plain/4', released); // behind what still waits
    expect(delivered).toEqual(['sealed/1']);
    state.budget = 5;
    h.open();
    expect(delivered).toEqual(['sealed/1', 'sealed/2', 'sealed/3', 'plain/4']);
  });

  it('expires like the first hold: what needs a key is released undelivered, the rest passes', async () => {
    vi.useFakeTimers();
    const { state, ends, client, delivered, released } = spending(1);
    for (const t of ['sealed/1', 'sealed/2', 'plain/3']) live(client, t, released);
    vi.advanceTimersByTime(1000);
    await vi.runAllTimersAsync();
    expect(ends).toEqual(['expired']);
    expect(delivered).toEqual(['sealed/1', 'plain/3']);
    expect(released).toContain('sealed/2');
    expect(state.budget).toBe(0);
  });
});
