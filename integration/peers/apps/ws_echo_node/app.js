// A plain WebSocket echo (text back as text, binary as binary) with the `ws` package, for the
// Autobahn fuzzingclient (integration/peers/test_autobahn.py), through passenger-lite and directly
// (PORT). The test links tests/apps/node_ws/node_modules beside a copy of this file.
const http = require("http");
const { WebSocketServer } = require("ws");

const server = http.createServer((req, res) => {
  res.setHeader("Content-Type", "text/plain");
  res.end("ws echo (node)\n");
});
const wss = new WebSocketServer({ server, maxPayload: 64 * 1024 * 1024 });
wss.on("connection", (ws) => {
  ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on("error", () => {});
});
server.listen(process.env.PORT || 3000, "127.0.0.1");
