// The CONNECT hooks: preConnect notes what authenticate needs from the packet; authenticate runs the named steps
// below: identifiers' shape, credentials (token, or with mutual TLS its certificate), principal, client-id
// ownership, certificate identity, will, the device's key session (which claims nothing yet), then the state the
// other hooks use.
import { randomUUID } from 'node:crypto';
import type { AuthenticateError, Client, ConnectPacket, PublishPacket } from 'aedes';
import { KmsHttpError } from '../../kms-api/client.js';
import {
  chooseSuite,
  isProtocolError,
  parseEnvelope,
  type SuiteId,
  TokenError,
  type TokenClaims,
} from '../../protocol/index.js';
import { type CertificateIdentity, certificateMismatch } from '../client-certificate.js';
import { APP_CLIENT_ID_SEPARATOR, clientIdProblem, userNameProblem } from '../client-id.js';
import { DeviceSessionKeys } from '../session-keys.js';
import { UplinkKeyError } from '../uplink-keys.js';
import { downlinkOwner, mayPublish, type Principal } from '../topic-policy.js';
import type { ClientState, DeviceWill, PluginContext } from './context.js';
import { holdDeliveriesForKey } from './forward.js';
import { DEFAULT_APP_HOLD, holdForAppKey } from './app-hold.js';
import { endToEndOf } from './policy.js';
import { watchConnection } from './lifecycle.js';

export function authError(returnCode: 2 | 3 | 4 | 5, message: string): AuthenticateError {
  const err = new Error(message) as AuthenticateError;
  err.returnCode = returnCode;
  return err;
}

/** The connection closed while the broker was authenticating it: nothing to answer, nothing to keep. */
export class ClosedDuringAuthentication extends Error {
  constructor() {
    super('the connection closed during authentication');
    this.name = 'ClosedDuringAuthentication';
  }
}

export { APP_CLIENT_ID_SEPARATOR };

export function preConnect(ctx: PluginContext, client: Client, packet: ConnectPacket): void {
  if (!packet.clientId) {
    ctx.emptyId.add(client);
    if (packet.clean === false) ctx.emptyIdPersistent.add(client);
  }
}

export async function authenticate(
  ctx: PluginContext,
  client: Client,
  username: string | undefined,
  password: Buffer | undefined,
): Promise<void> {
  refuseEmptyPersistentId(ctx, client);
  refuseMalformedIdentifiers(ctx, client, username);
  const certificate = ctx.o.certificates?.of(client.conn);
  const claims = verifyCredentials(ctx, username, password, certificate);
  const principal = principalOf(claims);
  claimClientId(ctx, client, principal);
  matchCertificate(certificate, principal);
  const will = checkWill(ctx, client, principal);
  if (certificate && !password) await confirmDevice(ctx, principal.id);
  // §9: the session claims no key here; uplink keys at the first envelope naming them, downlink at the first command.
  const keys =
    principal.role === 'device' ? openKeySession(ctx, client, principal, downlinkSuiteOf(claims)) : undefined;
  const unpinWill = will && keys ? await claimWillKey(client, keys, will) : undefined;
  if (keys)
    await keyForQueuedCommands(client, keys).catch(async (err: unknown) => (unpinWill?.(), Promise.reject(err)));
  if (client.closed || client.conn.destroyed) {
    unpinWill?.();
    // Aedes drops a client that closed during authenticate without a word: retire what it claimed, keep nothing.
    await keys?.close();
    throw new ClosedDuringAuthentication();
  }
  const state: ClientState = {
    principal,
    iat: claims.iat,
    subscriptions: new Set(),
    source: ctx.sourceOf(client),
    ...(keys && { keys }),
    ...(will && { will }),
    ...(unpinWill && { unpinWill }),
  };
  ctx.states.set(client, state);
  // §22.6, §22.8: an application's deliveries that need a session key it does not hold yet wait for its
  // announcement. Gated here, before any SUBSCRIBE: Aedes binds a subscription to the delivery functions it finds.
  if (principal.role === 'app') holdForAppKey(ctx, client, state, ctx.o.appHold ?? DEFAULT_APP_HOLD);
  watchConnection(ctx, client);
  ctx.o.events?.connected?.(principal);
}

/** [MQTT-3.1.3-8] */
function refuseEmptyPersistentId(ctx: PluginContext, client: Client): void {
  if (ctx.emptyIdPersistent.has(client))
    throw authError(2, 'identifier rejected: empty client id with clean session off [MQTT-3.1.3-8]');
}

/**
 * docs/PROTOCOL.md §14: a client id or user name that no device or application can have is refused before any
 * credential is looked at (a missing user name is missing credentials: 4). The server may reject a client id it
 * does not allow [MQTT-3.1.3-9]; a device's user name is its client id, so the same code serves both.
 */
