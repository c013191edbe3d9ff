// `qkey admin policy ...`: the policy table (list, show, set, delete) over the key service's admin API.
import type { KmsClient } from '../kms-api/client.js';
import { policyProblem } from '../kms-api/policy-check.js';
import {
  ENCRYPTION_MODES,
  type EncryptionMode,
  MAX_MQTT_PAYLOAD,
  POLICY_ROLES,
  type PolicyBodyJson,
  type PolicyEntryJson,
} from '../kms-api/policy-schemas.js';
import { parseSuite, SUITE_NAMES, type SuiteId } from '../protocol/index.js';
import { idArgument, parseUint, UsageError } from './io.js';

export const POLICY_USAGE = `  policy list                           the policy table and its version
  policy show <id>
  policy set <id> --role device|app [--principal <id>] --filter <topic filter>
                  --encryption required|optional|plaintext|end-to-end [--app <id>] [--suites <ids or names>] [--max-payload <bytes>]
                  [--max-qos 0|1|2] [--retain yes|no] [--rotate-messages <n>] [--rotate-bytes <n>]
                  [--rotate-seconds <n>]
                                        create or replace an entry; brokers apply it within a poll interval
  policy delete <id>`;

export const POLICY_OPTIONS = {
  role: { type: 'string' },
  principal: { type: 'string' },
  filter: { type: 'string' },
  encryption: { type: 'string' },
  app: { type: 'string' },
  suites: { type: 'string' },
  'max-payload': { type: 'string' },
  'max-qos': { type: 'string' },
  retain: { type: 'string' },
  'rotate-messages': { type: 'string' },
  'rotate-bytes': { type: 'string' },
  'rotate-seconds': { type: 'string' },
} as const;

export type PolicyFlags = { [K in keyof typeof POLICY_OPTIONS]?: string };

function oneOf<T extends string>(value: string | undefined, flag: string, allowed: readonly T[]): T {
  if (value === undefined) throw new UsageError(`${flag} is required (${allowed.join(', ')})`);
  if (!(allowed as readonly string[]).includes(value))
    throw new UsageError(`${flag} must be one of ${allowed.join(', ')}`);
  return value as T;
}

/** The entry the flags describe, checked as the key service would check it. */
export function policyBodyFrom(flags: PolicyFlags): PolicyBodyJson {
  if (flags.filter === undefined) throw new UsageError('--filter is required');
  const rotation = {
    ...(flags['rotate-messages'] !== undefined
      ? { messages: parseUint(flags['rotate-messages'], 'rotate-messages', Number.MAX_SAFE_INTEGER) }
      : {}),
    ...(flags['rotate-bytes'] !== undefined
      ? { bytes: parseUint(flags['rotate-bytes'], 'rotate-bytes', Number.MAX_SAFE_INTEGER) }
      : {}),
    ...(flags['rotate-seconds'] !== undefined
      ? { seconds: parseUint(flags['rotate-seconds'], 'rotate-seconds', Number.MAX_SAFE_INTEGER) }
      : {}),
  };
  if (Object.values(rotation).some((v) => v === 0)) throw new UsageError('rotation limits must be at least 1');
  const body: PolicyBodyJson = {
    role: oneOf(flags.role, '--role', POLICY_ROLES),
    ...(flags.principal !== undefined ? { principal: idArgument(flags.principal, 'principal') } : {}),
    filter: flags.filter,
    encryption: oneOf<EncryptionMode>(flags.encryption, '--encryption', ENCRYPTION_MODES),
    ...(flags.app !== undefined ? { app: idArgument(flags.app, 'app') } : {}),
    ...(flags.suites !== undefined ? { suites: suitesFrom(flags.suites) } : {}),
    ...(Object.keys(rotation).length > 0 ? { rotation } : {}),
    ...(flags['max-payload'] !== undefined
      ? { max_payload: parseUint(flags['max-payload'], 'max-payload', MAX_MQTT_PAYLOAD) }
      : {}),
    ...(flags['max-qos'] !== undefined
      ? { max_qos: Number(oneOf(flags['max-qos'], '--max-qos', ['0', '1', '2'])) as 0 | 1 | 2 }
      : {}),
    ...(flags.retain !== undefined ? { retain: oneOf(flags.retain, '--retain', ['yes', 'no']) === 'yes' } : {}),
  };
  const problem = policyProblem(body);
  if (problem) throw new UsageError(`${problem.problem}: ${problem.detail}`);
  return body;
}

