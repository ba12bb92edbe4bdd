// An ES-module Node app for the tests (package.json "type": "module"), listening on
// process.env.PORT with a fallback, as most apps do.
import { createServer } from 'node:http';
import { createHash } from 'node:crypto';

const greeting = await Promise.resolve('hello from esm\n'); // top-level await: only in an ES module

createServer((req, res) => {
  if (req.url === '/echo') {
    const hash = createHash('sha256');
    let length = 0;
    req.on('data', (chunk) => { hash.update(chunk); length += chunk.length; });
    req.on('end', () => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ length, sha256: hash.digest('hex') }));
    });
    return;
  }
  res.end(req.url === '/module' ? String(typeof require) : greeting);
}).listen(process.env.PORT || 8000);
