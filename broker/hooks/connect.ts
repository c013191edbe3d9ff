// The CONNECT hooks: preConnect notes what authenticate needs from the packet; authenticate checks the token, the
// client id and the principal, then opens a device's key session before CONNACK.
import { randomUUID } from 'node:crypto';
import type { AuthenticateError, Client, ConnectPacket } from 'aedes';
import { TokenError } from '../../protocol/index.js';
import { DeviceSessionKeys } from '../session-keys.js';
import type { Principal } from '../topic-policy.js';
import type { ClientState, PluginContext } from './context.js';

export function authError(returnCode: 2 | 3 | 4 | 5, message: string): AuthenticateError {
  const err = new Error(message) as AuthenticateError;
  err.returnCode = returnCode;
  return err;
}

export function preConnect(ctx: PluginContext, client: Client, packet: ConnectPacket): void {
  if (!packet.clientId && packet.clean === false) ctx.emptyIdPersistent.add(client);
}

export async function authenticate(
  ctx: PluginContext,
  client: Client,
  username: string | undefined,
  password: Buffer | undefined,
): Promise<void> {
  if (ctx.emptyIdPersistent.has(client))
    throw authError(2, 'identifier rejected: empty client id with clean session off [MQTT-3.1.3-8]');
  if (!username || !password) throw authError(4, 'bad user name or password: a token is required');
  let claims;
  try {
    claims = ctx.o.tokens.verify(password.toString('utf8'));
  } catch (err) {
    if (err instanceof TokenError) throw authError(4, `bad user name or password: ${err.code}`);
    throw err;
  }
  if (claims.sub !== username) throw authError(4, 'bad user name or password: the username is not the token subject');
  let principal: Principal;
  if (claims.role === 'device') {
    // Device id = username = client id, so topic permissions and the envelope AAD name one identity.
    if (client.id !== username)
      throw authError(5, 'not authorized: a device connects with client id = username = device id');
    principal = { role: 'device', id: claims.sub };
  } else if (claims.role === 'app') {
    principal = {
      role: 'app',
      id: claims.sub,
      publish: claims.acl?.publish ?? [],
      subscribe: claims.acl?.subscribe ?? [],
    };
  } else {
    throw authError(5, 'not authorized: broker tokens cannot connect as MQTT clients');
  }
  const state: ClientState = { principal, iat: claims.iat };
  if (principal.role === 'device') {
    const deviceId = principal.id;
    const keys = new DeviceSessionKeys(ctx.o.kms, deviceId, randomUUID(), ctx.rotation, (e) =>
      ctx.o.events?.session?.(deviceId, e),
    );
    try {
      // Aedes' authorizeForward is synchronous: the first downlink keys must be here before CONNACK.
      await keys.start();
    } catch (err) {
      await keys.close();
      throw authError(3, `server unavailable: ${(err as Error).message}`);
    }
    state.keys = keys;
  }
  ctx.states.set(client, state);
  ctx.o.events?.connected?.(principal);
}
