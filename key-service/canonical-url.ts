// One spelling per resource: the request target a route is matched on, whatever spelling the client sent.
// Authorization never depends on it (each route group checks its callers in its own hook); it only means that
// every spelling of a route's path reaches that route and gets that route's answer, or none reaches anything.

/** RFC 3986 §2.3 unreserved characters, and '/': decoding these changes no path's meaning here. */
const DECODABLE = /%(2[dDeEfF]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA]|5[fF]|7[eE])/g;

/**
 * The canonical form of a request target: origin form (RFC 9112 §3.2.1), path parameters (`;...`) removed,
 * unreserved characters and '/' percent-decoded once (RFC 3986 §6.2.2.2), dot segments resolved
 * (RFC 3986 §5.2.4), empty segments and a trailing '/' dropped. The query is kept as it is.
 */
export function canonicalUrl(target: string): string {
  return isCanonical(target) ? target : fullCanonicalUrl(target);
}

/** Characters after which a path may not be canonical: an escape, a parameter, an empty or dot segment. */
const SUSPECT = /[%;]|\/\/|\/\./;

/**
 * True for a target canonicalUrl would return unchanged: an origin-form path without escapes, parameters, empty or
 * dot segments or a trailing '/'. Most requests are such; checking is a few times cheaper than rebuilding the path.
 */
function isCanonical(target: string): boolean {
  const q = target.indexOf('?');
  const path = q === -1 ? target : target.slice(0, q);
  return path.length > 1 && path.charCodeAt(0) === 0x2f && !path.endsWith('/') && !SUSPECT.test(path);
}

/** The canonical form, always computed in full (canonicalUrl skips this for targets already canonical). */
export function fullCanonicalUrl(target: string): string {
  const q = target.indexOf('?');
  let path = q === -1 ? target : target.slice(0, q);
  const query = q === -1 ? '' : target.slice(q);
  // Absolute form (a proxy's request line): only the path names the resource. [RFC 9112 §3.2.2]
  const scheme = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/]*/.exec(path);
  if (scheme) path = path.slice(scheme[0].length);
  const decoded = path
    .split('/')
    .map((segment) => segment.replace(/;.*$/s, '')) // RFC 3986 §3.3: parameters end the segment's name
    .join('/')
    .replace(DECODABLE, (escape) => String.fromCharCode(parseInt(escape.slice(1), 16)));
  const out: string[] = [];
  for (const segment of decoded.split('/')) {
    if (segment === '' || segment === '.') continue;
    if (segment === '..') out.pop();
    else out.push(segment);
  }
  return `/${out.join('/')}${query}`;
}
