// The hold of a persistent application session (broker/hooks/app-hold.ts) on its own: the stored queue stops at
// the first message needing the key, live deliveries wait in order and within their count, expiry leaves what needs
// the key stored, close delivers nothing, and a stored message sent before goes again with DUP set.
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

function hold(limits: { ms: number; count: number; bytes?: number } = { ms: 1000, count: 10 }) {
  const ends: string[] = [];
  const h = new AppDeliveryHold(needsKey, { bytes: 1 << 20, ...limits }, (outcome) => ends.push(outcome));
  return { h, ends };
}

async function drain(r: Readable): Promise<Array<{ topic: string; dup?: boolean }>> {
  const out: Array<{ topic: string; dup?: boolean }> = [];
  for await (const x of r) out.push(x as { topic: string; dup?: boolean });
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
    const read = drain(h.storedQueue(Readable.from([pkt('plain/a'), pkt('sealed/b'), pkt('plain/c')])));
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
    const out = await drain(h.storedQueue(Readable.from([pkt('sealed/a'), pkt('plain/b'), pkt('sealed/c')])));
    expect(out.map((p) => p.topic)).toEqual(['plain/b']);
    expect(ends).toEqual(['expired']);
  });

  it('on close ends at once: nothing more is read', async () => {
    const { h, ends } = hold();
    const read = drain(h.storedQueue(Readable.from([pkt('plain/a'), pkt('sealed/b'), pkt('plain/c')])));
    await new Promise((r) => setTimeout(r, 20));
    h.close();
    expect((await read).map((p) => p.topic)).toEqual(['plain/a']);
    expect(ends).toEqual(['closed']);
  });

  it('passes everything untouched when nothing needs the key', async () => {
    const { h, ends } = hold();
    const out = await drain(h.storedQueue(Readable.from([pkt('plain/a'), pkt('plain/b')])));
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

  it('beyond the count, one needing the key is left stored (released undelivered), and one that does not passes', async () => {
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
    expect(delivered).toEqual(['plain/d']);
    h.open();
    expect(delivered).toEqual(['plain/d', 'sealed/a', 'sealed/b']);
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
