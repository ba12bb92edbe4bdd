// The example's Node.js app, at the root of the site: links to the other two. Plain `http`,
// no npm packages; it listens where Node apps usually do, and passenger-lite's preload gives
// each worker its own socket instead.
const http = require('http');

const page = (pid) => `<!DOCTYPE html>
<title>passenger-lite example</title>
<h1>Hello from Node.js ${process.version}</h1>
<p>Worker pid ${pid}. The same site also serves:</p>
<ul>
  <li><a href="/python/">a Python (WSGI) app at /python</a></li>
  <li><a href="/ruby/">a Ruby (Rack) app at /ruby</a></li>
</ul>
`;

http.createServer((req, res) => {
  if (req.url !== '/') {
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found\n');
    return;
  }
  const body = page(process.pid);
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}).listen(process.env.PORT || 3000);
