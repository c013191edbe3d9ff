// Bounds what a client can make the broker buffer: reads each MQTT fixed header as the bytes arrive, before Aedes
// parses or buffers the packet, and refuses the connection the moment a declared length or a filter count is over.
import type { Readable } from 'node:stream';

export interface PacketLimits {
  /** Largest packet once CONNECT is accepted, fixed header included, bytes. */
  maxPacketSize: number;
  /**
   * Bytes a connection may send before its CONNECT is accepted: the CONNECT (with its will) and whatever the client
   * pipelines behind it, each packet counted whole as declared.
   */
  maxPreConnectBytes: number;
  /** Topic filters in one SUBSCRIBE or UNSUBSCRIBE. */
  maxTopicFiltersPerPacket: number;
}

/** Why a connection was refused; each is a metric label. */
export type InputRefusal =
  | 'not_connect' // the first packet is not a CONNECT [MQTT-3.1.0-1]
  | 'malformed_length' // a Remaining Length of more than four bytes (MQTT 3.1.1 §2.2.3)
  | 'too_large' // a packet over maxPacketSize
  | 'too_large_before_connect' // more than maxPreConnectBytes before CONNECT was accepted
  | 'too_many_filters'; // a SUBSCRIBE or UNSUBSCRIBE with more than maxTopicFiltersPerPacket filters

const SUBSCRIBE = 8;
const UNSUBSCRIBE = 10;
/** CONNECT: packet type 1, reserved flags 0 [MQTT-2.2.2-2]. */
const CONNECT_FIRST_BYTE = 0x10;

const enum Phase {
  Header,
  Length,
  Body,
  /** Inside a SUBSCRIBE or UNSUBSCRIBE: packet id, then the filters. */
  Filters,
}

const enum FilterPart {
  PacketId,
  LengthHigh,
  LengthLow,
  Topic,
  /** SUBSCRIBE only: the requested QoS byte after each filter. */
  Options,
}

/**
 * A streaming reader of MQTT 3.1.1 packet framing. It keeps a few numbers per connection and never copies: bodies
 * are skipped, except SUBSCRIBE and UNSUBSCRIBE whose filter lengths are followed to count the filters. Whether
 * the packet is well-formed beyond its framing is left to the parser behind it.
 */
export class PacketScanner {
  private phase = Phase.Header;
  private started = false;
  private type = 0;
  private length = 0;
  private lengthBytes = 0;
  /** Body bytes of the current packet not yet seen. */
  private remaining = 0;
  private filterPart = FilterPart.PacketId;
  /** Bytes left in the current filter part (packet id: 2, topic: its length). */
  private partLeft = 0;
  private filters = 0;
  private preConnectBytes = 0;

  constructor(
    private readonly limits: Readonly<PacketLimits>,
    /** Whether the connection's CONNECT has been accepted (CONNACK 0 sent). */
    private readonly accepted: () => boolean,
  ) {}

