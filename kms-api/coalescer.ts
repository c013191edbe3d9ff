// Coalesces the key claims and retirements a broker makes in one event-loop turn, across its sessions, into bulk
// requests (docs/KMS-API.md "Bulk extension"); a lone request goes through its ETSI 014 route as before.
import type { BulkAbandonItem, BulkClaimItem, BulkItemError, BulkRetireItem } from './bulk-schemas.js';
import { BULK_BODY_LIMIT, MAX_BULK_ITEMS } from './bulk-schemas.js';
import { decKeysBody, encKeysBody, KmsHttpError, type KmsClient, type UplinkProof } from './client.js';
import type { KeyContainer } from './etsi-schemas.js';

/** What the broker's key holders ask of the key service: a KmsClient, or a KmsCoalescer in front of one. */
export interface KeyDelivery {
  encKeys(saeId: string, number: number, sessionId?: string): Promise<KeyContainer>;
  decKeys(
    saeId: string,
    keyIds: string[],
    sessionId?: string,
    proofs?: ReadonlyArray<UplinkProof | undefined>,
  ): Promise<KeyContainer>;
  retire(saeId: string, keyIds: string[]): Promise<{ retired: number }>;
  /** Keys asked for whose answer was lost (docs/KMS-API.md "Abandoned claims"). */
  abandon(item: BulkAbandonItem): Promise<{ retired: number }>;
}

/** One item's answer in a bulk response: its result, or its single route's error. */
type ItemAnswer<R> = { ok: R } | { error: BulkItemError };

interface Waiting<I, R> {
  item: I;
  /** The same request through its single route (KmsClient's own method). */
  one: () => Promise<R>;
  json: string;
  resolve(result: R): void;
  reject(err: unknown): void;
}

/** Room the bulk body's own text takes besides its items (`{"claims":[` ... `]}` and commas). */
const ENVELOPE_BYTES = 64;

/** One kind of request (claims or retirements): queued in a turn, sent as one bulk request at its end. */
class Lane<I, R> {
  private queue: Array<Waiting<I, R>> = [];
  private bytes = 0;
  private scheduled = false;
  private readonly inFlight = new Set<Promise<void>>();
  /** The key service answered 404 to the bulk route (one without the extension): items go one by one. */
  private bulkMissing = false;
  closed = false;

  constructor(
    private readonly maxItems: number,
    private readonly maxBytes: number,
    private readonly sendBulk: (json: string) => Promise<Array<ItemAnswer<R>>>,
    private readonly wrap: (items: string[]) => string,
  ) {}