function refuseMalformedIdentifiers(ctx: PluginContext, client: Client, username: string | undefined): void {
  const problem =
    (ctx.emptyId.has(client) ? undefined : clientIdProblem(client.id)) ??
    (username === undefined ? undefined : userNameProblem(username));
  if (problem) throw authError(2, `identifier rejected: ${problem} [MQTT-3.1.3-9]`);
}

type Credentials = Pick<TokenClaims, 'sub' | 'role' | 'iat' | 'acl' | 'suites'>;

/** docs/PROTOCOL.md §20: downlink in a suite the device's chip declared at its fills (none declared: SM4-GCM). */
function downlinkSuiteOf(claims: Credentials): SuiteId {
  const suite = chooseSuite(claims.suites);
  if (suite === undefined)
    throw authError(5, 'not authorized: the device supports no envelope suite this broker can seal');
  return suite;
}

/** The token, or (mutual TLS, when the policy lets a certificate replace a device's token) the certificate alone. */
function verifyCredentials(
  ctx: PluginContext,
  username: string | undefined,
  password: Buffer | undefined,
  certificate: CertificateIdentity | undefined,
): Credentials {
  const certificateAlone = !password && certificate && ctx.o.certificates?.policy.tokenRequired === false;
  if (!username || (!password && !certificateAlone))
    throw authError(4, 'bad user name or password: a token is required');
  let claims: Credentials;
  if (certificateAlone) {
    // A device identified by its certificate alone (policy); revoked at the key service since it was issued: 5.
    if (ctx.o.tokens.isRevoked(username, certificate.notBefore)) throw authError(5, 'not authorized: revoked');
    claims = { sub: username, role: 'device', iat: certificate.notBefore };
  } else {
    try {
      claims = ctx.o.tokens.verify(password!.toString('utf8'));
    } catch (err) {
      if (err instanceof TokenError) throw authError(4, `bad user name or password: ${err.code}`);
      throw err;
    }
  }
  if (claims.sub !== username) throw authError(4, 'bad user name or password: the username is not the token subject');
  return claims;
}

/** With mutual TLS, the certificate must name this principal (its single subject CN). */
function matchCertificate(certificate: CertificateIdentity | undefined, principal: Principal): void {
  const mismatch = certificateMismatch(certificate, principal.id);
  if (mismatch) throw authError(5, `not authorized: ${mismatch}`);
}

function principalOf(claims: Credentials): Principal {
  if (claims.role === 'device') return { role: 'device', id: claims.sub };
  if (claims.role === 'app') {
    return { role: 'app', id: claims.sub, publish: claims.acl?.publish ?? [], subscribe: claims.acl?.subscribe ?? [] };
  }
  throw authError(5, 'not authorized: broker tokens cannot connect as MQTT clients');
}

/**
 * The client id must lie in the principal's own namespace (see APP_CLIENT_ID_SEPARATOR). CONNACK 5, not 2: the
 * identifier is well-formed MQTT and another principal may use it; these credentials are not authorized to.
 */
function claimClientId(ctx: PluginContext, client: Client, principal: Principal): void {
  if (principal.role === 'device') {
    // Device id = username = client id, so topic permissions and the envelope AAD name one identity.
    if (client.id !== principal.id)
      throw authError(5, 'not authorized: a device connects with client id = username = device id');
    return;
  }
  const prefix = `${principal.id}${APP_CLIENT_ID_SEPARATOR}`;
  if (ctx.emptyId.has(client)) {
    // [MQTT-3.1.3-6] the server assigns an id; Aedes' own choice would lie outside the application's namespace.
    (client as { id: string }).id = `${prefix}${randomUUID()}`;
    return;
  }
  if (!(client.id.length > prefix.length && client.id.startsWith(prefix)))
    throw authError(5, `not authorized: an application's client id is ${prefix}<name>`);
}

/**
 * A will is checked when it is given, not when it is due: its topic must be one the principal may publish to, and
 * its payload must fit. A device's will is an envelope (direction will, sequence number 0) whose header names this
 * connection's uplink key; the key is claimed only if the will has to be published.
 */
function checkWill(ctx: PluginContext, client: Client, principal: Principal): DeviceWill | undefined {
  const will = (client as unknown as { _will?: PublishPacket | null })._will;
  if (!will) return undefined;
  if (!mayPublish(principal, will.topic, ctx.topics)) throw authError(5, 'not authorized: will topic not permitted');
  const payload = will.payload as Buffer;
  if (principal.role === 'app') {
    if (payload.length > ctx.maxDownlinkPayload && downlinkOwner(ctx.topics, will.topic) !== undefined)
      throw authError(5, `not authorized: will payload exceeds ${ctx.maxDownlinkPayload} bytes`);
    return undefined;
  }
  if (payload.length === 0) return undefined; // passes unsealed, as any empty payload
  // docs/PROTOCOL.md §23.2: a will is sealed under the broker key, which must never carry an end-to-end topic.
  if (endToEndOf(ctx, will.topic)) throw authError(5, 'not authorized: a will cannot be on an end-to-end topic');
  try {
    const parsed = parseEnvelope(payload, ctx.parseOptions);
    if (parsed.seq !== 0) throw authError(5, 'not authorized: a device will is sealed with sequence number 0');
    return { parsed };
  } catch (err) {
    if (isProtocolError(err)) throw authError(5, `not authorized: will envelope refused (${err.code})`);
    throw err;
  }
}

