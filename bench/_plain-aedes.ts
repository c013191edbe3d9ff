// Aedes without QKey, for bench/scale's baseline: the QKey broker's transport settings (bounded emitter,
// concurrency, write coalescing), no authentication, no envelopes. `node dist/bench/_plain-aedes.js` prints
// "listening: mqtt mqtt://127.0.0.1:<port>" and runs until SIGTERM. Stock Aedes is not the baseline here: its
// emitter overflows the stack under this load (mcollina/mqemitter#204; see broker/mq-emitter.ts).
import { createServer } from 'node:net';
import { Aedes } from 'aedes';
import { BROKER_DEFAULTS } from '../broker/config.js';
import { createBoundedEmitter } from '../broker/mq-emitter.js';
import { coalesceWrites } from '../broker/write-coalescing.js';

const { concurrency } = BROKER_DEFAULTS;
const aedes = await Aedes.createBroker({ concurrency, mq: createBoundedEmitter({ concurrency }) });
const server = createServer((socket) => {
  coalesceWrites(socket);
  aedes.handle(socket);
});
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as { port: number };
  console.log(`listening: mqtt mqtt://127.0.0.1:${port}`);
});
process.once('SIGTERM', () => {
  server.close();
  aedes.close(() => process.exit(0));
});
