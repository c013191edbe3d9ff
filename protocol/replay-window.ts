// Sliding anti-replay window over sequence numbers (the bitmap scheme of RFC 4303 §3.4.3 / RFC 6479).
import { aint } from './_bytes.js';
import { ArgumentError, ProtocolError } from './errors.js';

export const DEFAULT_REPLAY_WINDOW = 128;
export const MAX_REPLAY_WINDOW = 4096;

/**
 * Tracks which sequence numbers of one key have been accepted. `check` runs before decryption and changes
 * nothing; `accept` runs only after the tag verified, so a forged envelope cannot move the window.
 */
export class ReplayWindow {
  readonly size: number;
  /** Highest accepted sequence number, -1 before the first. */
  private top = -1;
  /** Ring of `size` bits; bit (seq mod size) says whether seq was accepted, for seq in (top - size, top]. */
  private readonly bits: Uint32Array;

  constructor(size: number = DEFAULT_REPLAY_WINDOW) {
    aint(size, 'replay window size', 32, MAX_REPLAY_WINDOW);
    if (size % 32 !== 0) throw new ArgumentError('replay window size must be a multiple of 32');
    this.size = size;
    this.bits = new Uint32Array(size / 32);
  }

  get highest(): number {
    return this.top;
  }

  /** Throws PROTO_ERR_REPLAY if `seq` was already accepted or is too old to tell. */
  check(seq: number): void {
    if (seq > this.top) return;
    if (this.top - seq >= this.size) {
      throw new ProtocolError('PROTO_ERR_REPLAY', `sequence number ${seq} is older than the window`);
    }
    if (this.has(seq)) throw new ProtocolError('PROTO_ERR_REPLAY', `sequence number ${seq} already seen`);
  }

  /** Was `seq` accepted, and is it still inside the window? */
  seen(seq: number): boolean {
    return seq <= this.top && this.top - seq < this.size && this.has(seq);
  }

  /** Records `seq` as seen; call only after the envelope authenticated. */
  accept(seq: number): void {
    this.check(seq);
    if (seq > this.top) {
      const advance = seq - this.top;
      if (advance >= this.size) this.bits.fill(0);
      else for (let s = this.top + 1; s < seq; s++) this.clear(s);
      this.top = seq;
    }
    const pos = seq % this.size;
    this.bits[pos >>> 5]! |= 1 << (pos & 31);
  }

  /**
   * Un-accepts a sequence number still inside the window, so that it is accepted once more: for a receiver that
   * accepted a message and then failed to keep it (its store failed before anything was delivered), so that the
   * sender's resend is taken as the message it is. A number outside the window stays refused.
   */
  forget(seq: number): void {
    if (seq <= this.top && this.top - seq < this.size) this.clear(seq);
  }

  private has(seq: number): boolean {
    const pos = seq % this.size;
    return ((this.bits[pos >>> 5]! >>> (pos & 31)) & 1) === 1;
  }

  private clear(seq: number): void {
    const pos = seq % this.size;
    this.bits[pos >>> 5]! &= ~(1 << (pos & 31));
  }
}