/**
 * §9.5: a device's will is an encrypted message the connection carries, so its key is claimed now, with the will as
 * the proof of use, and held until the connection ends: the will can then be opened whenever it is due, even if the
 * key service is down or has revoked the device by then. A will whose key another session spent, that does not open,
 * or that was published already (a replayed CONNECT) is refused with 5; an unreachable key service gives 3.
 */
async function claimWillKey(client: Client, keys: DeviceSessionKeys, will: DeviceWill): Promise<() => void> {
  const packet = (client as unknown as { _will: PublishPacket })._will;
  const unpin = keys.pinUplinkKey(will.parsed.keyIndex);
  try {
    const held = await keys.uplinkKey(will.parsed.keyIndex, {
      envelope: packet.payload as Buffer,
      topic: packet.topic,
      direction: 'will',
    });
    if (held.willSpent)
      throw authError(5, 'not authorized: this will was published or discarded already (replayed CONNECT)');
    return unpin;
  } catch (err) {
    unpin();
    await keys.close();
    if (!(err instanceof UplinkKeyError)) throw err;
    if (err.reason === 'kms_unavailable') throw authError(3, `server unavailable: ${err.message}`);
    throw authError(5, `not authorized: will refused (${err.reason})`);
  }
}

function openKeySession(ctx: PluginContext, client: Client, principal: Principal, suite: SuiteId): DeviceSessionKeys {
  const keys = new DeviceSessionKeys(
    ctx.keys,
    ctx.uplinks,
    principal.id,
    randomUUID(),
    ctx.rotationFor(principal.id),
    (e) => ctx.o.events?.session?.(principal.id, e),
  );
  keys.downlinkSuite = suite;
  keys.downlinkBudget = ctx.downlinkBudget;
  holdDeliveriesForKey(ctx, client, principal, keys);
  return keys;
}

/**
 * §9.2: a persistent session that has commands queued gets its first downlink key before CONNACK, since Aedes sends
 * the queue right after CONNACK through authorizeForward, which cannot wait. If the key service cannot be reached
 * the CONNECT is refused with 3 (server unavailable) and the queue stays intact for the next attempt; an empty
 * downlink pool lets the device in, and the queued commands are dropped and counted as undeliverable.
 */
async function keyForQueuedCommands(client: Client, keys: DeviceSessionKeys): Promise<void> {
  if (client.clean || !(await hasQueued(client))) return;
  try {
    await keys.prepareDownlink();
  } catch (err) {
    if (err instanceof KmsHttpError && err.code === 'KMS_ERR_POOL_EMPTY') return;
    await keys.close();
    if (err instanceof KmsHttpError && err.code === 'KMS_ERR_DEVICE_REVOKED')
      throw authError(5, 'not authorized: revoked');
    throw authError(3, `server unavailable: ${(err as Error).message}`);
  }
}

/** Does the client's persistent session hold queued or in-flight outgoing messages? Reads at most one. */
async function hasQueued(client: Client): Promise<boolean> {
  const persistence = (client as unknown as { broker: { persistence: OutgoingStore } }).broker.persistence;
  const stream = persistence.outgoingStream(client);
  try {
    for await (const _ of stream) return true;
    return false;
  } finally {
    stream.destroy();
  }
}

interface OutgoingStore {
  outgoingStream(client: Client): import('node:stream').Readable;
}

/**
 * A certificate alone (no token) may name a device the key service does not know, or one it revoked since the
 * revocation feed was last polled: asked once here (a status read; no key is claimed). Not a server fault: 5.
 */
async function confirmDevice(ctx: PluginContext, deviceId: string): Promise<void> {
  try {
    await ctx.o.kms.status(deviceId);
  } catch (err) {
    if (err instanceof KmsHttpError && err.code === 'KMS_ERR_UNKNOWN_DEVICE')
      throw authError(5, 'not authorized: unknown device');
    if (err instanceof KmsHttpError && err.code === 'KMS_ERR_DEVICE_REVOKED')
      throw authError(5, 'not authorized: revoked');
    throw authError(3, `server unavailable: ${(err as Error).message}`);
  }
}
