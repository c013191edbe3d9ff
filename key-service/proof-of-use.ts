// Proof of use (docs/KMS-API.md): an envelope that names a key's index and opens under it; pure, no I/O.
import { isProtocolError, MAX_PAYLOAD_LIMIT, openEnvelope, parseEnvelope } from '../protocol/index.js';
import type { UplinkProof } from './claims.js';

/**
 * True when the proof's envelope names key index `keyIndex` and opens under `key` for this device, topic and
 * direction; the opened plaintext is wiped. A malformed or forged envelope is false; anything else throws.
 */
export function proofOpens(key: Uint8Array, keyIndex: number, deviceId: string, proof: UplinkProof): boolean {
  try {
    const parsed = parseEnvelope(proof.envelope, { maxPayload: MAX_PAYLOAD_LIMIT });
    if (parsed.keyIndex !== keyIndex) return false;
    openEnvelope(parsed, { key, deviceId, topic: proof.topic, direction: proof.direction }).payload.fill(0);
    return true;
  } catch (err) {
    if (isProtocolError(err)) return false;
    throw err;
  }
}
