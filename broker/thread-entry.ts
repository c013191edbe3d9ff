// The broker thread started by thread.ts: runs startBroker(), reports its URLs, and closes it when told to.
import { parentPort, resourceLimits, workerData } from 'node:worker_threads';
import type { BrokerConfig } from './config.js';
import { type RunningBroker, startBroker } from './server.js';

export type ThreadMessage =
  { type: 'listening'; urls: RunningBroker['urls']; semiSpaceMiB: number } | { type: 'closed' };

const port = parentPort!;
const broker = await startBroker((workerData as { config: BrokerConfig }).config);
// As this thread's isolate was really given it (a young generation is three semi-spaces).
const semiSpaceMiB = Math.round((resourceLimits.maxYoungGenerationSizeMb ?? 0) / 3);
port.postMessage({ type: 'listening', urls: broker.urls, semiSpaceMiB } satisfies ThreadMessage);
port.once('message', () => {
  void broker.close().then(() => port.postMessage({ type: 'closed' } satisfies ThreadMessage));
});
