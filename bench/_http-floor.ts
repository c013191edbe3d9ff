// A bare node:http server answering every request with a small JSON body, run as a child process by benchmarks:
// the most requests per second any Node HTTP service can answer on this machine with the same load client.
import { createServer } from 'node:http';

const BODY = Buffer.from('{"status":"ok"}');

const server = createServer((_req, res) => {
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': BODY.length });
  res.end(BODY);
});
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => {
  const address = server.address();
  process.send!(typeof address === 'object' && address ? address.port : 0);
});
process.on('disconnect', () => process.exit(0));
