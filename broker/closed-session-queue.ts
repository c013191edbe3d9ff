// A connection that has closed leaves its session's stored queue as it is: Aedes goes on reading that queue after
// the connection closed, and what it does to each message then would lose it.
import { Transform, type Readable } from 'node:stream';

interface OutgoingStore {
  outgoingStream(client: object): Readable;
  outgoingUpdate(client: object, packet: object): Promise<unknown>;
  outgoingClearMessageId(client: object, packet: object): Promise<unknown>;
}

const GUARDED = Symbol('qkey.closedSessionQueue');

/**
 * Aedes sends a persistent session's stored queue after CONNACK through a pipeline (its connect handler's
 * emptyQueue) that runs on when the connection closes: each message still in it gets a packet identifier
 * (outgoingUpdate), the forward hook refuses it (the plugin released the client's state), and Aedes clears what the
 * hook refused (outgoingClearMessageId), so the message is gone for the next connection; a takeover's own read of
 * the queue then finds entries missing and fails. For a client that has closed (Aedes' `client.closed`), both calls
 * leave the store untouched (the clear reports nothing removed): the message stays queued, unchanged, for the
 * session's next connection. Nothing a live connection does goes through these paths after it closed (its PUBACKs
 * are no longer read). And the queue read itself fails once the client has closed, so that Aedes' CONNECT handling
 * ends in an error rather than marking the closed client connected (`clientReady` after `clientDisconnect`).
 * Installed outermost (after the queue bound), so the bound counts what the store holds.
 */
export function keepQueuesOfClosedClients(store: OutgoingStore & { [GUARDED]?: true }): void {
  if (store[GUARDED]) return;
  const read = store.outgoingStream.bind(store);
  const update = store.outgoingUpdate.bind(store);
  const clear = store.outgoingClearMessageId.bind(store);
  const closed = (client: object) => (client as { closed?: boolean }).closed === true;
  store.outgoingStream = (client) => failsOnceClosed(read(client), () => closed(client));
  store.outgoingUpdate = (client, packet) => (closed(client) ? Promise.resolve(packet) : update(client, packet));
  store.outgoingClearMessageId = (client, packet) =>
    closed(client) ? Promise.resolve(undefined) : clear(client, packet);
  store[GUARDED] = true;
}

/** The queue as read, failing at the next message (or at its end) once `closed()`. */
function failsOnceClosed(source: Readable, closed: () => boolean): Readable {
  const error = () => new Error('the connection closed while its stored queue was being sent');
  const guarded = new Transform({
    objectMode: true,
    transform: (item: unknown, _enc, next) => (closed() ? next(error()) : next(null, item)),
    flush: (done) => done(closed() ? error() : null),
  });
  // A reader that stops early (the connection ended) destroys `guarded`: the store's own stream goes with it.
  guarded.once('close', () => source.destroy());
  source.once('error', (err) => guarded.destroy(err));
  return source.pipe(guarded);
}
