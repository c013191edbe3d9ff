// The policy table's SQL: entries by id, the table's version (bumped by every change, in the same transaction as
// the change and its audit record), and the whole table for brokers.
import type Database from 'better-sqlite3';
import { type CompiledPolicy, compilePolicy, ruleFor } from '../broker/policy/evaluate.js';
import { policyProblem } from '../kms-api/policy-check.js';
import { MAX_POLICY_ENTRIES, type PolicyBodyJson, type PolicyEntryJson } from '../kms-api/policy-schemas.js';
import type { Db } from './db.js';
import { KmsError } from './errors.js';

interface PolicyRow {
  policy_id: string;
  role: 'device' | 'app';
  principal: string | null;
  filter: string;
  rule: string;
  version: number;
  updated_at: number;
}

type Rule = Omit<PolicyBodyJson, 'role' | 'principal' | 'filter'>;

type Audit = (actor: string, action: string, deviceId: string | null, detail?: Record<string, unknown>) => void;

function entryOf(row: PolicyRow): PolicyEntryJson {
  return {
    policy_id: row.policy_id,
    role: row.role,
    ...(row.principal !== null ? { principal: row.principal } : {}),
    filter: row.filter,
    ...(JSON.parse(row.rule) as Rule),
    version: row.version,
    updated_at: row.updated_at,
  };
}

/** The rule's fields in one fixed order, so that an unchanged entry stores the same text. */
function ruleOf(body: PolicyBodyJson): Rule {
  const r = body.rotation;
  return {
    encryption: body.encryption,
    ...(body.app !== undefined ? { app: body.app } : {}),
    ...(body.suites ? { suites: [...body.suites].sort((a, b) => a - b) } : {}),
    ...(r
      ? {
          rotation: {
            ...(r.messages !== undefined ? { messages: r.messages } : {}),
            ...(r.bytes !== undefined ? { bytes: r.bytes } : {}),
            ...(r.seconds !== undefined ? { seconds: r.seconds } : {}),
          },
        }
      : {}),
    ...(body.max_payload !== undefined ? { max_payload: body.max_payload } : {}),
    ...(body.max_qos !== undefined ? { max_qos: body.max_qos } : {}),
    ...(body.retain !== undefined ? { retain: body.retain } : {}),
  };
}

export class PolicyStore {
  private readonly s: Record<string, Database.Statement>;
  /** The table compiled for lookups, as brokers compile it (one precedence rule, broker/policy/evaluate.ts). */
  private compiled: CompiledPolicy | undefined;

  constructor(
    private readonly db: Db,
    private readonly audit: Audit,
    private readonly maxEntries = MAX_POLICY_ENTRIES,
  ) {
    const p = (sql: string) => db.prepare(sql);
    this.s = {
      version: p(`SELECT CAST(value AS INTEGER) AS v FROM meta WHERE name = 'policy_version'`),
      bump: p(`UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE name = 'policy_version'`),
      get: p(`SELECT * FROM policies WHERE policy_id = ?`),
      all: p(`SELECT * FROM policies ORDER BY policy_id`),
      count: p(`SELECT COUNT(*) AS n FROM policies`),
      sameSubject: p(
        `SELECT policy_id FROM policies WHERE role = ? AND COALESCE(principal, '') = ? AND filter = ? AND policy_id <> ?`,
      ),
      upsert: p(
        `INSERT INTO policies (policy_id, role, principal, filter, rule, version, updated_at) VALUES (@policy_id, @role, @principal, @filter, @rule, @version, @updated_at)
         ON CONFLICT (policy_id) DO UPDATE SET role = @role, principal = @principal, filter = @filter, rule = @rule, version = @version, updated_at = @updated_at`,
      ),
      delete: p(`DELETE FROM policies WHERE policy_id = ?`),
    };
  }

  version(): number {
    return (this.s.version!.get() as { v: number } | undefined)?.v ?? 0;
  }

  /** The whole table and its version, read in one transaction (a consistent snapshot). */
  table(): { version: number; entries: PolicyEntryJson[] } {
    return this.db.transaction(() => ({
      version: this.version(),
      entries: (this.s.all!.all() as PolicyRow[]).map(entryOf),
    }))();
  }

  /**
   * The application that an `end-to-end` entry lets claim the keys of device `deviceId`'s messages on `topic`, or
   * undefined when the entry governing them (the one a broker applies) is of another mode, or none does. Decided by
   * the same precedence as the broker's, on the table as it is in this transaction.
   */
  endToEndApp(deviceId: string, topic: string): string | undefined {
    const version = this.version();
    if (this.compiled?.version !== version) {
      const { entries } = this.table();
      this.compiled = compilePolicy(version, entries);
    }
    const rule = ruleFor(this.compiled, { role: 'device', id: deviceId }, topic);
    return rule?.encryption === 'end-to-end' ? rule.app : undefined;
  }

