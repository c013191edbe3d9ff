// The console's pages as HTML, from plain data: every stored value goes through html`` (escaped), never around it.
import type { AuditRow, ClientRow, DeviceRow } from '../store.js';
import type { BrokerReading } from './broker-figures.js';
import { html, type Html, segment } from './html.js';

export const NAV = [
  { href: '/console/devices', label: 'Devices' },
  { href: '/console/apps', label: 'Apps' },
  { href: '/console/brokers', label: 'Brokers' },
  { href: '/console/policies', label: 'Policies' },
  { href: '/console/audit', label: 'Audit log' },
] as const;

export interface PageFrame {
  title: string;
  /** The session's CSRF token when signed in (the logout form needs it); absent on the login page. */
  csrf?: string;
  /** Which NAV entry is this page's. */
  section?: (typeof NAV)[number]['href'];
  notice?: { text: string; kind?: 'error' | 'info' };
}

const when = (ms: number | null | undefined) => (ms ? new Date(ms).toISOString().replace('.000Z', 'Z') : '');

/** The hidden field every state-changing form carries. */
export const csrfField = (csrf: string) => html`<input type="hidden" name="csrf" value="${csrf}" />`;

export function page(frame: PageFrame, body: Html): Html {
  const nav = frame.csrf
    ? html`<header>
        <nav aria-label="Console">
          <span class="brand">QKey console</span>
          <ul>
            ${NAV.map(
              (n) =>
                html`<li>
                  <a href="${n.href}" ${n.href === frame.section ? html` aria-current="page"` : ''}>${n.label}</a>
                </li>`,
            )}
          </ul>
          <form class="inline" method="post" action="/console/logout">
            ${csrfField(frame.csrf)}<button type="submit">Log out</button>
          </form>
        </nav>
      </header>`
    : html`<header>
        <nav aria-label="Console"><span class="brand">QKey console</span></nav>
      </header>`;
  const notice = frame.notice
    ? html`<p
        class="notice${frame.notice.kind === 'error' ? ' error' : ''}"
        role="${frame.notice.kind === 'error' ? 'alert' : 'status'}"
      >
        ${frame.notice.text}
      </p>`
    : '';
  return html`<!doctype html>
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <title>${frame.title} · QKey console</title>
        <link rel="stylesheet" href="/console/console.css" />
      </head>
      <body>
        <a class="skip" href="#main">Skip to content</a>
        ${nav}
        <main id="main">
          <h1>${frame.title}</h1>
          ${notice} ${body}
        </main>
      </body>
    </html> `;
}

export function loginPage(notice?: PageFrame['notice']): Html {
  return page(
    { title: 'Sign in', ...(notice ? { notice } : {}) },
    html`<form method="post" action="/console/login" class="add">
        <label for="token"
          >Admin token
          <input
            id="token"
            name="token"
            type="password"
            autocomplete="current-password"
            required
            maxlength="512"
            autofocus
          />
        </label>
        <button type="submit">Sign in</button>
      </form>
      <p class="muted">
        The admin token is in the key service's data folder (<code>admin-token</code>) unless it was configured.
      </p>`,
  );
}

export function messagePage(frame: PageFrame, text: string, link?: { href: string; label: string }): Html {
  return page(
    frame,
    html`<p>${text}</p>
      ${link ? html`<p><a href="${link.href}">${link.label}</a></p>` : ''}`,
  );
}

export interface DeviceLine {
  device: DeviceRow;
  pool: { up: number; down: number };
  low: boolean;
  pending: number;
  stalePending: number;
  lastSeen: number | null;
}

const stateCell = (state: string) => html`<span class="state-${state}">${state}</span>`;

