// Types for check-node.mjs, which stays plain JavaScript because it runs before the build.
export function supportedLines(range?: string): [number, number, number][];
export function unsupportedNodeMessage(version?: string): string | null;
