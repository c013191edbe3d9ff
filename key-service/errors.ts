// Key-service errors: one registry of stable codes with their HTTP status; docs/KMS-API.md lists them (tested).

export const KMS_ERRORS = {
  KMS_ERR_BAD_REQUEST: { status: 400, message: 'malformed request' },
  KMS_ERR_UNKNOWN_DEVICE: { status: 400, message: 'unknown device (SAE_ID)' },
  KMS_ERR_DEVICE_REVOKED: { status: 400, message: 'device has been revoked' },
  KMS_ERR_KEY_UNAVAILABLE: { status: 400, message: 'one or more keys cannot be delivered' },
  KMS_ERR_KEY_SIZE: { status: 400, message: 'unsupported key size (only 128 bits)' },
  KMS_ERR_TOO_MANY_KEYS: { status: 400, message: 'more keys requested than max_key_per_request' },
  KMS_ERR_EXTENSION: { status: 400, message: 'unsupported mandatory extension' },
  KMS_ERR_POLICY_INVALID: { status: 400, message: 'invalid policy entry' },
  KMS_ERR_UNAUTHORIZED: { status: 401, message: 'missing, invalid or insufficient credentials' },
  KMS_ERR_LOGIN_FAILED: { status: 401, message: 'login failed' },
  KMS_ERR_NOT_FOUND: { status: 404, message: 'no such resource' },
  KMS_ERR_CONFLICT: { status: 409, message: 'conflicts with existing state' },
  KMS_ERR_TOO_LARGE: { status: 413, message: 'request body too large' },
  KMS_ERR_RATE_LIMITED: { status: 429, message: 'too many requests or failed attempts; retry later' },
  KMS_ERR_INTERNAL: { status: 500, message: 'internal error' },
  KMS_ERR_POOL_EMPTY: { status: 503, message: 'no unused keys left in the pool' },
  KMS_ERR_UNAVAILABLE: { status: 503, message: 'key store temporarily unavailable' },
} as const;

export type KmsErrorCode = keyof typeof KMS_ERRORS;

/** An error with a stable code; `details` follow ETSI GS QKD 014's error body (an array of objects). */
export class KmsError extends Error {
  readonly code: KmsErrorCode;
  readonly status: number;
  readonly details: Array<Record<string, unknown>>;
  readonly retryAfterSeconds: number | undefined;

  constructor(
    code: KmsErrorCode,
    detail?: string,
    options: { details?: Array<Record<string, unknown>>; retryAfterSeconds?: number } = {},
  ) {
    super(detail ? `${KMS_ERRORS[code].message}: ${detail}` : KMS_ERRORS[code].message);
    this.name = 'KmsError';
    this.code = code;
    this.status = KMS_ERRORS[code].status;
    this.details = options.details ?? [];
    this.retryAfterSeconds = options.retryAfterSeconds;
  }
}