export function devicesPage(
  frame: PageFrame,
  search: { q: string; low: boolean },
  lines: DeviceLine[],
  next: string | undefined,
  lowWater: number,
): Html {
  const query = (after: string) =>
    `/console/devices?${new URLSearchParams({ ...(search.q ? { q: search.q } : {}), ...(search.low ? { low: '1' } : {}), after })}`;
  return page(
    frame,
    html`<form class="search" method="get" action="/console/devices" role="search">
        <label for="q"
          >Device id contains <input id="q" name="q" type="search" value="${search.q}" maxlength="128"
        /></label>
        <label class="check"
          ><input type="checkbox" name="low" value="1" ${search.low ? html` checked` : ''} /> Low pools only (below
          ${lowWater} keys)</label
        >
        <button type="submit">Search</button>
      </form>
      <table>
        <caption>
          ${lines.length} device${lines.length === 1 ? '' : 's'}${next ? ' on this page' : ''}
        </caption>
        <thead>
          <tr>
            <th scope="col">Device</th>
            <th scope="col">State</th>
            <th scope="col" class="num">Uplink pool</th>
            <th scope="col" class="num">Downlink pool</th>
            <th scope="col">Pool</th>
            <th scope="col" class="num">Pending batches</th>
            <th scope="col">Last seen</th>
          </tr>
        </thead>
        <tbody>
          ${lines.map(
            (l) =>
              html`<tr>
                <th scope="row">
                  <a href="/console/devices/${segment(l.device.device_id)}"><code>${l.device.device_id}</code></a>
                </th>
                <td>${stateCell(l.device.state)}</td>
                <td class="num">${l.pool.up}</td>
                <td class="num">${l.pool.down}</td>
                <td>${l.low ? html`<span class="low">low</span>` : l.device.state === 'active' ? 'ok' : ''}</td>
                <td class="num">
                  ${l.pending}${l.stalePending ? html` <span class="stale">(${l.stalePending} stale)</span>` : ''}
                </td>
                <td>${when(l.lastSeen) || html`<span class="muted">never</span>`}</td>
              </tr>`,
          )}
        </tbody>
      </table>
      <p class="pager">
        ${next ? html`<a href="${query(next)}" rel="next">Next devices</a>` : html`<span class="muted">End of the list.</span>`}
      </p>`,
  );
}

export interface DeviceDetail {
  device: DeviceRow;
  pool: { up: number; down: number };
  low: boolean;
  lastSeen: number | null;
  nextKeyIndex: number;
  keys: Array<{ direction: string; state: string; n: number; first: number; last: number }>;
  batches: Array<{
    batch_id: string;
    state: string;
    up_count: number;
    down_count: number;
    created_at: number;
    stale: boolean;
  }>;
}

export function devicePage(frame: PageFrame, d: DeviceDetail): Html {
  const id = d.device.device_id;
  return page(
    frame,
    html`<dl class="facts">
        <dt>Device id</dt>
        <dd><code>${id}</code></dd>
        <dt>State</dt>
        <dd>${stateCell(d.device.state)}</dd>
        ${
          d.device.serial
            ? html`<dt>Serial</dt>
                <dd><code>${d.device.serial}</code></dd>`
            : ''
        }
        <dt>Registered</dt>
        <dd>${when(d.device.created_at)}</dd>
        ${
          d.device.revoked_at
            ? html`<dt>Revoked</dt>
                <dd>
                  ${when(d.device.revoked_at)}${d.device.revoke_reason ? html` — ${d.device.revoke_reason}` : ''}
                </dd>`
            : ''
        }
        <dt>Unused keys</dt>
        <dd>${d.pool.up} uplink, ${d.pool.down} downlink${d.low ? html` <span class="low">(low)</span>` : ''}</dd>
        <dt>Next key index</dt>
        <dd>${d.nextKeyIndex}</dd>
        <dt>Last seen</dt>
        <dd>${when(d.lastSeen) || 'never'}</dd>
      </dl>
      <h2 id="keys">Keys by state</h2>
      <table aria-labelledby="keys">
        <thead>
          <tr>
            <th scope="col">Direction</th>
            <th scope="col">State</th>
            <th scope="col" class="num">Keys</th>
            <th scope="col" class="num">Lowest index</th>
            <th scope="col" class="num">Highest index</th>
          </tr>
        </thead>
        <tbody>
          ${
            d.keys.length
              ? d.keys.map(
                  (k) =>
                    html`<tr>
                      <td>${k.direction}</td>
                      <td>${k.state}</td>
                      <td class="num">${k.n}</td>
                      <td class="num">${k.first}</td>
                      <td class="num">${k.last}</td>
                    </tr>`,
                )
              : html`<tr>
                  <td colspan="5" class="muted">No keys.</td>
                </tr>`
          }
        </tbody>
      </table>
      <h2 id="batches">Fill batches</h2>
      <table aria-labelledby="batches">
        <thead>
          <tr>
            <th scope="col">Batch</th>
            <th scope="col">State</th>
            <th scope="col" class="num">Uplink keys</th>
            <th scope="col" class="num">Downlink keys</th>
            <th scope="col">Created</th>
          </tr>
        </thead>
        <tbody>
          ${
            d.batches.length
              ? d.batches.map(
                  (b) =>
                    html`<tr>
                      <td><code>${b.batch_id}</code></td>
                      <td>${b.state}${b.stale ? html` <span class="stale">(stale)</span>` : ''}</td>
                      <td class="num">${b.up_count}</td>
                      <td class="num">${b.down_count}</td>
                      <td>${when(b.created_at)}</td>
                    </tr>`,
                )
              : html`<tr>
                  <td colspan="5" class="muted">No batches.</td>
                </tr>`
          }
        </tbody>
      </table>
      <p><a href="/console/audit?device=${encodeURIComponent(id)}">Audit entries of this device</a></p>
      ${d.device.state === 'active' ? html`<p><a href="/console/devices/${segment(id)}/revoke">Revoke this device…</a></p>` : ''}`,
  );
}

