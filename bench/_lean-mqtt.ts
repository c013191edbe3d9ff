// A minimal MQTT 3.1.1 client for load generation: one socket, mqtt-packet for the wire format, nothing else.
// bench/scale drives 10,000 of these from one process; mqtt.js clients cost the load generator more CPU per
// message than the broker under test, so the generator, not the broker, would set the measured rate.
import { connect as netConnect, type Socket } from 'node:net';
import { generate, parser, type Packet } from 'mqtt-packet';
import { coalesceWrites } from '../broker/write-coalescing.js';

export interface LeanConnectOptions {
  clientId: string;
  username?: string;
  password?: string;
  /** Seconds; the broker closes the connection after 1.5x this without traffic. */
  keepalive?: number;
  timeoutMs?: number;
}

export class LeanMqttClient {
  private subscribed: (() => void) | undefined;
  private nextId = 1;
  private closed = false;
  onMessage: ((topic: string, payload: Buffer) => void) | undefined;

  private constructor(private readonly socket: Socket) {
    // Writes made in one event-loop turn leave in one system call (a consumer acknowledging thousands per second).
    coalesceWrites(socket);
  }

  static connect(url: string, o: LeanConnectOptions): Promise<LeanMqttClient> {
    const { hostname, port } = new URL(url);
    const socket = netConnect({ host: hostname, port: Number(port || 1883), noDelay: true });
    const client = new LeanMqttClient(socket);
    const wire = parser();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => fail(new Error('CONNACK timeout')), o.timeoutMs ?? 30_000);
      const fail = (err: Error) => {
        clearTimeout(timer);
        socket.destroy();
        reject(err);
      };
      wire.on('packet', (packet: Packet) => {
        if (packet.cmd === 'connack') {
          clearTimeout(timer);
          if (packet.returnCode === 0) resolve(client);
          else fail(new Error(`CONNACK return code ${packet.returnCode}`));
        } else client.handle(packet);
      });
      wire.on('error', (err: Error) => socket.destroy(err));
      socket.on('data', (chunk: Buffer) => wire.parse(chunk));
      socket.once('error', fail);
      socket.on('close', () => (client.closed = true));
      socket.once('connect', () => {
        socket.write(
          generate({
            cmd: 'connect',
            protocolId: 'MQTT',
            protocolVersion: 4,
            clean: true,
            clientId: o.clientId,
            keepalive: o.keepalive ?? 300,
            ...(o.username === undefined ? {} : { username: o.username }),
            ...(o.password === undefined ? {} : { password: Buffer.from(o.password) }),
          }),
        );
      });
    });
  }

  /** QoS 1 publish (the broker's PUBACK is not tracked: delivery is counted where the messages arrive). */
  publish(topic: string, payload: Buffer): void {
    const messageId = this.nextId;
    this.nextId = (this.nextId % 0xffff) + 1;
    this.socket.write(generate({ cmd: 'publish', topic, payload, qos: 1, dup: false, retain: false, messageId }));
  }

  /** Resolves on SUBACK (one subscription at a time). */
  subscribe(topic: string, qos: 0 | 1): Promise<void> {
    return new Promise((resolve) => {
      this.subscribed = resolve;
      this.socket.write(generate({ cmd: 'subscribe', messageId: 0xffff, subscriptions: [{ topic, qos }] }));
    });
  }

  end(): void {
    if (this.closed) return;
    this.socket.end(generate({ cmd: 'disconnect' }));
  }

  private handle(packet: Packet): void {
    if (packet.cmd === 'suback') {
      this.subscribed?.();
    } else if (packet.cmd === 'publish') {
      if (packet.qos === 1) this.socket.write(generate({ cmd: 'puback', messageId: packet.messageId! }));
      this.onMessage?.(packet.topic, packet.payload as Buffer);
    }
  }
}
