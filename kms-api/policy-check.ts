// The checks a policy entry must pass beyond its JSON schema: a valid MQTT topic filter and no contradiction
// between its fields. Pure; the key service refuses what fails them, the CLI checks before it asks.
import type { PolicyBodyJson } from './policy-schemas.js';

/** Why a policy entry is refused (each is a stable `problem` in the error's details). */
export type PolicyProblem =
  | 'filter_wildcard' // '+' or '#' inside a level, or '#' before the last level [MQTT-4.7.1-2, MQTT-4.7.1-3]
  | 'filter_null' // U+0000 in the filter [MQTT-4.7.3-2]
  | 'plaintext_with_suites' // suites are envelope suites: meaningless where nothing is sealed
  | 'plaintext_with_rotation' // rotation limits are key limits: meaningless where no key is used
  | 'end_to_end_role' // end-to-end governs a device's messages: an application's own traffic has no device keys
  | 'end_to_end_without_app' // end-to-end names the one application that may claim the keys
  | 'app_without_end_to_end' // only an end-to-end entry lets an application claim a device's keys
  | 'end_to_end_with_rotation'; // the broker holds no key of an end-to-end topic: it has nothing to rotate

/** Is `filter` a valid MQTT topic filter? [MQTT-4.7.1-2] '#' alone and last; [MQTT-4.7.1-3] '+' alone in its level. */
export function topicFilterProblem(filter: string): PolicyProblem | undefined {
  if (filter.includes('\u0000')) return 'filter_null';
  const levels = filter.split('/');
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i]!;
    if (level.includes('#') && (level !== '#' || i !== levels.length - 1)) return 'filter_wildcard';
    if (level.includes('+') && level !== '+') return 'filter_wildcard';
  }
  return undefined;
}

/** The first problem of a schema-valid entry, or undefined when it can be stored. */
export function policyProblem(body: PolicyBodyJson): { problem: PolicyProblem; detail: string } | undefined {
  const filter = topicFilterProblem(body.filter);
  if (filter === 'filter_null') return { problem: filter, detail: 'the filter contains U+0000' };
  if (filter)
    return { problem: filter, detail: "'+' and '#' must fill a whole level, and '#' can only be the last level" };
  if (body.encryption === 'plaintext' && body.suites)
    return { problem: 'plaintext_with_suites', detail: 'a plaintext entry cannot name envelope suites' };
  if (body.encryption === 'plaintext' && body.rotation)
    return { problem: 'plaintext_with_rotation', detail: 'a plaintext entry cannot set key rotation limits' };
  if (body.encryption === 'end-to-end') {
    if (body.role !== 'device')
      return { problem: 'end_to_end_role', detail: 'end-to-end governs device messages: the role must be device' };
    if (body.app === undefined)
      return {
        problem: 'end_to_end_without_app',
        detail: 'an end-to-end entry names the application (app) that reads it',
      };
    if (body.rotation)
      return { problem: 'end_to_end_with_rotation', detail: 'the broker holds no key of an end-to-end topic' };
  } else if (body.app !== undefined)
    return { problem: 'app_without_end_to_end', detail: 'app names the reader of an end-to-end entry only' };
  return undefined;
}
