// Preloaded (node --import) into a `qkey broker` process by test/broker/durable.test.ts: the process kills itself
// (SIGKILL) at the COMMIT of the Nth transaction that queues a message (an INSERT INTO outgoing), before SQLite
// writes it; N is QKEY_TEST_CRASH_AT_QUEUED_COMMIT. Nothing of this is in the product.
import Database from 'better-sqlite3';

const at = Number(process.env.QKEY_TEST_CRASH_AT_QUEUED_COMMIT);
let queued = false;
let commits = 0;

const prepare = Database.prototype.prepare;
Database.prototype.prepare = function prepareWatched(sql) {
  const stmt = prepare.call(this, sql);
  const run = stmt.run;
  if (sql.startsWith('INSERT INTO outgoing'))
    stmt.run = function runQueued(...args) {
      queued = true;
      return run.apply(this, args);
    };
  else if (sql === 'COMMIT')
    stmt.run = function runCommit(...args) {
      if (queued && ++commits === at) process.kill(process.pid, 'SIGKILL');
      queued = false;
      return run.apply(this, args);
    };
  return stmt;
};
