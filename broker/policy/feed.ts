// Follows the key service's policy table: fetched whole at start, then polled by version (the way the revocation
// feed is), so a change reaches every broker within one poll interval, without a restart.
import type { KmsClient } from '../../kms-api/client.js';
import { type CompiledPolicy, compilePolicy, EMPTY_POLICY } from './evaluate.js';

export interface PolicySource {
  /** The table in force; the hooks read it per message. */
  readonly current: CompiledPolicy;
}

export class PolicyFeed implements PolicySource {
  current: CompiledPolicy = EMPTY_POLICY;
  private timer: NodeJS.Timeout | undefined;
  private polling: Promise<void> | undefined;
  private readonly listeners: Array<(policy: CompiledPolicy) => void> = [];
  /** Whether the key service answered the last poll. */
  healthy = false;

  constructor(
    private readonly kms: Pick<KmsClient, 'policyFeed'>,
    private readonly pollMs = 1000,
  ) {}

  /**
   * Fetches the table; a broker that cannot learn its policy does not start (it would enforce less than the
   * administrator set). Later failures keep the last table and are retried at the next poll.
   */
  async start(): Promise<void> {
    await this.fetch();
    this.timer = setInterval(() => void this.poll(), this.pollMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Called with each new table once it is in force. */
  onChange(listener: (policy: CompiledPolicy) => void): void {
    this.listeners.push(listener);
  }

  /** One round of the feed; never throws. Exposed for tests. */
  poll(): Promise<void> {
    this.polling ??= this.fetch()
      .catch(() => void (this.healthy = false))
      .finally(() => (this.polling = undefined));
    return this.polling;
  }

  private async fetch(): Promise<void> {
    const feed = await this.kms.policyFeed(this.current.version);
    this.healthy = true;
    if (feed.entries === undefined || feed.version === this.current.version) return;
    this.current = compilePolicy(feed.version, feed.entries);
    for (const l of this.listeners) {
      try {
        l(this.current);
      } catch {
        // a listener's failure must not stop the feed
      }
    }
  }
}