/** The confirmation step of every revocation: a form the administrator submits, with what it will do. */
export function confirmRevokePage(
  frame: PageFrame & { csrf: string },
  what: { kind: 'device' | 'app' | 'broker'; id: string; consequence: string; back: string },
): Html {
  return page(
    frame,
    html`<p>${what.consequence}</p>
      <form method="post" action="${frame.section}/${segment(what.id)}/revoke" class="add">
        ${csrfField(frame.csrf)}
        ${what.kind === 'device' ? html`<label for="reason">Reason (kept in the audit log)<input id="reason" name="reason" type="text" maxlength="256" /></label>` : ''}
        <button type="submit" class="danger">Revoke ${what.kind} ${what.id}</button>
        <a href="${what.back}">Cancel</a>
      </form>`,
  );
}

export interface SecretShown {
  kind: 'app' | 'broker';
  id: string;
  secret: string;
}

export function clientsPage(
  frame: PageFrame & { csrf: string },
  kind: 'app' | 'broker',
  clients: ClientRow[],
  shown?: SecretShown,
  brokers?: BrokerReading[],
): Html {
  const base = kind === 'app' ? '/console/apps' : '/console/brokers';
  const secret = shown
    ? html`<div class="notice secret" role="status">
        <p>
          ${kind === 'app' ? 'App' : 'Broker'} <code>${shown.id}</code> registered. Its client secret is shown this
          once; it cannot be shown again:
        </p>
        <p><code id="client-secret">${shown.secret}</code></p>
      </div>`
    : '';
  const addFields =
    kind === 'app'
      ? html`<label for="id">App id<input id="id" name="id" type="text" required maxlength="128" /></label>
          <label for="publish"
            >May publish to (filters, comma-separated; default devices/+/down/#)<input
              id="publish"
              name="publish"
              type="text"
              maxlength="4096"
          /></label>
          <label for="subscribe"
            >May subscribe to (comma-separated; default devices/+/up/#)<input
              id="subscribe"
              name="subscribe"
              type="text"
              maxlength="4096"
          /></label>`
      : html`<label for="id">Broker id<input id="id" name="id" type="text" required maxlength="128" /></label>
          <label for="cert_fingerprint"
            >Client certificate SHA-256 (optional)<input
              id="cert_fingerprint"
              name="cert_fingerprint"
              type="text"
              maxlength="95"
          /></label>
          <label for="cert_subject"
            >Client certificate subject (optional)<input
              id="cert_subject"
              name="cert_subject"
              type="text"
              maxlength="1024"
          /></label>`;
  return page(
    frame,
    html`${secret} ${brokers ? brokerFiguresSection(brokers) : ''}
      <h2 id="registered">Registered ${kind}s</h2>
      <table aria-labelledby="registered">
        <thead>
          <tr>
            <th scope="col">Id</th>
            <th scope="col">State</th>
            <th scope="col">Registered</th>
            <th scope="col">${kind === 'app' ? 'Topic rights' : 'Certificate'}</th>
            <th scope="col"><span class="skip">Actions</span></th>
          </tr>
        </thead>
        <tbody>
          ${
            clients.length
              ? clients.map(
                  (c) =>
                    html`<tr>
                      <th scope="row"><code>${c.client_id}</code></th>
                      <td>
                        ${stateCell(c.state)}${c.revoked_at ? html` <span class="muted">${when(c.revoked_at)}</span>` : ''}
                      </td>
                      <td>${when(c.created_at)}</td>
                      <td>
                        ${kind === 'app' ? aclText(c.acl) : html`<code>${c.cert_fingerprint ?? ''}</code> <code>${c.cert_subject ?? ''}</code>`}
                      </td>
                      <td>
                        ${c.state === 'active' ? html`<a href="${base}/${segment(c.client_id)}/revoke">Revoke…</a>` : ''}
                      </td>
                    </tr>`,
                )
              : html`<tr>
                  <td colspan="5" class="muted">None registered.</td>
                </tr>`
          }
        </tbody>
      </table>
      <h2 id="add">Add ${kind === 'app' ? 'an app' : 'a broker'}</h2>
      <form method="post" action="${base}" class="add" aria-labelledby="add">
        ${csrfField(frame.csrf)} ${addFields}
        <button type="submit">Add ${kind}</button>
      </form>`,
  );
}

