// Types of build-if-stale.mjs, for the tests that import it.
export function buildInputs(root?: string): string[];
export function staleReason(root?: string): string | null;
