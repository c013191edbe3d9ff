#!/usr/bin/env node
// Executable entry for the `qkey` bin: refuses an unsupported Node.js with advice, then runs main() and sets the exit status.
// The CLI is imported only after the check, so an old Node never reaches the native addons it cannot load.
const { unsupportedNodeMessage } = (await import(new URL('../../scripts/check-node.mjs', import.meta.url).href)) as {
  unsupportedNodeMessage(): string | null;
};
const unsupported = unsupportedNodeMessage();
if (unsupported) {
  console.error(unsupported);
  process.exitCode = 1;
} else {
  const { main } = await import('./qkey.js');
  const { quietOnBrokenPipe } = await import('./io.js');
  quietOnBrokenPipe();
  process.exitCode = await main(process.argv.slice(2));
}
