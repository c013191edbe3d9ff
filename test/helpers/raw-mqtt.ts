// A raw MQTT connection for hostile-client tests: writes any bytes or mqtt-packet packets, parses what the broker
// answers, and tells when the broker closed the socket.
import { connect, type Socket } from 'node:net';
import mqttPacket, { type Packet } from 'mqtt-packet';

export class RawMqtt {
  readonly received: Packet[] = [];
  readonly closed: Promise<void>;
  private waiters: Array<() => void> = [];

  private constructor(readonly socket: Socket) {
    const parser = mqttPacket.parser();
    parser.on('packet', (p: Packet) => {
      this.received.push(p);
      for (const w of this.waiters.splice(0)) w();
    });
    socket.on('data', (d: Buffer) => parser.parse(d));
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
  }

  static async open(url: string): Promise<RawMqtt> {
    const { hostname, port } = new URL(url);
    const socket = connect(Number(port), hostname);
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    return new RawMqtt(socket);
  }

  /** Opens a connection and sends CONNECT; resolves with the CONNACK return code. */
  static async connect(
    url: string,
    connect: { clientId: string; username?: string; password?: string; clean?: boolean; keepalive?: number } & {
      will?: { topic: string; payload: Buffer; qos?: 0 | 1 | 2; retain?: boolean };
    },
  ): Promise<{ raw: RawMqtt; returnCode: number }> {
    const raw = await RawMqtt.open(url);
    raw.send({
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: 4,
      clean: connect.clean ?? true,
      keepalive: connect.keepalive ?? 30,
      clientId: connect.clientId,
      ...(connect.username !== undefined && { username: connect.username }),
      ...(connect.password !== undefined && { password: Buffer.from(connect.password) }),
      ...(connect.will && {
        will: { qos: 0, retain: false, ...connect.will },
      }),
    } as Packet);
    const connack = await raw.next('connack');
    return { raw, returnCode: (connack as { returnCode: number }).returnCode };
  }

  send(packet: Packet): void {
    this.socket.write(mqttPacket.generate(packet));
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** The next packet of kind `cmd` (one already received counts), or rejects if the socket closes first. */
  async next(cmd: Packet['cmd'], ms = 10_000): Promise<Packet> {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = this.received.findIndex((p) => p.cmd === cmd);
      if (i >= 0) return this.received.splice(i, 1)[0]!;
      if (this.socket.destroyed || Date.now() > deadline) throw new Error(`no ${cmd} (socket closed or timed out)`);
      await Promise.race([
        new Promise<void>((r) => this.waiters.push(r)),
        this.closed,
        new Promise((r) => setTimeout(r, 100)),
      ]);
    }
  }

  /** Resolves when the broker closes the connection; rejects after `ms`. */
  async closedWithin(ms = 10_000): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.closed,
      new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`still open after ${ms} ms`)), ms))),
    ]).finally(() => clearTimeout(timer));
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Ends the TCP connection with a reset (RST), not a FIN. */
  reset(): void {
    this.socket.resetAndDestroy();
  }
}

/** A fixed header written by hand: `first` byte, then the body's length as MQTT's Remaining Length [MQTT-2.2.3]. */
export function fixedHeader(first: number, bodyLength: number): Buffer {
  const length: number[] = [];
  for (let n = bodyLength; ;) {
    const byte = n % 128;
    n = Math.floor(n / 128);
    length.push(n > 0 ? byte | 0x80 : byte);
    if (n === 0) break;
  }
  return Buffer.from([first, ...length]);
}
