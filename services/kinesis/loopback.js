// Preloaded with `node -r ./loopback.js`: kinesis-mock has no host option and listens on 0.0.0.0.
// Rewrite every server listen() to bind 127.0.0.1 so the emulator is reachable over loopback only.
"use strict";
const net = require("net");
const original = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const host = process.env.KINESIS_MOCK_HOST || "127.0.0.1";
  if (args.length > 0 && typeof args[0] === "object" && args[0] !== null) {
    args[0] = { ...args[0], host };
  } else if (args.length > 0 && (typeof args[0] === "number" || typeof args[0] === "string")) {
    // listen(port[, host][, backlog][, callback])
    const port = args[0];
    const rest = args.slice(1).filter((a) => typeof a === "function");
    return original.call(this, { port: Number(port), host }, ...rest);
  }
  return original.apply(this, args);
};
