// Public API of the protocol package: the envelope, its suites, the replay window, key ids and SM4/SM3 primitives.
export { bytesToHex, equalBytes, hexToBytes } from './_bytes.js';
export {
  type BackendChoice,
  type BlockCipher,
  type CryptoBackend,
  getBackend,
  isNativeAvailable,
  nativeBackend,
  portableBackend,
  SM4_KEY_LENGTH,
} from './backend.js';
export {
  buildAad,
  buildNonce,
  DEFAULT_MAX_PAYLOAD,
  DIRECTION_CODES,
  type Direction,
  ENVELOPE_OVERHEAD,
  ENVELOPE_VERSION,
  type EnvelopeContext,
  type EnvelopeHeader,
  EnvelopeKey,
  encodeHeader,
  HEADER_LENGTH,
  isPassthroughPayload,
  MAX_KEY_INDEX,
  MAX_PAYLOAD_LIMIT,
  MAX_SEQ,
  type OpenParams,
  openEnvelope,
  type ParsedEnvelope,
  parseEnvelope,
  type SealParams,
  sealEnvelope,
} from './envelope.js';
export {
  ArgumentError,
  isProtocolError,
  PROTOCOL_ERROR_CODES,
  ProtocolError,
  type ProtocolErrorCode,
} from './errors.js';
export {
  assertDeviceId,
  DEVICE_ID_MAX_LENGTH,
  DEVICE_ID_PATTERN,
  deviceIdProblem,
  isValidDeviceId,
} from './device-id.js';
export { GcmKey } from './gcm.js';
export { type AddonStatus, sm4GcmAddonStatus } from './sm4-gcm-addon.js';
export { keyIdFor } from './key-id.js';
export { DEFAULT_REPLAY_WINDOW, ReplayWindow } from './replay-window.js';
export {
  chooseSuite,
  createSm4Gcm,
  parseSuite,
  SUITE_NAMES,
  type SuiteKey,
  SUITE_SM4_CTR_HMAC_SM3,
  SUITE_SM4_GCM,
  type SuiteId,
  TAG_LENGTH,
} from './suites.js';
export { LOGIN_CHALLENGE_LENGTH, LOGIN_KEY_LENGTH, loginProof } from './login.js';
export {
  type AppAcl,
  signToken,
  TOKEN_CLOCK_SKEW_SECONDS,
  TOKEN_ERROR_CODES,
  type TokenClaims,
  TokenError,
  type TokenErrorCode,
  type TokenRole,
  verifyToken,
} from './token.js';
export {
  APP_CHALLENGE_LENGTH,
  APP_SESSION_TOPIC,
  APP_SESSION_KEY_LENGTH,
  APP_SM2_PUBLIC_KEY_HEX_LENGTH,
  APP_SM2_SIGNATURE_LENGTH,
  APP_SM2_USER_ID,
  APP_WRAPPED_KEY_LENGTH,
  type ChallengeBinding,
  challengeMessage,
  isAppSm2PublicKey,
  signChallenge,
  unwrapSessionKey,
  verifyChallenge,
  wrapSessionKey,
} from './app-session.js';
export { parseRotationNotice, rotationNotice } from './rotation-notice.js';
