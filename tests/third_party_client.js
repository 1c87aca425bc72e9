// Drive msgpack-rpc-lite (npm, not ours) for tests/third_party_client.py.
// usage: NODE_PATH=.venv-thirdparty/node/node_modules node tests/third_party_client.js HOST PORT TIMEOUT_S < calls.json
// calls.json: [[method, params], ...]; prints [{"result": ...} | {"error": "..."}, ...] as one JSON line.
"use strict";
const rpc = require("msgpack-rpc-lite");
const { Int64BE } = require("int64-buffer");

const [host, port, timeoutS] = process.argv.slice(2);

// msgpack-lite writes any integer beyond 32 bits as float64; slidr's contract wants epoch-ms
// `ts` as an integer, so wrap such numbers in Int64BE (what a careful JS ad host must do).
function ints(v) {
  if (typeof v === "number" && Number.isInteger(v) && (v > 0xffffffff || v < -0x80000000)) {
    return new Int64BE(v);
  }
  if (Array.isArray(v)) return v.map(ints);
  if (v && typeof v === "object") {
    const o = {};
    for (const k of Object.keys(v)) o[k] = ints(v[k]);
    return o;
  }
  return v;
}

let input = "";
process.stdin.on("data", (d) => { input += d; });
process.stdin.on("end", async () => {
  const calls = JSON.parse(input);
  const client = rpc.createClient(+port, host, 0, { encode: { int64: true } });
  const timer = setTimeout(() => { console.error("timeout"); process.exit(3); }, 1000 * +timeoutS);
  const out = [];
  for (const [method, params] of calls) {
    try {
      const [result] = await client.request(method, ...ints(params));
      out.push({ result: result === undefined ? null : result });
    } catch (e) {
      out.push({ error: JSON.stringify(e) || String(e) });
    }
  }
  clearTimeout(timer);
  console.log(JSON.stringify(out));
  client.close ? client.close() : client.socket.end();
  process.exit(0);
});
