// Pure: Prometheus text exposition (format 0.0.4) parsed into samples, and the broker figures the console shows.

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*/;

/** A label value's escapes: `\\`, `\"` and `\n` (exposition format, "Text format details"). */
function unescapeLabel(raw: string): string {
  return raw.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
}

function parseLine(line: string): Sample | undefined {
  const name = NAME.exec(line)?.[0];
  if (!name) return undefined;
  let rest = line.slice(name.length);
  const labels: Record<string, string> = {};
  if (rest.startsWith('{')) {
    rest = rest.slice(1);
    for (;;) {
      rest = rest.trimStart();
      if (rest.startsWith('}')) break;
      const label = LABEL_NAME.exec(rest)?.[0];
      if (!label) return undefined;
      rest = rest.slice(label.length).trimStart();
      if (!rest.startsWith('="')) return undefined;
      const value = /^="((?:[^"\\]|\\.)*)"/.exec(rest);
      if (!value) return undefined;
      labels[label] = unescapeLabel(value[1]!);
      rest = rest.slice(value[0].length).trimStart();
      if (rest.startsWith(',')) rest = rest.slice(1);
      else if (!rest.startsWith('}')) return undefined;
    }
    rest = rest.slice(1);
  }
  // The value, then an optional timestamp; Go's ParseFloat spellings (+Inf, -Inf, NaN) included.
  const token = rest.trim().split(/\s+/)[0];
  if (token === undefined || token === '') return undefined;
  const value = token === '+Inf' ? Infinity : token === '-Inf' ? -Infinity : Number(token);
  if (Number.isNaN(value) && token !== 'NaN') return undefined;
  return { name, labels, value };
}

/** Every sample of an exposition; comments, blank and malformed lines are skipped. */
export function parsePrometheusText(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const sample = parseLine(line);
    if (sample) samples.push(sample);
  }
  return samples;
}

/** A broker's figures as the console shows them; null where the broker did not report the metric. */
export interface BrokerFigures {
  connectedClients: number | null;
  clientsByRole: Record<string, number>;
  messagesUp: number | null;
  messagesDown: number | null;
  /** Refusals by metric and reason, e.g. `uplink: replay` → 3; zero counts left out. */
  refusals: Array<{ what: string; reason: string; count: number }>;
  kmsReachable: boolean | null;
}

const REFUSALS: Array<{ metric: string; label: string; what: string; skip?: string[] }> = [
  { metric: 'broker_uplink_total', label: 'outcome', what: 'uplink', skip: ['opened'] },
  { metric: 'broker_downlink_total', label: 'outcome', what: 'downlink', skip: ['sealed', 'resealed'] },
  { metric: 'broker_publish_rejected_total', label: 'reason', what: 'publish' },
  { metric: 'broker_auth_failed_total', label: 'return_code', what: 'connect (CONNACK code)' },
  { metric: 'broker_subscribe_refused_total', label: 'reason', what: 'subscribe' },
  { metric: 'broker_input_refused_total', label: 'reason', what: 'input' },
];

/** The figures in a broker's /metrics (broker/server.ts names them). */
export function brokerFigures(samples: Sample[]): BrokerFigures {
  const of = (name: string) => samples.filter((s) => s.name === name);
  const sum = (list: Sample[]) => (list.length ? list.reduce((n, s) => n + s.value, 0) : null);
  const clients = of('broker_connected_clients');
  const clientsByRole: Record<string, number> = {};
  for (const s of clients) clientsByRole[s.labels.role ?? ''] = s.value;
  const up = of('broker_uplink_total').filter((s) => s.labels.outcome === 'opened');
  const down = of('broker_downlink_total').filter(
    (s) => s.labels.outcome === 'sealed' || s.labels.outcome === 'resealed',
  );
  const refusals: BrokerFigures['refusals'] = [];
  for (const r of REFUSALS)
    for (const s of of(r.metric)) {
      const reason = s.labels[r.label] ?? '';
      if (s.value > 0 && !r.skip?.includes(reason)) refusals.push({ what: r.what, reason, count: s.value });
    }
  const kms = of('broker_kms_up')[0];
  return {
    connectedClients: sum(clients),
    clientsByRole,
    messagesUp: up.length || of('broker_uplink_total').length ? (sum(up) ?? 0) : null,
    messagesDown: down.length || of('broker_downlink_total').length ? (sum(down) ?? 0) : null,
    refusals,
    kmsReachable: kms === undefined ? null : kms.value === 1,
  };
}
