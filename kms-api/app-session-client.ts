// Calls of the application session routes (docs/KMS-API.md) over a KmsClient: the app's challenge and session key,
// the broker's claim of that key, and the administrator's pool fill. The wire types come from app-session-schemas.
import type {
  AppKeyContainerJson,
  AppKeyLevelsJson,
  SessionChallengeJson,
  SessionKeyJson,
} from './app-session-schemas.js';
import type { KmsClient } from './client.js';

/** App token: a challenge for a session with `brokerId`. */
export function appSessionChallenge(kms: KmsClient, brokerId: string): Promise<SessionChallengeJson> {
  return kms.request('POST', '/api/v1/apps/session/challenge', { broker_id: brokerId });
}

/** App token: the signed challenge for a session key under the app's SM2 key. */
export function appSessionKey(
  kms: KmsClient,
  brokerId: string,
  challenge: string,
  signature: string,
): Promise<SessionKeyJson> {
  return kms.request('POST', '/api/v1/apps/session', { broker_id: brokerId, challenge, signature });
}

/** Broker credential: the session key `keyId` issued to `appId` for this broker (ETSI GS QKD 014 dec_keys). */
export function claimAppKey(kms: KmsClient, appId: string, keyId: string): Promise<AppKeyContainerJson> {
  return kms.request('POST', `/api/v1/apps/${encodeURIComponent(appId)}/dec_keys`, { key_IDs: [{ key_ID: keyId }] });
}

/** Admin token: QRNG keys (base64, 16 bytes each) into the application key pool. */
export function fillAppKeys(
  kms: KmsClient,
  batchId: string,
  keys: string[],
): Promise<{ batch_id: string; count: number }> {
  return kms.request('POST', '/api/v1/admin/app-keys', { batch_id: batchId, keys });
}

/** Admin token: the application key pool's levels (`filled` is the unused keys). */
export function appKeyLevels(kms: KmsClient): Promise<AppKeyLevelsJson> {
  return kms.request('GET', '/api/v1/admin/app-keys');
}
