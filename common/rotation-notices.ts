// An application client's answer to the broker's rotation notices (docs/PROTOCOL.md §22.6), shared by the Node and
// browser session clients: a notice for the current generation starts a handshake; a failed one is retried.
import { parseRotationNotice } from '../protocol/rotation-notice.js';

export interface RotatingSession {
  /**
   * The newest generation the client has announced, including one whose announcement is still unacknowledged: the
   * broker seals under a generation as soon as it installs it, so its notice can come before the PUBACK does.
   */
  current(): number;
  /** The connection is up and not closing: a handshake can be announced on it. */
  alive(): boolean;
  rotate(): Promise<void>;
  /** Counts a handshake that failed (it is retried). */
  failed(err: unknown): void;
}

/** Longest wait between attempts of a handshake the broker asked for. */
const MAX_RETRY_MS = 30_000;

/**
 * Returns the handler for payloads on the session topic. A notice naming another generation (an earlier one, after
 * the client rotated on its own) or anything that is not a notice is ignored; one for the generation being announced
 * rotates again once that announcement is done. A failed handshake is retried after
 * 1 s, doubling to 30 s, while the connection lasts and the generation has not moved on: until then the broker
 * holds the deliveries that need the new key (§22.8), so retrying is what keeps them coming.
 */
export function followRotationNotices(session: RotatingSession): (payload: Uint8Array) => void {
  // Until the client has announced a generation above `index`: a rotate() that joins a handshake already under way
  // for `index` itself leaves `index` current, and goes round once more (twice at most: a rotate that moves nothing
  // on must not loop).
  const attempt = (index: number, failures: number, rounds: number): void => {
    if (index !== session.current() || !session.alive() || rounds >= 2) return;
    session.rotate().then(
      () => attempt(index, 0, rounds + 1),
      (err: unknown) => {
        session.failed(err);
        const retry = setTimeout(
          () => attempt(index, failures + 1, rounds),
          Math.min(MAX_RETRY_MS, 1000 * 2 ** failures),
        );
        // In Node, a pending retry does not keep a process alive whose connection is gone (browsers have no unref).
        (retry as { unref?: () => void }).unref?.();
      },
    );
  };
  return (payload) => {
    const index = parseRotationNotice(payload);
    if (index !== undefined) attempt(index, 0, 0);
  };
}
