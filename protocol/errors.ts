// Protocol error classes with stable codes; messages never carry key, nonce or plaintext bytes.

/** Every code the protocol layer can raise. Documented in docs/PROTOCOL.md §8 (a test checks that). */
export const PROTOCOL_ERROR_CODES = {
  PROTO_ERR_TRUNCATED: 'envelope is shorter than header plus tag plus one byte',
  PROTO_ERR_VERSION: 'unsupported envelope version',
  PROTO_ERR_SUITE: 'unknown or disallowed cipher suite',
  PROTO_ERR_TAG: 'authentication failed (wrong key, wrong context, or tampered envelope)',
  PROTO_ERR_REPLAY: 'sequence number already seen or older than the replay window',
  PROTO_ERR_TOO_LARGE: 'payload exceeds the configured maximum',
  PROTO_ERR_EMPTY: 'empty payloads are never sealed; pass them through unchanged',
  PROTO_ERR_ARGUMENT: 'invalid argument',
  PROTO_ERR_UNAVAILABLE: 'the requested crypto backend is not available in this runtime',
} as const;

export type ProtocolErrorCode = keyof typeof PROTOCOL_ERROR_CODES;

export class ProtocolError extends Error {
  readonly code: ProtocolErrorCode;
  constructor(code: ProtocolErrorCode, detail?: string) {
    super(detail ? `${PROTOCOL_ERROR_CODES[code]}: ${detail}` : PROTOCOL_ERROR_CODES[code]);
    this.name = 'ProtocolError';
    this.code = code;
  }
}

export class ArgumentError extends ProtocolError {
  constructor(detail: string) {
    super('PROTO_ERR_ARGUMENT', detail);
    this.name = 'ArgumentError';
  }
}

export function isProtocolError(err: unknown): err is ProtocolError {
  return err instanceof ProtocolError;
}
