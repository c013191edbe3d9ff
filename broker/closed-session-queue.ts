// A connection that has closed leaves its session's stored queue as it is: Aedes goes on reading that queue after
// the connection closed, and what it does to each message then would lose it.
interface OutgoingStore {
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
 * leave the store untouched: the message stays queued, unchanged, for the session's next connection. Nothing a live
 * connection does goes through these paths after it closed (its PUBACKs are no longer read).
 */
export function keepQueuesOfClosedClients(store: OutgoingStore & { [GUARDED]?: true }): void {
  if (store[GUARDED]) return;
  const update = store.outgoingUpdate.bind(store);
  const clear = store.outgoingClearMessageId.bind(store);
  const closed = (client: object) => (client as { closed?: boolean }).closed === true;
  store.outgoingUpdate = (client, packet) => (closed(client) ? Promise.resolve(packet) : update(client, packet));
  store.outgoingClearMessageId = (client, packet) => (closed(client) ? Promise.resolve(packet) : clear(client, packet));
  store[GUARDED] = true;
}
