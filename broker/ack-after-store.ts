// PUBACK after the message is stored: Aedes acknowledges a QoS 1 PUBLISH before it stores and routes it; this makes
// the acknowledgement wait for the publish to complete (retained and queued copies durable), in the order received.
import type { Aedes, Client, PublishPacket } from 'aedes';

type Done = (err?: Error | null) => void;
type AuthorizePublish = NonNullable<Aedes['authorizePublish']>;
type Publish = (packet: PublishPacket, client: Client | null, done: Done) => void;

/** One QoS 1 PUBLISH of a client, from its arrival to its acknowledgement (or refusal). */
interface Slot {
  next: Slot | undefined;
  /** Set once the message is stored and routed, or refused: hands the answer to Aedes. */
  answer: (() => void) | undefined;
}

/** A client's QoS 1 PUBLISHes not yet answered, oldest first. */
interface Pending {
  head: Slot | undefined;
  tail: Slot | undefined;
}

export interface AckAfterStoreOptions {
  /** A packet the hooks accepted but that goes to no one (an acknowledged retransmission): acknowledged, not published. */
  publishesNothing(packet: PublishPacket): boolean;
  /** A will Aedes asks about when a connection ends: published by Aedes itself, and no one acknowledges it. */
  isWill(client: Client, packet: PublishPacket): boolean;
  /** How an accepted-or-refused QoS 1 PUBLISH ended: stored and routed (no error), or not. */
  settled?(packet: PublishPacket, err: Error | null | undefined): void;
}

/**
 * Aedes 1.x (lib/handlers/publish.js) answers a QoS 1 PUBLISH with PUBACK and only then calls `broker.publish`,
 * which stores a retained message and queues a copy for each persistent session that matches: a crash in between
 * loses a message whose sender was told it arrived. At QoS 2 Aedes already stores the PUBLISH, publishes it and then
 * sends PUBREC. This wraps the two places Aedes exposes around that order:
 *
 * - `authorizePublish`: once the hooks accept a QoS 1 PUBLISH from a client, the message is published here, and the
 *   hooks' answer reaches Aedes only when that publish completes, which is after the store's commit is on disk
 *   (persistence/group-commit.ts). Aedes then writes the PUBACK: [MQTT-4.3.2-2] the receiver sends PUBACK having
 *   accepted ownership of the message. A publish that fails (the store could not commit) answers with its error:
 *   Aedes closes the connection and sends no PUBACK, and the client sends the message again on its next connection.
 * - `broker.publish`: Aedes calls it right after the PUBACK with the same packet; a packet already published here
 *   completes at once, so nothing is stored or delivered twice.
 *
 * Answers are handed to Aedes in the order the PUBLISHes arrived, whatever order their stores complete in:
 * [MQTT-4.6.0-2] PUBACKs go out in the order of the PUBLISHes they acknowledge. Aedes dispatches every packet of a
 * socket read at once, and a message waiting for a key claim or a slower store must not be overtaken.
 */
export function acknowledgeAfterStore(aedes: Aedes, o: AckAfterStoreOptions): void {
  const publish = aedes.publish.bind(aedes) as unknown as Publish;
  /** Packets published (or to publish nothing) whose PUBACK Aedes is about to send: its own publish is skipped. */
  const handled = new WeakSet<PublishPacket>();
  const pending = new WeakMap<Client, Pending>();

  (aedes as unknown as { publish: Publish }).publish = function publishOnce(packet, client, done) {
    if (typeof client === 'function') return publish(packet, null, client as Done);
    if (handled.delete(packet)) return done?.(null);
    publish(packet, client, done);
  };

  const authorize = aedes.authorizePublish as AuthorizePublish;
  aedes.authorizePublish = (client, packet, callback) => {
    if (!client || packet.qos !== 1 || o.isWill(client, packet)) return authorize(client, packet, callback);
    // The slot is taken on arrival: Aedes calls this hook for the packets of a read in the order they came.
    const slot = reserve(pending, client);
    authorize(client, packet, (refused) => {
      if (refused) {
        o.settled?.(packet, refused);
        return settle(pending, client, slot, () => callback(refused));
      }
      if (packet.qos !== 1 || o.publishesNothing(packet)) {
        // Nothing to store: acknowledged in its turn (a packet the hooks turned into QoS 0 gets no PUBACK anyway).
        if (packet.qos === 1) handled.add(packet);
        o.settled?.(packet, null);
        return settle(pending, client, slot, () => callback(null));
      }
      publish(packet, client, (err) => {
        o.settled?.(packet, err);
        if (err) return settle(pending, client, slot, () => callback(err));
        handled.add(packet);
        settle(pending, client, slot, () => callback(null));
      });
    });
  };
}

function reserve(pending: WeakMap<Client, Pending>, client: Client): Slot {
  const slot: Slot = { next: undefined, answer: undefined };
  const queue = pending.get(client);
  if (!queue) pending.set(client, { head: slot, tail: slot });
  else if (!queue.tail) queue.head = queue.tail = slot;
  else queue.tail = queue.tail.next = slot;
  return slot;
}

/** Records the slot's answer, then hands Aedes every answer from the oldest on that is ready. */
function settle(pending: WeakMap<Client, Pending>, client: Client, slot: Slot, answer: () => void): void {
  slot.answer = answer;
  const queue = pending.get(client)!;
  while (queue.head?.answer) {
    const ready = queue.head;
    queue.head = ready.next;
    if (!queue.head) queue.tail = undefined;
    ready.answer!();
  }
}