  add(item: I, one: () => Promise<R>): Promise<R> {
    const json = JSON.stringify(item);
    // An item a bulk request cannot carry (a claim proved by a large envelope) goes through its own route.
    if (this.closed || this.bulkMissing || Buffer.byteLength(json) + ENVELOPE_BYTES > this.maxBytes) return one();
    return new Promise<R>((resolve, reject) => {
      const bytes = Buffer.byteLength(json) + 1;
      if (this.bytes + bytes + ENVELOPE_BYTES > this.maxBytes) this.flush();
      this.queue.push({ item, one, json, resolve, reject });
      this.bytes += bytes;
      if (this.queue.length >= this.maxItems) this.flush();
      else if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  /** Sends what is queued now. */
  flush(): void {
    this.scheduled = false;
    if (this.queue.length === 0) return;
    const batch = this.queue;
    this.queue = [];
    this.bytes = 0;
    const sent = this.send(batch).finally(() => this.inFlight.delete(sent));
    this.inFlight.add(sent);
  }

  /** Sends what is queued and waits until every request sent has been answered. */
  async drain(): Promise<void> {
    this.flush();
    while (this.inFlight.size > 0) await Promise.all(this.inFlight);
  }

  private async send(batch: Array<Waiting<I, R>>): Promise<void> {
    if (batch.length === 1 || this.bulkMissing) return this.each(batch);
    let answers: Array<ItemAnswer<R>>;
    try {
      answers = await this.sendBulk(this.wrap(batch.map((w) => w.json)));
    } catch (err) {
      if (err instanceof KmsHttpError && err.status === 404) {
        this.bulkMissing = true;
        return this.each(batch);
      }
      // The request as a whole failed (unreachable, refused credentials, overloaded): so did each item in it.
      for (const w of batch) w.reject(err);
      return;
    }
    batch.forEach((w, i) => {
      const a = answers[i];
      if (!a) w.reject(new KmsHttpError(502, 'KMS_BULK_SHORT', 'the bulk answer has fewer results than items'));
      else if ('error' in a) w.reject(new KmsHttpError(a.error.status, a.error.code, a.error.message, a.error.details));
      else w.resolve(a.ok);
    });
  }

  private async each(batch: Array<Waiting<I, R>>): Promise<void> {
    await Promise.all(batch.map((w) => w.one().then(w.resolve, w.reject)));
  }
}

export interface CoalescerOptions {
  /** Items per bulk request at most (default and upper bound MAX_BULK_ITEMS). */
  maxItems?: number;
  /** Body bytes per bulk request at most (default and upper bound BULK_BODY_LIMIT). */
  maxBytes?: number;
}

/**
 * The broker's key requests of one event-loop turn, across sessions, in one bulk claim request and one bulk retire
 * request; each answered on its own (one device's refusal is that device's alone), with the errors the single
 * routes give: KmsHttpError for a refusal, KmsUnreachableError (from the client) when the key service is not there.
 */
export class KmsCoalescer implements KeyDelivery {
  private readonly claims: Lane<BulkClaimItem, KeyContainer>;
  private readonly retirements: Lane<BulkRetireItem, { retired: number }>;
  private readonly abandons: Lane<BulkAbandonItem, { retired: number }>;

  constructor(
    readonly kms: KmsClient,
    options: CoalescerOptions = {},
  ) {
    const maxItems = Math.min(options.maxItems ?? MAX_BULK_ITEMS, MAX_BULK_ITEMS);
    const maxBytes = Math.min(options.maxBytes ?? BULK_BODY_LIMIT, BULK_BODY_LIMIT);
    this.claims = new Lane(
      maxItems,
      maxBytes,
      async (json) =>
        (
          await kms.requestJson<{ results: Array<{ keys?: KeyContainer['keys']; error?: BulkItemError }> }>(
            'POST',
            '/api/v1/bulk/claims',
            json,
          )
        ).results.map((r): ItemAnswer<KeyContainer> => (r.error ? { error: r.error } : { ok: { keys: r.keys ?? [] } })),
      (items) => `{"claims":[${items.join(',')}]}`,
    );
    this.retirements = new Lane(
      maxItems,
      maxBytes,
      async (json) =>
        (
          await kms.requestJson<{ results: Array<{ retired?: number; error?: BulkItemError }> }>(
            'POST',
            '/api/v1/bulk/retirements',
            json,
          )
        ).results.map((r): ItemAnswer<{ retired: number }> =>
          r.error ? { error: r.error } : { ok: { retired: r.retired ?? 0 } },
        ),
      (items) => `{"retirements":[${items.join(',')}]}`,
    );
    this.abandons = new Lane(
      maxItems,
      maxBytes,
      async (json) =>
        (
          await kms.requestJson<{ results: Array<{ retired?: number; error?: BulkItemError }> }>(
            'POST',
            '/api/v1/bulk/abandons',
            json,
          )
        ).results.map((r): ItemAnswer<{ retired: number }> =>
          r.error ? { error: r.error } : { ok: { retired: r.retired ?? 0 } },
        ),
      (items) => `{"abandons":[${items.join(',')}]}`,
    );
  }

  encKeys(saeId: string, number: number, sessionId?: string): Promise<KeyContainer> {
    return this.claims.add({ SAE_ID: saeId, enc_keys: encKeysBody(number, sessionId) }, () =>
      this.kms.encKeys(saeId, number, sessionId),
    );
  }

  decKeys(
    saeId: string,
    keyIds: string[],
    sessionId?: string,
    proofs: ReadonlyArray<UplinkProof | undefined> = [],
  ): Promise<KeyContainer> {
    return this.claims.add({ SAE_ID: saeId, dec_keys: decKeysBody(keyIds, sessionId, proofs) }, () =>
      this.kms.decKeys(saeId, keyIds, sessionId, proofs),
    );
  }

  retire(saeId: string, keyIds: string[]): Promise<{ retired: number }> {
    return this.retirements.add({ SAE_ID: saeId, key_IDs: keyIds.map((key_ID) => ({ key_ID })) }, () =>
      this.kms.retire(saeId, keyIds),
    );
  }

  abandon(item: BulkAbandonItem): Promise<{ retired: number }> {
    // There is no single route: alone, it is a bulk request of one.
    return this.abandons.add(item, () => this.kms.abandon(item));
  }

  /** Sends what is queued, waits for every answer; later requests go one by one through the single routes. */
  async close(): Promise<void> {
    this.claims.closed = this.retirements.closed = this.abandons.closed = true;
    await Promise.all([this.claims.drain(), this.retirements.drain(), this.abandons.drain()]);
  }
}
