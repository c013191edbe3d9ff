// Which WebSocket upgrades the broker's ws/wss listeners accept: the "mqtt" subprotocol (MQTT 3.1.1 §6), and from a
// web page only the origins configured in wsOrigins. Pure: the decision, from the request's headers.
//
// Why an Origin check when MQTT's credentials are in CONNECT, not in cookies: a page on any site could otherwise open
// connections to a broker inside the user's network (a loopback or intranet broker is reachable from the browser
// when it is not from the Internet) and try tokens or just hold connections. Clients that are not browsers send no
// Origin and are not affected.
import type { IncomingMessage } from 'node:http';

export type UpgradeRefusal = { status: 400 | 403; reason: 'subprotocol' | 'origin' };

/** The subprotocols a client offers, in order (Sec-WebSocket-Protocol, RFC 6455 §11.3.4). */
function offered(req: IncomingMessage): string[] {
  const header = req.headers['sec-websocket-protocol'];
  if (header === undefined) return [];
  return header
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p !== '');
}

/** undefined when the upgrade may go ahead; otherwise the HTTP status it is refused with, and why. */
export function checkUpgrade(req: IncomingMessage, origins: ReadonlySet<string>): UpgradeRefusal | undefined {
  // [MQTT-6.0.0-3]: the client MUST include "mqtt" in the subprotocols it offers.
  if (!offered(req).includes('mqtt')) return { status: 400, reason: 'subprotocol' };
  const origin = req.headers.origin;
  if (origin !== undefined && !origins.has(origin.toLowerCase())) return { status: 403, reason: 'origin' };
  return undefined;
}

/** [MQTT-6.0.0-4]: the subprotocol the server selects and returns MUST be "mqtt". */
export function selectProtocol(protocols: Set<string>): string | false {
  return protocols.has('mqtt') ? 'mqtt' : false;
}