  get(policyId: string): PolicyEntryJson {
    const row = this.s.get!.get(policyId) as PolicyRow | undefined;
    if (!row) throw new KmsError('KMS_ERR_NOT_FOUND', `policy ${policyId}`);
    return entryOf(row);
  }

  /**
   * Creates or replaces entry `policyId`. An entry equal to the stored one changes nothing (no new version, no
   * audit record). Refused: a malformed filter or contradictory fields (KMS_ERR_POLICY_INVALID), another entry for
   * the same subject and filter, or a full table (KMS_ERR_CONFLICT).
   */
  set(policyId: string, body: PolicyBodyJson, actor: string): { entry: PolicyEntryJson; created: boolean } {
    const problem = policyProblem(body);
    if (problem)
      throw new KmsError('KMS_ERR_POLICY_INVALID', problem.detail, { details: [{ problem: problem.problem }] });
    const rule = JSON.stringify(ruleOf(body));
    const principal = body.principal ?? null;
    return this.db.transaction(() => {
      const before = this.s.get!.get(policyId) as PolicyRow | undefined;
      if (before && before.role === body.role && before.principal === principal && before.filter === body.filter) {
        if (before.rule === rule) return { entry: entryOf(before), created: false };
      }
      const other = this.s.sameSubject!.get(body.role, principal ?? '', body.filter, policyId) as
        { policy_id: string } | undefined;
      if (other)
        throw new KmsError('KMS_ERR_CONFLICT', `policy ${other.policy_id} already governs this subject and filter`, {
          details: [{ problem: 'duplicate_subject_filter', policy_id: other.policy_id }],
        });
      const rival = body.encryption === 'end-to-end' ? this.endToEndRival(policyId, body) : undefined;
      if (rival)
        throw new KmsError(
          'KMS_ERR_CONFLICT',
          `policy ${rival.policy_id} gives end-to-end topics of the same devices to app ${rival.app}: a device has one end-to-end key per session, for one application`,
          { details: [{ problem: 'end_to_end_app_conflict', policy_id: rival.policy_id }] },
        );
      if (!before && (this.s.count!.get() as { n: number }).n >= this.maxEntries)
        throw new KmsError('KMS_ERR_CONFLICT', `the policy table holds its maximum of ${this.maxEntries} entries`, {
          details: [{ problem: 'table_full' }],
        });
      this.s.bump!.run();
      const row: PolicyRow = {
        policy_id: policyId,
        role: body.role,
        principal,
        filter: body.filter,
        rule,
        version: this.version(),
        updated_at: Date.now(),
      };
      this.s.upsert!.run(row);
      const entry = entryOf(row);
      this.audit(actor, 'policy.set', body.role === 'device' ? principal : null, {
        policy_id: policyId,
        version: row.version,
        before: before ? entryOf(before) : null,
        after: entry,
      });
      return { entry, created: !before };
    })();
  }

  /**
   * docs/PROTOCOL.md §23.1: the chip seals all of a device's end-to-end topics under one key per session, which one
   * application claims, so every end-to-end entry that can govern a device names the same application. The first
   * other entry that could govern some device `body` governs (a role-wide entry, or one for the same principal) and
   * names another application, if any.
   */
  private endToEndRival(policyId: string, body: PolicyBodyJson): PolicyEntryJson | undefined {
    for (const row of this.s.all!.all() as PolicyRow[]) {
      if (row.policy_id === policyId || row.role !== 'device') continue;
      const other = entryOf(row);
      if (other.encryption !== 'end-to-end' || other.app === body.app) continue;
      if (row.principal === null || body.principal === undefined || row.principal === body.principal) return other;
    }
    return undefined;
  }

  delete(policyId: string, actor: string): number {
    return this.db.transaction(() => {
      const before = this.s.get!.get(policyId) as PolicyRow | undefined;
      if (!before) throw new KmsError('KMS_ERR_NOT_FOUND', `policy ${policyId}`);
      this.s.delete!.run(policyId);
      this.s.bump!.run();
      const version = this.version();
      this.audit(actor, 'policy.delete', before.role === 'device' ? before.principal : null, {
        policy_id: policyId,
        version,
        before: entryOf(before),
      });
      return version;
    })();
  }
}