  /** Reads the next bytes of the stream; returns why the connection must be closed, or undefined. */
  scan(chunk: Uint8Array): InputRefusal | undefined {
    const n = chunk.length;
    let i = 0;
    while (i < n) {
      switch (this.phase) {
        case Phase.Header: {
          const first = chunk[i++]!;
          if (!this.started) {
            this.started = true;
            if (first !== CONNECT_FIRST_BYTE) return 'not_connect'; // [MQTT-3.1.0-1]
          }
          this.type = first >> 4;
          this.length = 0;
          this.lengthBytes = 0;
          this.phase = Phase.Length;
          break;
        }
        case Phase.Length: {
          const b = chunk[i++]!;
          // MQTT 3.1.1 §2.2.3: seven bits per byte, least significant first, continuation in the top bit.
          this.length += (b & 0x7f) * 128 ** this.lengthBytes;
          this.lengthBytes++;
          if (b & 0x80) {
            // §2.2.3: at most four bytes (268,435,455); a fourth with the continuation bit is malformed.
            if (this.lengthBytes === 4) return 'malformed_length';
            break;
          }
          const refusal = this.admit(1 + this.lengthBytes + this.length);
          if (refusal) return refusal;
          this.remaining = this.length;
          if (this.remaining === 0) this.phase = Phase.Header;
          else if (this.type === SUBSCRIBE || this.type === UNSUBSCRIBE) {
            this.phase = Phase.Filters;
            this.filterPart = FilterPart.PacketId;
            this.partLeft = 2;
            this.filters = 0;
          } else this.phase = Phase.Body;
          break;
        }
        case Phase.Body: {
          const k = Math.min(this.remaining, n - i);
          i += k;
          this.remaining -= k;
          if (this.remaining === 0) this.phase = Phase.Header;
          break;
        }
        case Phase.Filters: {
          const k = this.filterPart === FilterPart.Topic ? Math.min(this.partLeft, this.remaining, n - i) : 1;
          const b = chunk[i]!;
          i += k;
          this.remaining -= k;
          const refusal = this.followFilters(b, k);
          if (refusal) return refusal;
          if (this.remaining === 0) this.phase = Phase.Header;
          break;
        }
      }
    }
    return undefined;
  }

  /** A packet's size is known: is it within the bound that applies now? */
  private admit(size: number): InputRefusal | undefined {
    if (!this.accepted()) {
      this.preConnectBytes += size;
      if (this.preConnectBytes > this.limits.maxPreConnectBytes) return 'too_large_before_connect';
    } else if (size > this.limits.maxPacketSize) return 'too_large';
    return undefined;
  }

  /**
   * SUBSCRIBE (§3.8.3): packet id, then (length, filter, options) repeated; UNSUBSCRIBE (§3.10.3): packet id, then
   * (length, filter) repeated. `b` is the part's next byte, `k` how many of its bytes were consumed.
   */
  private followFilters(b: number, k: number): InputRefusal | undefined {
    switch (this.filterPart) {
      case FilterPart.PacketId:
        if (--this.partLeft === 0) this.filterPart = FilterPart.LengthHigh;
        return undefined;
      case FilterPart.LengthHigh:
        if (++this.filters > this.limits.maxTopicFiltersPerPacket) return 'too_many_filters';
        this.partLeft = b << 8;
        this.filterPart = FilterPart.LengthLow;
        return undefined;
      case FilterPart.LengthLow:
        this.partLeft |= b;
        this.filterPart = this.partLeft > 0 ? FilterPart.Topic : this.afterTopic();
        return undefined;
      case FilterPart.Topic:
        this.partLeft -= k;
        if (this.partLeft === 0) this.filterPart = this.afterTopic();
        return undefined;
      case FilterPart.Options:
        this.filterPart = FilterPart.LengthHigh;
        return undefined;
    }
  }

  private afterTopic(): FilterPart {
    return this.type === SUBSCRIBE ? FilterPart.Options : FilterPart.LengthHigh;
  }
}

/**
 * Puts a PacketScanner in front of a connection's stream: every chunk the transport pushes (TCP, TLS, or the
 * WebSocket stream's messages) is scanned before it enters the stream's buffer, whichever way the consumer reads.
 * On a refusal the chunk is dropped, the stream destroyed and `onRefused` called once.
 */
export function guardPackets(
  stream: Readable,
  limits: Readonly<PacketLimits>,
  accepted: () => boolean,
  onRefused: (reason: InputRefusal) => void,
): void {
  const scanner = new PacketScanner(limits, accepted);
  const push = stream.push;
  let refused = false;
  stream.push = function guardedPush(this: Readable, chunk: unknown, encoding?: BufferEncoding): boolean {
    if (refused) return false;
    if (chunk instanceof Uint8Array) {
      const reason = scanner.scan(chunk);
      if (reason) {
        refused = true;
        stream.destroy();
        onRefused(reason);
        return false;
      }
    }
    return push.call(this, chunk, encoding);
  };
}
