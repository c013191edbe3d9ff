// ETSI GS QKD 014 key delivery for brokers: status, enc_keys (downlink), dec_keys (uplink), plus a retire extension.
import type { FastifyRequest } from 'fastify';
import * as wire from '../../kms-api/etsi-schemas.js';
import type { RouteScope } from '../access.js';
import { brokerId } from '../callers.js';
import type { DeliveredKey, UplinkProof } from '../claims.js';
import type { KmsContext } from '../context.js';
import { KmsError } from '../errors.js';

const KEY_SIZE = 128;

/** ETSI 014 §6.3 key container; the delivered key bytes are wiped once encoded. */
export function container(keys: DeliveredKey[]) {
  const out = {
    keys: keys.map((k) => ({
      key_ID: k.key_ID,
      key: Buffer.from(k.key).toString('base64'),
      key_ID_extension: { qkey_key_index: k.key_index },
    })),
  };
  for (const k of keys) k.key.fill(0);
  return out;
}

/** A session id found in an extension object (open by ETSI 014's design) has the bounds the schemas give it. */
function boundedSession(value: string): string {
  if (value.length < wire.sessionIdSchema.minLength || value.length > wire.sessionIdSchema.maxLength)
    throw new KmsError('KMS_ERR_BAD_REQUEST', `${wire.SESSION_EXTENSION} must have 1 to 128 characters`);
  return value;
}

/** ETSI 014 §6.2: mandatory extensions this KME does not support make the request fail. */
function sessionFromExtensions(
  mandatory: Array<Record<string, unknown>> | undefined,
  optional: Array<Record<string, unknown>> | undefined,
): string | null {
  let session: string | null = null;
  for (const ext of mandatory ?? []) {
    for (const [name, value] of Object.entries(ext)) {
      if (name !== wire.SESSION_EXTENSION || typeof value !== 'string') {
        throw new KmsError('KMS_ERR_EXTENSION', undefined, {
          details: [{ extension_mandatory_unsupported: { [name]: value } }],
        });
      }
      session = boundedSession(value);
    }
  }
  for (const ext of optional ?? [])
    if (typeof ext[wire.SESSION_EXTENSION] === 'string')
      session ??= boundedSession(ext[wire.SESSION_EXTENSION] as string);
  return session;
}

/**
 * A proof of use as the claim needs it. The envelope must be canonical base64 (RFC 4648 §4: standard alphabet,
 * padded, no whitespace, zero pad bits), so that one envelope has exactly one spelling.
 */
export function proofOf(keyId: string, json: wire.UplinkProofJson | undefined): UplinkProof | undefined {
  if (!json) return undefined;
  const envelope = Buffer.from(json.envelope, 'base64');
  if (envelope.toString('base64') !== json.envelope)
    throw new KmsError(
      'KMS_ERR_BAD_REQUEST',
      `${wire.PROOF_EXTENSION}.envelope must be canonical padded base64 (RFC 4648 §4)`,
      { details: [{ key_ID: keyId, reason: 'proof_encoding' }] },
    );
  return { envelope, topic: json.topic, direction: json.direction };
}

/**
 * A claim refused for want of a valid proof of use is worth an operator's notice (a forged envelope relayed by a
 * broker, or a broker that sends no proofs): logged at warn with key ids and reasons only, never the envelope.
 */
function logProofRefusal(req: FastifyRequest, saeId: string, err: unknown): void {
  if (!(err instanceof KmsError) || err.code !== 'KMS_ERR_KEY_UNAVAILABLE') return;
  const refused = err.details.map((d) => ({ key_ID: d.key_ID, reason: d.reason }));
  if (refused.some((d) => d.reason === 'proof_required' || d.reason === 'proof_failed'))
    req.log.warn({ device: saeId, refused }, 'uplink claim refused: no valid proof of use');
}

