// The broker's reports of keys it no longer has or never got (retirements, abandoned claims), retried with backoff
// until the key service answers them, so that no key stays claimed by a broker that does not hold it.
import type { BulkAbandonItem } from '../kms-api/bulk-schemas.js';
import { KmsHttpError, KmsUnreachableError, type UplinkProof } from '../kms-api/client.js';
import type { KeyDelivery } from '../kms-api/coalescer.js';
import type { KeyContainer } from '../kms-api/etsi-schemas.js';

export interface KeyReportOptions {
  /** First retry after this long, doubling (with jitter) up to maxDelayMs. */
  firstDelayMs?: number;
  maxDelayMs?: number;
  /** Reports waiting for a retry at most; beyond, the oldest is dropped (its keys stay claimed, never delivered). */
  maxWaiting?: number;
  /** Bytes of reports (mostly the proofs of abandoned uplink claims) waiting at most; beyond, the oldest is dropped. */
  maxWaitingBytes?: number;
  onEvent?: (e: KeyReportEvent) => void;
}

export type KeyReportEvent =
  | { kind: 'claim-lost'; deviceId: string; error: string }
  | { kind: 'report-retry'; deviceId: string; attempt: number; error: string }
  | { kind: 'report-dropped'; deviceId: string; reason: 'full' | 'refused' | 'closed' };

/**
 * A claim whose answer was lost: the key service may have committed it (or may still: the request can be delayed in
 * the network), and the broker has no key bytes. True for a timeout or a connection closed after the whole request
 * was written, and for an internal error answered after the commit; false when the request never fully left, or
 * when the key service refused it (nothing was claimed).
 */
export function answerLost(err: unknown): boolean {
  if (err instanceof KmsUnreachableError) return err.maybeDelivered;
  return err instanceof KmsHttpError && err.status === 500;
}

/** A report worth sending again: the key service was not reached, or could not answer now. */
function retryable(err: unknown): boolean {
  return (
    err instanceof KmsUnreachableError || (err instanceof KmsHttpError && (err.status >= 500 || err.status === 429))
  );
}

interface Waiting {
  item: BulkAbandonItem;
  bytes: number;
  attempt: number;
  timer: NodeJS.Timeout | undefined;
}

/**
 * A KeyDelivery in front of the broker's coalescer: claims pass through; an uplink claim whose answer was lost is
 * reported abandoned (docs/KMS-API.md "Abandoned claims": the key is retired, or retired unclaimed with the claim's own proof
 * of use, so a late commit delivers nothing); a retirement or an abandon the key service did not answer is sent
 * again after 0.25 s, 0.5 s, ... up to 30 s, until it is answered or the broker closes. Each retire() or abandon()
 * settles after its first attempt, so session teardown never waits for an absent key service.
 */
export class KeyReports implements KeyDelivery {
  private readonly waiting = new Set<Waiting>();
  private waitingBytes = 0;
  private closed = false;
  private readonly firstDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly maxWaiting: number;
  private readonly maxWaitingBytes: number;

  constructor(
    private readonly kms: KeyDelivery,
    private readonly options: KeyReportOptions = {},
  ) {
    this.firstDelayMs = options.firstDelayMs ?? 250;
    this.maxDelayMs = options.maxDelayMs ?? 30_000;
    this.maxWaiting = options.maxWaiting ?? 100_000;
    this.maxWaitingBytes = options.maxWaitingBytes ?? 64 * 1024 * 1024;
  }

  /** Reports waiting for a retry. */
  get pending(): number {
    return this.waiting.size;
  }

  /** Passes through: an enc_keys claim names no key; DeviceSessionKeys abandons its session's at close instead. */
  encKeys(saeId: string, number: number, sessionId?: string): Promise<KeyContainer> {
    return this.kms.encKeys(saeId, number, sessionId);
  }

