// The console's policy pages as HTML: the table with its version, one entry with its edit form, and the
// confirmation of a deletion. Every stored value goes through html`` (escaped): filters and principals are free text.
import type { PolicyEntryJson } from '../../kms-api/policy-schemas.js';
import { SUITE_NAMES, type SuiteId } from '../../protocol/index.js';
import { csrfField, page, type PageFrame } from './pages.js';
import { html, type Html, segment } from './html.js';

const BASE = '/console/policies';
const when = (ms: number) => new Date(ms).toISOString().replace('.000Z', 'Z');
const dash = html`<span class="muted">-</span>`;

function subject(e: PolicyEntryJson): Html {
  return e.principal === undefined ? html`every ${e.role}` : html`${e.role} <code>${e.principal}</code>`;
}

function suitesText(suites: readonly number[] | undefined): Html | string {
  if (!suites) return dash;
  return suites.map((s) => SUITE_NAMES[s as SuiteId] ?? String(s)).join(', ');
}

function rotationText(r: PolicyEntryJson['rotation']): Html | string {
  if (!r) return dash;
  return [
    r.messages !== undefined ? `${r.messages} messages` : '',
    r.bytes !== undefined ? `${r.bytes} bytes` : '',
    r.seconds !== undefined ? `${r.seconds} s` : '',
  ]
    .filter((s) => s !== '')
    .join(', ');
}

const opt = (v: string | number | undefined, or: Html | string = dash) => (v === undefined ? or : String(v));

export function policiesPage(
  frame: PageFrame & { csrf: string },
  table: { version: number; entries: PolicyEntryJson[] },
): Html {
  return page(
    frame,
    html`<p>
        Table version <strong id="policy-version">${table.version}</strong>. Brokers apply a change at their next poll,
        without a restart; every change is in the audit log (<a href="/console/audit?action=policy.set">policy.set</a>,
        <a href="/console/audit?action=policy.delete">policy.delete</a>).
      </p>
      <table>
        <caption>
          ${table.entries.length} entr${table.entries.length === 1 ? 'y' : 'ies'}
        </caption>
        <thead>
          <tr>
            <th scope="col">Id</th>
            <th scope="col">Subject</th>
            <th scope="col">Topic filter</th>
            <th scope="col">Encryption</th>
            <th scope="col">Suites</th>
            <th scope="col" class="num">Largest payload</th>
            <th scope="col" class="num">Highest QoS</th>
            <th scope="col">Retain</th>
            <th scope="col">Rotation</th>
            <th scope="col" class="num">Version</th>
            <th scope="col"><span class="skip">Actions</span></th>
          </tr>
        </thead>
        <tbody>
          ${
            table.entries.length
              ? table.entries.map(
                  (e) =>
                    html`<tr>
                      <th scope="row">
                        <a href="${BASE}/${segment(e.policy_id)}"><code>${e.policy_id}</code></a>
                      </th>
                      <td>${subject(e)}</td>
                      <td><code>${e.filter}</code></td>
                      <td>${e.encryption}</td>
                      <td>${suitesText(e.suites)}</td>
                      <td class="num">${opt(e.max_payload)}</td>
                      <td class="num">${opt(e.max_qos)}</td>
                      <td>${e.retain === undefined ? dash : e.retain ? 'allowed' : 'refused'}</td>
                      <td>${rotationText(e.rotation)}</td>
                      <td class="num">${e.version}</td>
                      <td><a href="${BASE}/${segment(e.policy_id)}/delete">Delete…</a></td>
                    </tr>`,
                )
              : html`<tr>
                  <td colspan="11" class="muted">No entries: the brokers behave as without a policy.</td>
                </tr>`
          }
        </tbody>
      </table>
      <h2 id="set">Set an entry</h2>
      <p class="muted">A new id creates an entry; an existing id replaces it.</p>
      ${policyForm(frame.csrf)}`,
  );
}

