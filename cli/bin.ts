#!/usr/bin/env node
// Executable entry for the `qkey` bin: runs main() with the process's arguments and sets the exit status.
import { main } from './qkey.js';

process.exitCode = await main(process.argv.slice(2));
