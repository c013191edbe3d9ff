// Keys a broker asked for but cannot have received (its claim's answer was lost): retired, so that none is ever used.
import type { UplinkProof } from './claims.js';
import { proofOpens } from './proof-of-use.js';
import type { KeyStore } from './store.js';

export interface AbandonRequest {
  deviceId: string;
  brokerId: string;
  /** Keys the broker named, each with the proof of use its claim carried (uplink keys). */
  keys: Array<{ keyId: string; proof?: UplinkProof }>;
  /** Every downlink key the broker claimed for this session (ended) is retired too. */
  downlinkSessionId?: string;
  /** The application an end-to-end entry names for (device, topic), or undefined (PolicyStore.endToEndApp). */
  endToEndApp?: (deviceId: string, topic: string) => string | undefined;
}

/**
 * Retires, in the caller's transaction, what the broker abandons; returns how many keys changed state. A key this
 * broker claimed is retired. A key still filled is retired unclaimed only when it is an uplink key of this device and
 * the proof opens under it: the device used it, and the claim that carried the same proof may still arrive (a
 * request delayed in the network), which then finds the key retired and delivers nothing. Without a valid proof a
 * filled key is left alone, so no broker can spend keys no device has used. Keys claimed by another broker, and
 * keys of other devices, are left alone. A key whose proof is on an end-to-end topic (docs/PROTOCOL.md §23) is
 * left alone too: no broker may claim such a key, so none may retire it either.
 */
export function abandonKeys(store: KeyStore, r: AbandonRequest, now: number): number {
  let n = 0;
  for (const { keyId, proof } of r.keys) {
    if (store.retireClaimed(r.deviceId, keyId, r.brokerId, now)) {
      n++;
      continue;
    }
    const k = store.keyById(keyId);
    if (!k || k.device_id !== r.deviceId || k.direction !== 'up' || k.state !== 'filled' || !k.wrapped || !proof)
      continue;
    if (r.endToEndApp?.(r.deviceId, proof.topic) !== undefined) continue;
    const key = store.unwrapKey(k.key_id, k.wrapped);
    let opens: boolean;
    try {
      opens = proofOpens(key, k.key_index, r.deviceId, proof);
    } finally {
      key.fill(0);
    }
    if (!opens) continue;
    if (store.retireUnclaimed(k.rowid, r.brokerId, null, now)) n++;
  }
  if (r.downlinkSessionId !== undefined)
    n += store.retireSessionDownlink(r.deviceId, r.brokerId, r.downlinkSessionId, now);
  if (n > 0)
    store.audit(r.brokerId, 'key.abandon', r.deviceId, {
      key_IDs: r.keys.slice(0, 64).map((k) => k.keyId),
      ...(r.downlinkSessionId === undefined ? {} : { session: r.downlinkSessionId }),
      retired: n,
    });
  return n;
}
