// Hello-world Node http app of the bench (passenger-lite's node spawner and Passenger).
// Copied from /work/shared/anchors/apps/node/app.js. Both hook listen(); alone it uses $PORT or 18009.
const http = require("http");
const HELLO = "Hello, World!\n";
http.createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": Buffer.byteLength(HELLO) });
  res.end(HELLO);
}).listen(process.env.PORT || 18009, "127.0.0.1");
