// Socket writes made in one event-loop turn leave together: one syscall per connection per turn, not per packet.
import type { Writable } from 'node:stream';

/** Bytes a coalescing stream may hold before it reports backpressure to the writer. */
export const COALESCE_LIMIT = 1024 * 1024;

/** Uncorks of the streams written to since the last flush, in order of their first write. */
const due: Array<() => void> = [];
let immediate: NodeJS.Immediate | undefined;
let timer: NodeJS.Timeout | undefined;

/**
 * Flushes every corked stream. Scheduled twice per round, whichever comes first: setImmediate runs after the
 * turn's I/O callbacks (the check phase), and a 0 ms timer runs at the start of the next turn, before its I/O.
 * Aedes writes deliveries from setImmediate callbacks; an immediate queued there only runs after the next turn's
 * whole poll phase (thousands of reads under load), which the timer does not wait for.
 */
function flushDue(): void {
  clearImmediate(immediate);
  clearTimeout(timer);
  immediate = timer = undefined;
  // Streams first written by the write callbacks run below go into the next round, after index n.
  const n = due.length;
  for (let i = 0; i < n; i++) due[i]!();
  due.splice(0, n);
}

/**
 * Aedes writes every packet as it is produced, and mqtt-packet corks a socket only until the next tick, so an
 * application subscribed to thousands of devices receives one writev system call per message (in bench/scale,
 * a quarter of the broker's CPU time was in writev). This corks a stream at its first write in an event-loop turn
 * and uncorks it at the end of the turn (see flushDue), so everything written to it meanwhile goes in one call;
 * one flush serves every stream, so 10,000 connections written to in a turn cost one immediate, not 10,000.
 * The cost is at most the rest of the current turn in latency; end() and destroy() flush or drop as usual.
 */
export function coalesceWrites(stream: Writable, limit = COALESCE_LIMIT): void {
  const write = stream.write;
  const cork = stream.cork.bind(stream);
  let corked = false;
  const flush = () => {
    corked = false;
    stream.uncork();
  };
  // mqtt-packet corks a stream per packet and uncorks it from process.nextTick when the stream has a `cork`
  // method; under this turn-long cork that is a wasted tick per packet, so the method is hidden from it. Nothing
  // else calls cork() on an MQTT connection.
  Object.defineProperty(stream, 'cork', { value: undefined, configurable: true, writable: true });
  stream.write = function coalescedWrite(this: Writable, ...args: Parameters<Writable['write']>) {
    if (!corked && !stream.destroyed) {
      corked = true;
      cork();
      due.push(flush);
      if (!immediate) {
        immediate = setImmediate(flushDue);
        timer = setTimeout(flushDue, 0);
      }
    }
    // A corked stream reports backpressure once a turn's writes pass its high-water mark (16 KiB for sockets),
    // and Aedes then holds the message until 'drain', that is until the next turn. Buffering for the turn is
    // what corking is for, so backpressure is reported only past `limit` bytes waiting.
    return write.apply(this, args) || stream.writableLength < limit;
  } as Writable['write'];
}
