// Calls of the end-to-end key routes (docs/KMS-API.md "End-to-end topics") over a KmsClient holding an app token: an
// application claims a device's uplink key with the envelope as proof of use, and retires the keys it is done with.
import { decKeysBody, type KmsClient, type UplinkProof } from './client.js';
import type { KeyContainer, RetireRequest } from './etsi-schemas.js';

const path = (deviceId: string, action: 'dec_keys' | 'retire') =>
  `/api/v1/end-to-end/keys/${encodeURIComponent(deviceId)}/${action}`;

/** App token: ETSI GS QKD 014 dec_keys for `deviceId`'s key `keyId`, `proof` the envelope sealed under it. */
export function claimEndToEndKey(
  kms: KmsClient,
  deviceId: string,
  keyId: string,
  proof: UplinkProof,
): Promise<KeyContainer> {
  return kms.request('POST', path(deviceId, 'dec_keys'), decKeysBody([keyId], undefined, [proof]));
}

/** App token: the keys among `keyIds` this application claimed are retired; answers how many were. */
export function retireEndToEndKeys(kms: KmsClient, deviceId: string, keyIds: string[]): Promise<{ retired: number }> {
  const body: RetireRequest = { key_IDs: keyIds.map((key_ID) => ({ key_ID })) };
  return kms.request('POST', path(deviceId, 'retire'), body);
}
