// Device login proof: the MAC a security chip computes over a key-service challenge with its login key.
import { abytes, utf8Bytes } from './_bytes.js';
import { type CryptoBackend, getBackend } from './backend.js';
import { ArgumentError } from './errors.js';

export const LOGIN_CHALLENGE_LENGTH = 32;
export const LOGIN_KEY_LENGTH = 16;
const DOMAIN = utf8Bytes('qkey-mqtt/login/v1');

/**
 * docs/PROTOCOL.md §13: mac = HMAC-SM3(login_key, "qkey-mqtt/login/v1" || u16 len(deviceId) || deviceId || challenge).
 * Binding the device id stops a proof for one device being replayed for another that shares nothing else.
 */
export function loginProof(
  loginKey: Uint8Array,
  deviceId: string,
  challenge: Uint8Array,
  backend: CryptoBackend = getBackend(),
): Uint8Array {
  abytes(loginKey, 'login key', LOGIN_KEY_LENGTH);
  abytes(challenge, 'challenge', LOGIN_CHALLENGE_LENGTH);
  const device = utf8Bytes(deviceId);
  if (device.length === 0 || device.length > 0xffff) throw new ArgumentError('deviceId must be 1..65535 UTF-8 bytes');
  const input = new Uint8Array(DOMAIN.length + 2 + device.length + challenge.length);
  input.set(DOMAIN, 0);
  input[DOMAIN.length] = device.length >>> 8;
  input[DOMAIN.length + 1] = device.length & 0xff;
  input.set(device, DOMAIN.length + 2);
  input.set(challenge, DOMAIN.length + 2 + device.length);
  return backend.hmacSm3(loginKey, input);
}
