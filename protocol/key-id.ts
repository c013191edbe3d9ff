// Maps a device's compact key index (as carried in the envelope) to the ETSI GS QKD 014 key_ID, a UUID.
import { aint, utf8Bytes } from './_bytes.js';
import { type CryptoBackend, getBackend } from './backend.js';
import { MAX_KEY_INDEX } from './envelope.js';
import { ArgumentError } from './errors.js';

const DOMAIN = utf8Bytes('qkey-mqtt/key-id/v1');

/**
 * key_ID = the first 16 bytes of SM3("qkey-mqtt/key-id/v1" | len(deviceId) (2, BE) | deviceId | keyIndex (4, BE)),
 * formatted as an RFC 9562 version-8 UUID (docs/PROTOCOL.md §7). Deterministic, so the chip, the filling machine,
 * the key service and the broker agree without a lookup table.
 */
export function keyIdFor(deviceId: string, keyIndex: number, backend: CryptoBackend = getBackend()): string {
  if (typeof deviceId !== 'string' || deviceId.length === 0) throw new ArgumentError('deviceId must be non-empty');
  aint(keyIndex, 'keyIndex', 0, MAX_KEY_INDEX);
  const device = utf8Bytes(deviceId);
  if (device.length > 0xffff) throw new ArgumentError('deviceId must be at most 65535 UTF-8 bytes');
  const input = new Uint8Array(DOMAIN.length + 2 + device.length + 4);
  const view = new DataView(input.buffer);
  input.set(DOMAIN, 0);
  view.setUint16(DOMAIN.length, device.length);
  input.set(device, DOMAIN.length + 2);
  view.setUint32(DOMAIN.length + 2 + device.length, keyIndex);
  const digest = backend.sm3(input).slice(0, 16);
  digest[6] = ((digest[6] as number) & 0x0f) | 0x80; // RFC 9562 §5.8: version 8
  digest[8] = ((digest[8] as number) & 0x3f) | 0x80; // RFC 9562 §4.1: variant 10
  const hex = Buffer.from(digest).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
