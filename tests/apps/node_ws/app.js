// WebSocket echo for passenger-lite's tests: the `ws` package on a plain http server, the way
// most Node apps do it. Text "close" makes the server close with 4001; "pid" answers the pid;
// binary messages come back unchanged. GET .../last-close tells the last close code a client sent.
const http = require("http");
const { WebSocketServer } = require("ws");

let lastClose = null;

const server = http.createServer((req, res) => {
  if (req.url.endsWith("/last-close")) {
    res.setHeader("Content-Type", "application/json");
    res.end(JSON.stringify(lastClose));
    return;
  }
  res.setHeader("Content-Type", "text/plain");
  res.end("hello from node ws\n");
});

const wss = new WebSocketServer({ server, maxPayload: 64 * 1024 * 1024 });
wss.on("connection", (ws) => {
  ws.on("message", (data, isBinary) => {
    if (isBinary) {
      ws.send(data, { binary: true });
      return;
    }
    const text = data.toString();
    if (text === "close") ws.close(4001, "asked to");
    else if (text === "pid") ws.send(String(process.pid));
    else ws.send("echo: " + text);
  });
  ws.on("close", (code, reason) => {
    lastClose = { code, reason: reason.toString() };
  });
});

server.listen(process.env.PORT || 3000);
