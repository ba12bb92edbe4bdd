// passenger-lite Node.js preload, loaded with `node --require` before the app's entry script.
//
// Makes the app's FIRST listen() bind the worker's private Unix socket, whatever port, host or
// path the app names: apps that listen on process.env.PORT and apps with a hard-coded port both
// work, and several workers of one app never clash. Later listen() calls are left alone.
// `--require` runs before the entry whether the entry is CommonJS or an ES module, and ES modules
// import the same `node:net` / `node:http` objects, so this one file serves both kinds of app.
//
// On the server it takes over, it answers `OPTIONS *` (the manager's readiness probe) without
// calling the app, and turns off Node's own keep-alive and request timeouts: the only client is
// the passenger-lite front process, which keeps connections open and enforces its own timeouts.
// A Unix socket has no peer address, so its connections report the client's address from the
// X-Real-IP header the front process sets (req.socket.remoteAddress, Express's req.ip), looked up
// only when the app asks.
//
// Environment (set by the manager): PASSENGER_LITE_SOCKET, the Unix socket path to bind.
// Never loads passenger-lite; costs one extra function call per server event.
'use strict';

const net = require('node:net');

const SOCKET = process.env.PASSENGER_LITE_SOCKET;

function answerProbe(server) {
  const emit = server.emit;
  server.emit = function passengerLiteEmit(event, req, res) {
    if (event === 'request' && req.url === '*' && req.method === 'OPTIONS') {
      res.writeHead(200, { 'content-length': '0' });
      res.end();
      return true;
    }
    return emit.apply(this, arguments);
  };
}

function clientAddress() {
  const res = this._httpMessage; // the response being written on this connection
  const ip = res && res.req && res.req.headers['x-real-ip'];
  return ip || '127.0.0.1';
}

const PEER = {
  remoteAddress: { get: clientAddress, configurable: true },
  remoteFamily: { get() { return clientAddress.call(this).includes(':') ? 'IPv6' : 'IPv4'; }, configurable: true },
};

function reportClientAddress(socket) {
  Object.defineProperties(socket, PEER);
}

if (SOCKET) {
  const listen = net.Server.prototype.listen;
  let taken = false;
  net.Server.prototype.listen = function passengerLiteListen(...args) {
    if (taken) {
      return listen.apply(this, args);
    }
    taken = true;
    const last = args[args.length - 1];
    const callback = typeof last === 'function' ? last : undefined;
    if (typeof this.keepAliveTimeout === 'number') { // an http(s).Server
      this.keepAliveTimeout = 0;
      this.requestTimeout = 0;
      answerProbe(this);
    }
    this.on('connection', reportClientAddress);
    const options = { path: SOCKET };
    return callback ? listen.call(this, options, callback) : listen.call(this, options);
  };
}