function suitesFrom(text: string): Array<1 | 2> {
  try {
    return [...new Set(text.split(',').map((s) => parseSuite(s.trim())))];
  } catch (err) {
    throw new UsageError(`--suites: ${(err as Error).message} (use 1, 2, SM4-GCM or SM4-CTR-HMAC-SM3)`);
  }
}

/** Suites by name for people (`SM4-GCM`); the JSON output keeps the ids the key service stores. */
function suiteNames(ids: readonly number[], separator: string): string {
  return ids.map((id) => SUITE_NAMES[id as SuiteId] ?? String(id)).join(separator);
}

function describe(e: PolicyEntryJson): string {
  const r = e.rotation;
  return [
    `policy      ${e.policy_id} (version ${e.version}, ${new Date(e.updated_at).toISOString()})`,
    `subject     ${e.principal !== undefined ? `${e.role} ${e.principal}` : `every ${e.role}`}`,
    `filter      ${e.filter}`,
    `encryption  ${e.encryption}${e.app !== undefined ? ` (read by app ${e.app})` : ''}`,
    `suites      ${e.suites ? suiteNames(e.suites, ', ') : 'any'}`,
    `max payload ${e.max_payload ?? "the broker's"}`,
    `max QoS     ${e.max_qos ?? 2}`,
    `retain      ${e.retain === false ? 'refused' : 'allowed'}`,
    `rotation    ${
      r
        ? Object.entries(r)
            .map(([k, v]) => `${k} ${v}`)
            .join(', ')
        : "the broker's"
    }`,
  ].join('\n');
}

/** Runs `policy <action>`; `print` writes JSON with --json, the text otherwise. */
export async function runPolicyCommand(
  action: string | undefined,
  positionals: string[],
  flags: PolicyFlags,
  client: KmsClient,
  print: (json: unknown, text: () => string) => void,
  table: (rows: Array<Record<string, unknown>>, columns: string[]) => string,
): Promise<void> {
  const id = () => {
    const v = positionals[2];
    if (!v) throw new UsageError('missing policy id');
    return idArgument(v, 'policy id');
  };
  switch (action) {
    case 'list': {
      const r = await client.policies();
      print(r, () =>
        [
          `version ${r.version}`,
          table(
            r.entries.map((e) => ({
              ...e,
              principal: e.principal ?? '*',
              suites: e.suites && suiteNames(e.suites, ','),
              rotation: e.rotation ? JSON.stringify(e.rotation) : undefined,
            })),
            [
              'policy_id',
              'role',
              'principal',
              'filter',
              'encryption',
              'suites',
              'max_payload',
              'max_qos',
              'retain',
              'rotation',
            ],
          ),
        ].join('\n'),
      );
      return;
    }
    case 'show': {
      const e = await client.policy(id());
      print(e, () => describe(e));
      return;
    }
    case 'set': {
      const policyId = id();
      const e = await client.setPolicy(policyId, policyBodyFrom(flags));
      print(e, () => `set policy ${policyId}; the table is now at version ${e.version}`);
      return;
    }
    case 'delete': {
      const r = await client.deletePolicy(id());
      print(r, () => `deleted policy ${r.policy_id}; the table is now at version ${r.version}`);
      return;
    }
    default:
      throw new UsageError(`unknown command ${JSON.stringify(`policy ${action ?? ''}`.trim())}`);
  }
}
