// A device's stored queue, read with its first downlink key in hand: a command queued after CONNECT looked (its key
// then claimed before CONNACK, connect.ts) but before Aedes read the queue is sealed, not dropped and cleared.
import { Readable } from 'node:stream';
import type { AedesPublishPacket, Client } from 'aedes';
import { KmsHttpError } from '../../kms-api/client.js';
import type { DeviceSessionKeys } from '../session-keys.js';
import type { PluginContext } from './context.js';
import { sealedFor } from './forward.js';

interface QueueStore {
  outgoingStream(client: Client): Readable;
}
const INTERCEPTED = Symbol('qkey.deviceQueueKey');

/**
 * Aedes sends a persistent session's stored queue through authorizeForward, which cannot wait for a key claim, and
 * clears what it refuses. CONNECT claims the first downlink key when it finds the queue non-empty, but a command can
 * be queued after that look and before Aedes reads the queue (a slow store, a busy broker): so the read itself waits
 * for the key before handing on the first message that will be sealed. An empty downlink pool lets it through (the
 * forward hook drops it as undeliverable, counted, as at CONNECT); any other failure fails the read, which ends the
 * connection with the queue intact for the next one.
 */
export function readDeviceQueuesWithKey(ctx: PluginContext, store: QueueStore & { [INTERCEPTED]?: true }): void {
  if (store[INTERCEPTED]) return;
  const read = store.outgoingStream.bind(store);
  store.outgoingStream = (client: Client) => {
    const state = ctx.states.get(client);
    const source = read(client);
    if (state?.principal.role !== 'device' || !state.keys) return source;
    const { principal, keys } = state;
    const gen = async function* () {
      try {
        for await (const item of source) {
          const packet = item as AedesPublishPacket;
          if ((packet.cmd ?? 'publish') === 'publish' && sealedFor(ctx, principal, packet)) await keyFor(keys);
          yield item;
        }
      } finally {
        source.destroy();
      }
    };
    return Readable.from(gen(), { objectMode: true, highWaterMark: 1 });
  };
  store[INTERCEPTED] = true;
}

async function keyFor(keys: DeviceSessionKeys): Promise<void> {
  try {
    await keys.prepareDownlink(); // at once when the session holds one
  } catch (err) {
    if (err instanceof KmsHttpError && err.code === 'KMS_ERR_POOL_EMPTY') return;
    throw err;
  }
}
