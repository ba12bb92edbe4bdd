// A CommonJS Node app for the tests with a HARD-CODED port, as many apps are written: the
// passenger-lite preload makes this listen() bind the worker's own socket instead.
const http = require('http');
const fs = require('fs');
const crypto = require('crypto');

const PORT = 3000;

function json(res, data) {
  const body = JSON.stringify(data);
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname.endsWith('/env')) {
    const env = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (/^(PASSENGER|NODE_ENV|PORT$|TEST_)/.test(k)) env[k] = v;
    }
    json(res, { url: req.url, method: req.method, headers: req.headers, env, pid: process.pid,
                remote: req.socket.remoteAddress });
  } else if (url.pathname.endsWith('/echo')) {
    const hash = crypto.createHash('sha256');
    let length = 0;
    req.on('data', (chunk) => { hash.update(chunk); length += chunk.length; });
    req.on('end', () => json(res, { length, sha256: hash.digest('hex') }));
  } else if (url.pathname.endsWith('/hold')) {
    // answers once the file named by ?until= exists: lets a test keep requests in flight
    const until = url.searchParams.get('until');
    const timer = setInterval(() => {
      if (fs.existsSync(until)) {
        clearInterval(timer);
        res.end(String(process.pid));
      }
    }, 10);
  } else if (url.pathname.endsWith('/stream')) {
    res.writeHead(200, { 'content-type': 'text/plain' });
    for (let i = 0; i < 3; i++) res.write(`part ${i}\n`);
    res.end();
  } else {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('hello from node\n');
  }
});

server.listen(PORT, '0.0.0.0', () => {
  console.log(`listening on port ${PORT}`);
});
