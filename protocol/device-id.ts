// The one id rule for devices (and applications and brokers): docs/PROTOCOL.md §14. Pure; no I/O.
import { ArgumentError } from './errors.js';

/** Longest id, in characters; the rule admits ASCII only, so also in bytes. */
export const DEVICE_ID_MAX_LENGTH = 128;

/**
 * docs/PROTOCOL.md §14: 1 to 128 characters from `A-Z a-z 0-9 . _ : -`, the first a letter or a digit. No '/',
 * '+' or '#', so an id is one MQTT topic level and never a wildcard [MQTT-4.7.1], and an application's client id
 * `<appId>/<name>` can never equal a device id; no '$', so a topic built from an id is never a `$`-topic
 * [MQTT-4.7.2]; ASCII only, so its UTF-8 bytes are its characters and it compares equal byte for byte everywhere.
 * The key service validates its JSON with this pattern (kms-api/common-schemas.ts).
 */
export const DEVICE_ID_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$';

const DEVICE_ID_RE = new RegExp(DEVICE_ID_PATTERN);
const FIRST = /^[A-Za-z0-9]$/;
const REST = /^[A-Za-z0-9._:-]$/;

/** Whether `id` is a valid device id (the same rule holds for application and broker ids). */
export function isValidDeviceId(id: unknown): id is string {
  return typeof id === 'string' && DEVICE_ID_RE.test(id);
}

/** Why `id` is not a valid id, in words; undefined when it is valid. */
export function deviceIdProblem(id: unknown): string | undefined {
  if (typeof id !== 'string') return 'it is not a string';
  if (id.length === 0) return 'it is empty';
  if (id.length > DEVICE_ID_MAX_LENGTH) return `it has ${id.length} characters, more than ${DEVICE_ID_MAX_LENGTH}`;
  if (!FIRST.test(id[0]!)) return 'it must start with a letter or a digit';
  for (let i = 1; i < id.length; i++) {
    if (!REST.test(id[i]!)) {
      const code = id.codePointAt(i)!;
      return `character ${i + 1} (U+${code.toString(16).toUpperCase().padStart(4, '0')}) is not one of A-Z a-z 0-9 . _ : -`;
    }
  }
  return undefined;
}

/**
 * Returns `id` if it is a valid id; throws ArgumentError (PROTO_ERR_ARGUMENT) saying why not. `what` names the id
 * in the message ("device id", "application id"). The message quotes at most 40 characters of the id.
 */
export function assertDeviceId(id: unknown, what = 'device id'): string {
  const problem = deviceIdProblem(id);
  if (problem === undefined) return id as string;
  const shown = typeof id === 'string' ? JSON.stringify(id.length > 40 ? `${id.slice(0, 40)}...` : id) : typeof id;
  throw new ArgumentError(
    `${what} ${shown} is not valid: ${problem} (1 to ${DEVICE_ID_MAX_LENGTH} of A-Z a-z 0-9 . _ : -, starting with a letter or digit; docs/PROTOCOL.md §14)`,
  );
}
