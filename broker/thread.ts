// Runs the broker on a worker thread whose young generation is sized for it (V8's semi-space), for `qkey broker`.
import { Worker } from 'node:worker_threads';
import type { BrokerConfig } from './config.js';
import type { RunningBroker } from './server.js';
import type { ThreadMessage } from './thread-entry.js';

export interface BrokerThread {
  urls: RunningBroker['urls'];
  /** The semi-space V8 gave the broker thread, in MiB. */
  semiSpaceMiB: number;
  /** Resolves when the broker thread stops for any reason; rejects if it failed. */
  readonly exited: Promise<void>;
  close(): Promise<void>;
}

/**
 * A broker with thousands of connections keeps per-connection objects (a parser's next packet, read buffers)
 * for about a second each. V8's default 16 MiB semi-space is scavenged several times a second at 10,000
 * messages a second, so those objects are promoted, the old generation grows by megabytes a second, and every
 * mark-compact stalls deliveries for hundreds of milliseconds (bench/scale: latency p99 in seconds). Node can
 * only set the semi-space before an isolate starts: on the command line, or for a worker through its resource
 * limits, which is what this does (maxYoungGenerationSizeMb is three semi-spaces). An explicit
 * --max-semi-space-size on the command line still wins.
 */
export function startBrokerThread(config: Readonly<BrokerConfig>): Promise<BrokerThread> {
  const worker = new Worker(new URL('./thread-entry.js', import.meta.url), {
    workerData: { config },
    resourceLimits: { maxYoungGenerationSizeMb: 3 * config.semiSpaceMiB },
  });
  let onClosed: () => void = () => undefined;
  const exited = new Promise<void>((resolve, reject) => {
    worker.once('error', reject);
    worker.once('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`broker thread exited with code ${code}`)),
    );
  });
  return new Promise((resolve, reject) => {
    exited.catch(reject);
    worker.on('message', (m: ThreadMessage) => {
      if (m.type === 'listening') {
        resolve({
          urls: m.urls,
          semiSpaceMiB: m.semiSpaceMiB,
          exited,
          close: async () => {
            const closed = new Promise<void>((r) => (onClosed = r));
            worker.postMessage('close');
            await Promise.race([closed, exited]);
            await worker.terminate();
          },
        });
      } else if (m.type === 'closed') onClosed();
    });
  });
}