/** Broker group. */
export function etsiRoutes(app: RouteScope, ctx: KmsContext): void {
  const prefix = '/api/v1/keys/:SAE_ID';

  app.get(`${prefix}/status`, { schema: wire.statusRoute }, async (req) => {
    const device = ctx.store.requireDevice(req.params.SAE_ID);
    // A revoked device has no keys to report, and a broker asking (a certificate-only CONNECT) must learn it now.
    if (device.state !== 'active') throw new KmsError('KMS_ERR_DEVICE_REVOKED');
    const pool = ctx.store.pool(device.device_id);
    return {
      source_KME_ID: ctx.config.kmeId,
      target_KME_ID: ctx.config.kmeId,
      master_SAE_ID: brokerId(req),
      slave_SAE_ID: device.device_id,
      key_size: KEY_SIZE,
      stored_key_count: pool.down,
      max_key_count: pool.down + pool.up,
      max_key_per_request: ctx.config.maxKeysPerRequest,
      max_key_size: KEY_SIZE,
      min_key_size: KEY_SIZE,
      max_SAE_ID_count: 0,
      status_extension: {
        qkey_uplink_available: pool.up,
        qkey_downlink_available: pool.down,
        qkey_low: pool.up < ctx.config.lowWater || pool.down < ctx.config.lowWater,
        qkey_next_uplink_key_index: ctx.store.nextUplinkIndex(device.device_id),
      },
    };
  });

  app.post(`${prefix}/enc_keys`, { schema: wire.encKeysPostRoute }, (req) =>
    encKeys(ctx, req, req.params.SAE_ID, req.body ?? {}),
  );
  app.get(`${prefix}/enc_keys`, { schema: wire.encKeysGetRoute }, (req) =>
    encKeys(ctx, req, req.params.SAE_ID, req.query),
  );

  app.post(`${prefix}/dec_keys`, { schema: wire.decKeysPostRoute, bodyLimit: wire.DEC_KEYS_BODY_LIMIT }, (req) =>
    decKeysPost(ctx, req, req.params.SAE_ID, req.body),
  );
  // A GET request has no way to carry a proof of use: it is refused as proof_required, like a POST without one.
  app.get(`${prefix}/dec_keys`, { schema: wire.decKeysGetRoute }, (req) =>
    decKeys(ctx, req, req.params.SAE_ID, [req.query.key_ID], null),
  );

  // Extension (not in ETSI 014): the broker reports keys it stopped using (session over or rotation).
  app.post(`${prefix}/retire`, { schema: wire.retireRoute }, async (req) => ({
    retired: retireKeys(
      ctx,
      req,
      req.params.SAE_ID,
      req.body.key_IDs.map((k) => k.key_ID),
    ),
  }));
}

/** ETSI 014 enc_keys for one device, claimed by the calling broker (also one item of a bulk claim). */
export async function encKeys(ctx: KmsContext, req: FastifyRequest, saeId: string, input: wire.EncKeysRequest) {
  const number = input.number ?? 1;
  if ((input.size ?? KEY_SIZE) !== KEY_SIZE)
    throw new KmsError('KMS_ERR_KEY_SIZE', undefined, { details: [{ size: input.size }] });
  if (number > ctx.config.maxKeysPerRequest)
    throw new KmsError('KMS_ERR_TOO_MANY_KEYS', `at most ${ctx.config.maxKeysPerRequest}`);
  if (input.additional_slave_SAE_IDs?.length)
    throw new KmsError('KMS_ERR_BAD_REQUEST', 'additional_slave_SAE_IDs is not supported (max_SAE_ID_count is 0)');
  const sessionId = sessionFromExtensions(input.extension_mandatory, input.extension_optional);
  const keys = await ctx.claims.submit({
    kind: 'enc',
    deviceId: saeId,
    count: number,
    brokerId: brokerId(req),
    sessionId,
  });
  return container(keys);
}

/** ETSI 014 dec_keys for one device, each key with its proof of use (also one item of a bulk claim). */
export async function decKeys(
  ctx: KmsContext,
  req: FastifyRequest,
  saeId: string,
  keyIds: string[],
  session: string | null,
  proofs: Array<UplinkProof | undefined> = [],
) {
  if (new Set(keyIds).size !== keyIds.length) throw new KmsError('KMS_ERR_BAD_REQUEST', 'duplicate key_ID');
  if (keyIds.length > ctx.config.maxKeysPerRequest)
    throw new KmsError('KMS_ERR_TOO_MANY_KEYS', `at most ${ctx.config.maxKeysPerRequest}`);
  const keys = await ctx.claims
    .submit({ kind: 'dec', deviceId: saeId, keyIds, proofs, brokerId: brokerId(req), sessionId: session })
    .catch((err: unknown) => {
      logProofRefusal(req, saeId, err);
      throw err;
    });
  return container(keys);
}

/** A POST dec_keys body's claim. */
export async function decKeysPost(ctx: KmsContext, req: FastifyRequest, saeId: string, body: wire.DecKeysRequest) {
  return decKeys(
    ctx,
    req,
    saeId,
    body.key_IDs.map((k) => k.key_ID),
    body.key_IDs_extension?.qkey_session_id ?? null,
    body.key_IDs.map((k) => proofOf(k.key_ID, k.key_ID_extension?.qkey_proof)),
  );
}

/** The retire extension for one device: marks the calling broker's claimed keys among `keyIds` retired. */
export function retireKeys(ctx: KmsContext, req: FastifyRequest, saeId: string, keyIds: string[]): number {
  ctx.store.requireDevice(saeId);
  return ctx.store.retireKeys(saeId, keyIds, brokerId(req));
}
