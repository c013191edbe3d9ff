// End-to-end topics (docs/PROTOCOL.md §23), app group: an application claims a device's uplink key itself, as the
// other SAE of ETSI GS QKD 014 dec_keys, with the envelope as proof of use, and retires it when done.
import * as wire from '../../kms-api/etsi-schemas.js';
import type { RouteScope } from '../access.js';
import { appId } from '../callers.js';
import type { KmsContext } from '../context.js';
import { KmsError } from '../errors.js';
import { container, proofOf } from './etsi.js';

/** Where an application's end-to-end claims live: the ETSI 014 path shape, apart from the brokers' routes. */
export const END_TO_END_PREFIX = '/api/v1/end-to-end/keys/:SAE_ID';

/** App group. */
export function endToEndRoutes(app: RouteScope, ctx: KmsContext): void {
  app.post(
    `${END_TO_END_PREFIX}/dec_keys`,
    { schema: wire.decKeysPostRoute, bodyLimit: wire.DEC_KEYS_BODY_LIMIT },
    async (req) => {
      const ids = req.body.key_IDs.map((k) => k.key_ID);
      if (new Set(ids).size !== ids.length) throw new KmsError('KMS_ERR_BAD_REQUEST', 'duplicate key_ID');
      if (ids.length > ctx.config.maxKeysPerRequest)
        throw new KmsError('KMS_ERR_TOO_MANY_KEYS', `at most ${ctx.config.maxKeysPerRequest}`);
      const me = appId(req);
      const keys = await ctx.claims
        .submit({
          kind: 'dec',
          deviceId: req.params.SAE_ID,
          keyIds: ids,
          proofs: req.body.key_IDs.map((k) => proofOf(k.key_ID, k.key_ID_extension?.qkey_proof)),
          appId: me,
          sessionId: req.body.key_IDs_extension?.qkey_session_id ?? null,
        })
        .catch((err: unknown) => {
          if (err instanceof KmsError && err.code === 'KMS_ERR_KEY_UNAVAILABLE') {
            const refused = err.details.map((d) => ({ key_ID: d.key_ID, reason: d.reason }));
            req.log.warn({ device: req.params.SAE_ID, app: me, refused }, 'end-to-end claim refused');
          }
          throw err;
        });
      return container(keys);
    },
  );

  app.post(`${END_TO_END_PREFIX}/retire`, { schema: wire.retireRoute }, async (req) => {
    ctx.store.requireDevice(req.params.SAE_ID);
    const ids = req.body.key_IDs.map((k) => k.key_ID);
    return { retired: ctx.store.retireKeys(req.params.SAE_ID, ids, appId(req), 'app') };
  });
}
