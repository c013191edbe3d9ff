// HTML for the console's server-rendered pages: a tagged template that escapes every interpolated value.

/** Markup that is already safe: only html`` results and the console's own constants are wrapped in it. */
export class Html {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text;
  }
}

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Text as HTML character data or a quoted attribute value (HTML §13.1.2.3, §13.2.5.36-38). */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c]!);
}

type Value = Html | string | number | boolean | null | undefined | readonly Value[];

function render(value: Value): string {
  if (value instanceof Html) return value.text;
  if (Array.isArray(value)) return value.map(render).join('');
  if (value === null || value === undefined || value === false) return '';
  return escapeHtml(String(value));
}

/**
 * `html\`<td>${deviceId}</td>\`` escapes deviceId; nested html`` results and arrays of them are kept as markup.
 * Values go only in text and in double-quoted attributes, never in unquoted attributes, URLs' schemes or scripts.
 */
export function html(strings: TemplateStringsArray, ...values: Value[]): Html {
  let out = strings[0]!;
  for (let i = 0; i < values.length; i++) out += render(values[i]!) + strings[i + 1]!;
  return new Html(out);
}

/** A path segment of a console URL built from stored data (ids may hold '/', '?', '#', '%'). */
export function segment(id: string): string {
  return encodeURIComponent(id);
}