  async decKeys(
    saeId: string,
    keyIds: string[],
    sessionId?: string,
    proofs: ReadonlyArray<UplinkProof | undefined> = [],
  ): Promise<KeyContainer> {
    try {
      return await this.kms.decKeys(saeId, keyIds, sessionId, proofs);
    } catch (err) {
      if (answerLost(err)) {
        this.note(saeId, err);
        void this.abandon({
          SAE_ID: saeId,
          key_IDs: keyIds.map((key_ID, i) => {
            const proof = proofs[i];
            return proof ? { key_ID, qkey_proof: proofJson(proof) } : { key_ID };
          }),
        });
      }
      throw err;
    }
  }

  /** Retires the keys; if the key service does not answer, retried as an abandon naming them. */
  async retire(saeId: string, keyIds: string[]): Promise<{ retired: number }> {
    try {
      return await this.kms.retire(saeId, keyIds);
    } catch (err) {
      if (!retryable(err)) return { retired: 0 };
      this.wait({ SAE_ID: saeId, key_IDs: keyIds.map((key_ID) => ({ key_ID })) }, 1, err);
      return { retired: 0 };
    }
  }

  async abandon(item: BulkAbandonItem): Promise<{ retired: number }> {
    try {
      return await this.kms.abandon(item);
    } catch (err) {
      if (retryable(err)) this.wait(item, 1, err);
      else this.options.onEvent?.({ kind: 'report-dropped', deviceId: item.SAE_ID, reason: 'refused' });
      return { retired: 0 };
    }
  }

  /** Sends every waiting report once more and waits for the answers; nothing is retried after this. */
  async close(): Promise<void> {
    this.closed = true;
    const last = [...this.waiting];
    for (const w of last) this.unwait(w);
    await Promise.allSettled(
      last.map((w) =>
        this.kms.abandon(w.item).catch(() => {
          this.options.onEvent?.({ kind: 'report-dropped', deviceId: w.item.SAE_ID, reason: 'closed' });
        }),
      ),
    );
  }

  private note(deviceId: string, err: unknown): void {
    this.options.onEvent?.({ kind: 'claim-lost', deviceId, error: (err as Error).message });
  }

  private wait(item: BulkAbandonItem, attempt: number, err: unknown): void {
    if (this.closed) {
      this.options.onEvent?.({ kind: 'report-dropped', deviceId: item.SAE_ID, reason: 'closed' });
      return;
    }
    this.options.onEvent?.({ kind: 'report-retry', deviceId: item.SAE_ID, attempt, error: (err as Error).message });
    const w: Waiting = { item, bytes: JSON.stringify(item).length, attempt, timer: undefined };
    this.waiting.add(w);
    this.waitingBytes += w.bytes;
    while (this.waiting.size > this.maxWaiting || this.waitingBytes > this.maxWaitingBytes) {
      const oldest = this.waiting.values().next().value!;
      this.unwait(oldest);
      this.options.onEvent?.({ kind: 'report-dropped', deviceId: oldest.item.SAE_ID, reason: 'full' });
    }
    if (!this.waiting.has(w)) return;
    // Full jitter: reports that failed together (one lost bulk request) do not come back together.
    const ceiling = Math.min(this.maxDelayMs, this.firstDelayMs * 2 ** (attempt - 1));
    w.timer = setTimeout(() => this.retry(w), ceiling / 2 + Math.random() * (ceiling / 2)).unref();
  }

  private unwait(w: Waiting): void {
    clearTimeout(w.timer);
    if (this.waiting.delete(w)) this.waitingBytes -= w.bytes;
  }

  private retry(w: Waiting): void {
    this.unwait(w);
    this.kms.abandon(w.item).then(
      () => undefined,
      (err: unknown) => {
        if (retryable(err)) this.wait(w.item, w.attempt + 1, err);
        else this.options.onEvent?.({ kind: 'report-dropped', deviceId: w.item.SAE_ID, reason: 'refused' });
      },
    );
  }
}

/** A proof of use as the bulk routes carry it. */
function proofJson(proof: UplinkProof) {
  const e = proof.envelope;
  return {
    envelope: Buffer.from(e.buffer, e.byteOffset, e.byteLength).toString('base64'),
    topic: proof.topic,
    direction: proof.direction,
  };
}
