// Re-deliveries carry DUP 1 [MQTT-3.3.1-1]: the session queue a reconnecting client is sent marks each PUBLISH that
// was sent on an earlier connection and not acknowledged; a message queued while the client was away stays DUP 0.
import { Transform, type Readable } from 'node:stream';

interface QueuedPacket {
  cmd?: string;
  messageId?: number;
  dup?: boolean;
}

interface OutgoingStore {
  outgoingStream(client: { clean?: boolean }): Readable;
}

const MARKED = Symbol('qkey.redeliveriesMarked');

/**
 * Marks a stored PUBLISH as a re-delivery when it already has a packet identifier. The identifier is what tells:
 * Aedes gives a stored message one when it sends it (outgoingUpdate), and only then; one queued while the client was
 * away has none until its first delivery ([MQTT-4.4.0-1] re-sends keep it). Aedes 1.2 sends both with DUP 0
 * (aedes#601). Pure.
 */
export function asRedelivery<P extends QueuedPacket>(packet: P): P {
  if ((packet.cmd === 'publish' || packet.cmd === undefined) && packet.messageId !== undefined && !packet.dup)
    packet.dup = true;
  return packet;
}

/**
 * Wraps `store.outgoingStream` once, so every persistent session's queue read (Aedes' emptyQueue) passes through
 * asRedelivery. A clean session's queue was discarded at CONNECT [MQTT-3.1.2-6]: it is read as it is, at no cost.
 */
export function markRedeliveries(store: OutgoingStore & { [MARKED]?: true }): void {
  if (store[MARKED]) return;
  const read = store.outgoingStream.bind(store);
  store.outgoingStream = (client) => {
    const source = read(client);
    if (client.clean) return source;
    const marked = new Transform({
      objectMode: true,
      transform: (packet: QueuedPacket, _enc, next) => next(null, asRedelivery(packet)),
    });
    // A reader that stops early (the connection ended) destroys `marked`: the store's own stream goes with it.
    marked.once('close', () => source.destroy());
    source.once('error', (err) => marked.destroy(err));
    return source.pipe(marked);
  };
  store[MARKED] = true;
}
