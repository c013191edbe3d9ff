// Security-chip errors with stable codes; messages name the problem, never key material or the PIN.

export const CHIP_ERRORS = {
  CHIP_ERR_NOT_FOUND: 'no chip file at that path',
  CHIP_ERR_EXISTS: 'a chip file already exists at that path',
  CHIP_ERR_FOREIGN: 'not a QKey chip file, or a chip of another device',
  CHIP_ERR_CORRUPT: 'chip file is authentic but its content is not usable by this release',
  CHIP_ERR_FORMAT: 'chip file format is not supported by this release',
  CHIP_ERR_TAMPERED: 'chip file failed authentication: damaged or modified',
  CHIP_ERR_PIN: 'wrong PIN',
  CHIP_ERR_LOCKED: 'chip is locked after too many wrong PINs',
  CHIP_ERR_NO_SESSION: 'no session: call beginSession first',
  CHIP_ERR_POOL_EMPTY: 'no unused key left in the pool: re-fill the chip',
  CHIP_ERR_UNKNOWN_KEY: 'the envelope names a key this chip does not hold',
  CHIP_ERR_STALE_KEY: 'the envelope names a downlink key below one this chip already opened',
  CHIP_ERR_NO_LOGIN_KEY: 'the chip has no login key yet: fill it first',
  CHIP_ERR_FILL: 'fill batch conflicts with the keys in the chip',
  CHIP_ERR_BATCH: 'factory batch is malformed, for another chip, or fails authentication',
  CHIP_ERR_WILL: 'a will is sealed once per session, before its first message',
} as const;

export type ChipErrorCode = keyof typeof CHIP_ERRORS;

export class ChipError extends Error {
  readonly code: ChipErrorCode;
  constructor(code: ChipErrorCode, detail?: string) {
    super(detail ?? CHIP_ERRORS[code]);
    this.name = 'ChipError';
    this.code = code;
  }
}