function aclText(acl: string | null): Html {
  if (!acl) return html``;
  const parsed = JSON.parse(acl) as { publish?: string[]; subscribe?: string[] };
  return html`publish <code>${(parsed.publish ?? []).join(', ')}</code>; subscribe
    <code>${(parsed.subscribe ?? []).join(', ')}</code>`;
}

const count = (n: number | null) => (n === null ? html`<span class="muted">n/a</span>` : String(n));

function brokerFiguresSection(readings: BrokerReading[]): Html {
  return html`<h2 id="live">Live figures</h2>
    ${
      readings.length === 0
        ? html`<p class="muted">No broker metrics URLs are configured (<code>console.brokerMetrics</code>).</p>`
        : html`<table aria-labelledby="live">
            <thead>
              <tr>
                <th scope="col">Metrics URL</th>
                <th scope="col" class="num">Connected clients</th>
                <th scope="col" class="num">Messages up</th>
                <th scope="col" class="num">Messages down</th>
                <th scope="col">Refusals by reason</th>
                <th scope="col">Key service</th>
              </tr>
            </thead>
            <tbody>
              ${readings.map((r) =>
                r.ok
                  ? html`<tr>
                      <th scope="row"><code>${r.url}</code></th>
                      <td class="num">
                        ${count(r.figures.connectedClients)}${
                          Object.keys(r.figures.clientsByRole).length
                            ? html`<br /><span class="muted"
                                  >${Object.entries(r.figures.clientsByRole)
                                    .map(([role, n]) => `${role} ${n}`)
                                    .join(', ')}</span
                                >`
                            : ''
                        }
                      </td>
                      <td class="num">${count(r.figures.messagesUp)}</td>
                      <td class="num">${count(r.figures.messagesDown)}</td>
                      <td>
                        ${
                          r.figures.refusals.length
                            ? html`<ul>
                                ${r.figures.refusals.map((f) => html`<li>${f.what}: ${f.reason} <strong>${f.count}</strong></li>`)}
                              </ul>`
                            : html`<span class="muted">none</span>`
                        }
                      </td>
                      <td>
                        ${r.figures.kmsReachable === null ? html`<span class="muted">n/a</span>` : r.figures.kmsReachable ? html`<span class="yes">reachable</span>` : html`<span class="no">unreachable</span>`}
                      </td>
                    </tr>`
                  : html`<tr>
                      <th scope="row"><code>${r.url}</code></th>
                      <td colspan="5"><span class="no">broker unreachable:</span> ${r.error}</td>
                    </tr>`,
              )}
            </tbody>
          </table>`
    }`;
}

export function auditPage(
  frame: PageFrame,
  filter: { device: string; action: string },
  entries: AuditRow[],
  older: number | undefined,
  newer: boolean,
): Html {
  const link = (before?: number) =>
    `/console/audit?${new URLSearchParams({ ...(filter.device ? { device: filter.device } : {}), ...(filter.action ? { action: filter.action } : {}), ...(before !== undefined ? { before: String(before) } : {}) })}`;
  return page(
    frame,
    html`<form class="search" method="get" action="/console/audit" role="search">
        <label for="device"
          >Device id<input id="device" name="device" type="search" value="${filter.device}" maxlength="128"
        /></label>
        <label for="action"
          >Action<input
            id="action"
            name="action"
            type="search"
            value="${filter.action}"
            maxlength="64"
            placeholder="device.revoke"
        /></label>
        <button type="submit">Filter</button>
      </form>
      <table>
        <caption>
          Newest first
        </caption>
        <thead>
          <tr>
            <th scope="col" class="num">#</th>
            <th scope="col">Time</th>
            <th scope="col">Actor</th>
            <th scope="col">Action</th>
            <th scope="col">Device</th>
            <th scope="col">Detail</th>
          </tr>
        </thead>
        <tbody>
          ${
            entries.length
              ? entries.map(
                  (e) =>
                    html`<tr>
                      <td class="num">${e.id}</td>
                      <td>${when(e.at)}</td>
                      <td><code>${e.actor}</code></td>
                      <td>${e.action}</td>
                      <td>
                        ${e.device_id ? html`<a href="/console/devices/${segment(e.device_id)}"><code>${e.device_id}</code></a>` : ''}
                      </td>
                      <td><code>${e.detail ?? ''}</code></td>
                    </tr>`,
                )
              : html`<tr>
                  <td colspan="6" class="muted">No entries.</td>
                </tr>`
          }
        </tbody>
      </table>
      <nav class="pager" aria-label="Audit pages">
        ${newer ? html`<a href="${link()}">Newest entries</a>` : ''}
        ${older !== undefined ? html`<a href="${link(older)}" rel="next">Older entries</a>` : html`<span class="muted">Oldest entry reached.</span>`}
      </nav>`,
  );
}