export function policyPage(frame: PageFrame & { csrf: string }, e: PolicyEntryJson): Html {
  return page(
    frame,
    html`<dl class="facts">
        <dt>Subject</dt>
        <dd>${subject(e)}</dd>
        <dt>Topic filter</dt>
        <dd><code>${e.filter}</code></dd>
        <dt>Encryption</dt>
        <dd>${e.encryption}</dd>
        <dt>Suites</dt>
        <dd>${suitesText(e.suites)}</dd>
        <dt>Largest payload</dt>
        <dd>${opt(e.max_payload, 'the broker’s')}</dd>
        <dt>Highest QoS</dt>
        <dd>${opt(e.max_qos, 'any')}</dd>
        <dt>Retained messages</dt>
        <dd>${e.retain === undefined ? 'the broker’s' : e.retain ? 'allowed' : 'refused'}</dd>
        <dt>Rotation limits</dt>
        <dd>${rotationText(e.rotation)}</dd>
        <dt>Set at version</dt>
        <dd>${e.version}, ${when(e.updated_at)}</dd>
      </dl>
      <p><a href="${BASE}/${segment(e.policy_id)}/delete">Delete this entry…</a></p>
      <h2 id="edit">Change this entry</h2>
      ${policyForm(frame.csrf, e)}
      <p><a href="${BASE}">All entries</a></p>`,
  );
}

const selected = (on: boolean) => (on ? html` selected` : '');

/** The set form: empty for a new entry, filled with `e` to change it (its id then fixed). */
function policyForm(csrf: string, e?: PolicyEntryJson): Html {
  const r = e?.rotation;
  const field = (name: string, label: string, value: string | number | undefined, max: number) =>
    html`<label for="${name}"
      >${label}<input id="${name}" name="${name}" type="text" maxlength="${max}" value="${value ?? ''}"
    /></label>`;
  return html`<form method="post" action="${BASE}" class="add" aria-labelledby="${e ? 'edit' : 'set'}">
    ${csrfField(csrf)}
    ${e ? html`<input type="hidden" name="id" value="${e.policy_id}" />` : html`<label for="id">Id<input id="id" name="id" type="text" required maxlength="128" /></label>`}
    <label for="role"
      >Role<select id="role" name="role">
        <option value="device" ${selected(e?.role === 'device')}>device</option>
        <option value="app" ${selected(e?.role === 'app')}>app</option>
      </select></label
    >
    ${field('principal', 'Principal (empty: every one of the role)', e?.principal, 128)}
    <label for="filter"
      >Topic filter<input id="filter" name="filter" type="text" required maxlength="1024" value="${e?.filter ?? ''}"
    /></label>
    <label for="encryption"
      >Encryption<select id="encryption" name="encryption">
        ${['required', 'optional', 'plaintext'].map((m) => html`<option value="${m}" ${selected(e?.encryption === m)}>${m}</option>`)}
      </select></label
    >
    ${field('suites', 'Suites (comma-separated ids or names; empty: any)', e?.suites?.join(','), 64)}
    ${field('max_payload', 'Largest payload, bytes', e?.max_payload, 10)}
    <label for="max_qos"
      >Highest QoS<select id="max_qos" name="max_qos">
        <option value="" ${selected(e?.max_qos === undefined)}>any</option>
        ${[0, 1, 2].map((q) => html`<option value="${q}" ${selected(e?.max_qos === q)}>${q}</option>`)}
      </select></label
    >
    <label for="retain"
      >Retained<select id="retain" name="retain">
        <option value="" ${selected(e?.retain === undefined)}>the broker’s</option>
        <option value="yes" ${selected(e?.retain === true)}>allowed</option>
        <option value="no" ${selected(e?.retain === false)}>refused</option>
      </select></label
    >
    ${field('rotate_messages', 'Rotate after messages', r?.messages, 16)}
    ${field('rotate_bytes', 'Rotate after bytes', r?.bytes, 16)}
    ${field('rotate_seconds', 'Rotate after seconds', r?.seconds, 16)}
    <button type="submit">${e ? 'Save entry' : 'Set entry'}</button>
  </form>`;
}

export function confirmDeletePolicyPage(frame: PageFrame & { csrf: string }, e: PolicyEntryJson): Html {
  return page(
    frame,
    html`<p>
        Deleting entry <code>${e.policy_id}</code> (${subject(e)} on <code>${e.filter}</code>, ${e.encryption}) makes
        the next most specific entry, or the broker's own behaviour, govern that subject and filter. Brokers apply it at
        their next poll.
      </p>
      <form method="post" action="${BASE}/${segment(e.policy_id)}/delete" class="add">
        ${csrfField(frame.csrf)}
        <button type="submit" class="danger">Delete entry ${e.policy_id}</button>
        <a href="${BASE}/${segment(e.policy_id)}">Cancel</a>
      </form>`,
  );
}
