// The shape of the identifiers in a CONNECT, before any credential is looked at: docs/PROTOCOL.md §14 and §16.
// Pure functions, no I/O.
import { deviceIdProblem } from '../protocol/index.js';

/**
 * The client-id rule: a device connects with its device id; an application with `<appId>/<anything>`. Device ids
 * never contain '/', so the two namespaces cannot overlap and no principal can name another's connection or
 * persistent session. An application that sends an empty client id (clean session) is given `<appId>/<uuid>`.
 */
export const APP_CLIENT_ID_SEPARATOR = '/';

/**
 * Why a non-empty client id can belong to no principal, or undefined when it can: it must be an id (§14) or
 * `<id>/<name>` with a non-empty name. The server may reject any client id it does not allow [MQTT-3.1.3-9].
 */
export function clientIdProblem(clientId: string): string | undefined {
  const slash = clientId.indexOf(APP_CLIENT_ID_SEPARATOR);
  if (slash < 0) return deviceIdProblem(clientId);
  if (slash === clientId.length - 1) return 'an application client id is <appId>/<name> with a non-empty name';
  const problem = deviceIdProblem(clientId.slice(0, slash));
  return problem && `the application id before '/': ${problem}`;
}

/**
 * Why a user name can name no principal, or undefined when it can: the user name is the device or application id
 * (§14). A missing user name is not this step's concern (no credentials: CONNACK 4).
 */
export function userNameProblem(username: string): string | undefined {
  return deviceIdProblem(username);
}
