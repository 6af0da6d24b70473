// Registry peer for the fan-out benchmark: a Node.js `ws` broadcast server, written as the
// `ws` README shows ("Server broadcast"): every message a client sends goes to every open
// client, sender included. Started by benches/fanout.rs as `node ws-broadcast.js HOST PORT`
// with NODE_PATH pointing at the `ws` the harness installed from npm.
'use strict';
const WebSocket = require('ws');

const [host, port] = process.argv.slice(2);
const wss = new WebSocket.WebSocketServer({ host, port: Number(port) });

wss.on('connection', function connection(ws) {
  ws.on('error', console.error);
  ws.on('message', function message(data, isBinary) {
    wss.clients.forEach(function each(client) {
      if (client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    });
  });
});
wss.on('listening', () => console.error(`ws ${require('ws/package.json').version} listening on ${host}:${port}`));
