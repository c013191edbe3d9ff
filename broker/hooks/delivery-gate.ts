// Gates a client's two Aedes delivery functions (deliver0, deliverQoS), through which every live, retained and
// queued-after-subscribe delivery to it passes, with one function that decides when (or whether) each goes on.
import type { AedesPublishPacket, Client } from 'aedes';

export type Deliver = (packet: AedesPublishPacket, cb: () => void) => void;

/**
 * `deliver` is Aedes' own function for this packet; `viaQoS` is true when Aedes handed it to deliverQoS for a QoS 1/2
 * delivery (on a persistent session, its copy is in the store).
 */
export type DeliveryGate = (packet: AedesPublishPacket, deliver: Deliver, cb: () => void, viaQoS: boolean) => void;

interface DeliveringClient {
  deliver0: Deliver;
  deliverQoS: Deliver;
}

/**
 * Wraps both functions with `gate`. Aedes binds a subscription to the function it finds at SUBSCRIBE, so this must
 * run before any (at CONNECT). Aedes' deliverQoS hands a QoS 0 packet to `client.deliver0`, looked up at call time:
 * that would be the gated one, and the packet would pass the gate twice (queued a second time, behind later ones,
 * where Aedes' dedupe drops it); so a QoS 0 packet given to deliverQoS goes to the gate with the inner deliver0.
 */
export function gateDeliveries(client: Client, gate: DeliveryGate): void {
  const c = client as unknown as DeliveringClient;
  const deliver0 = c.deliver0;
  const deliverQoS = c.deliverQoS;
  c.deliver0 = (packet, cb) => gate(packet, deliver0, cb, false);
  c.deliverQoS = (packet, cb) =>
    packet.qos === 0 ? gate(packet, deliver0, cb, false) : gate(packet, deliverQoS, cb, true);
}
