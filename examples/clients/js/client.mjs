// A reference client on the official JS SDK (`@metered-ca/realtime` from npm), run
// with Node and the `ws` package (Node 20 has no global WebSocket).
//
// Subscribes to RTMSIM_CHANNEL, publishes on it and sends itself a direct message
// about once a second. The SDK reconnects with exponential backoff and +-20% jitter,
// stays away after terminal closes (4001, 4003, 4012, 4020), waits 30 s after 4010,
// replays subscriptions, and calls the token provider before every connection (a
// fresh token after 4002). What it leaves to the application, and this client adds:
// going_away.retryAfterMs (the SDK 1.2.0 emits "going-away" but reconnects after its
// own ~0.5 s backoff: this client closes and reconnects after the hint + jitter), and
// request errors (retry backend_error/internal_error after a jittered backoff, pause
// after over_message_quota, never retry the rest).
//
//   (cd examples/clients/js && npm install)
//   rtmsim clients scenarios/client-faults.toml --cmd "node examples/clients/js/client.mjs"

import { SignallingClient, SignallingConnectError } from "@metered-ca/realtime";
import WebSocket from "ws";

const URL_ = process.env.RTMSIM_URL;
const CHANNEL = process.env.RTMSIM_CHANNEL;
const TOKEN_URL = process.env.RTMSIM_TOKEN_URL;
const INDEX = process.env.RTMSIM_CLIENT_INDEX ?? "0";
const PUBLISH_EVERY_MS = 1000;
const BACKOFF_MS = [200, 400, 800];
const QUOTA_PAUSE_MS = 5000;
const CONNECT_FLOOR_MS = { 4010: 30000 };
const TRANSIENT = new Set(["backend_error", "internal_error"]);

let firstToken = process.env.RTMSIM_TOKEN;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const log = (...parts) => console.log(`[client ${INDEX}]`, ...parts);

async function tokenProvider() {
  if (firstToken) {
    const token = firstToken;
    firstToken = undefined;
    return token;
  }
  const response = await fetch(TOKEN_URL, { method: "POST" });
  if (!response.ok) throw new Error(`token endpoint: HTTP ${response.status}`);
  return (await response.json()).token;
}

function makeClient() {
  const common = { url: URL_, webSocketFactory: (url) => new WebSocket(url) };
  return TOKEN_URL
    ? new SignallingClient({ ...common, tokenProvider })
    : new SignallingClient({ ...common, apiKey: process.env.RTMSIM_KEY });
}

// Publish with the code table's retry guidance; resolves to a pause before the next.
async function publish(client, data) {
  for (let attempt = 0; attempt <= BACKOFF_MS.length; attempt++) {
    try {
      await client.publish(CHANNEL, data);
      return 0;
    } catch (err) {
      if (err.name === "over_message_quota") {
        log("over quota: pausing publishes");
        return QUOTA_PAUSE_MS * (1 + Math.random());
      }
      if (!TRANSIENT.has(err.name) || attempt === BACKOFF_MS.length) {
        log(`publish not done: ${err.name}`);
        return 0;
      }
      await sleep(BACKOFF_MS[attempt] * (0.5 + Math.random()));
    }
  }
  return 0;
}

// Subscribe, retrying transient errors; the SDK replays it after a reconnect.
async function subscribe(client) {
  for (let attempt = 0; attempt <= BACKOFF_MS.length; attempt++) {
    try {
      await client.subscribe(CHANNEL);
      return;
    } catch (err) {
      if (!TRANSIENT.has(err.name) || attempt === BACKOFF_MS.length) {
        log(`subscribe not done: ${err.name}`);
        return;
      }
      await sleep(BACKOFF_MS[attempt] * (0.5 + Math.random()));
    }
  }
}

// One SDK client's life: ["going_away", ms], ["terminal", code] or ["refused", code].
async function session() {
  const client = makeClient();
  let settle;
  const ended = new Promise((resolve) => { settle = resolve; });
  client.on("going-away", ({ retryAfterMs }) => settle(["going_away", retryAfterMs]));
  client.on("disconnected", ({ code, willReconnect }) => {
    log(`disconnected ${code} (will reconnect: ${willReconnect})`);
    if (!willReconnect) settle(["terminal", code]);
  });
  try {
    await client.connect();
  } catch (err) {
    if (err instanceof SignallingConnectError) return ["refused", err.closeCode];
    return ["refused", 1006];
  }
  log("connected");
  await subscribe(client);
  let running = true;
  const traffic = (async () => {
    for (let n = 0; running; n++) {
      const pause = await publish(client, { n, from: INDEX });
      if (running && client.state === "connected") {
        try {
          await client.send(`client-${INDEX}`, { n });
        } catch (err) {
          log(`send not done: ${err.name}`);
        }
      }
      await sleep(PUBLISH_EVERY_MS + pause);
    }
  })();
  const result = await ended;
  running = false;
  await client.close().catch(() => {});
  traffic.catch(() => {});
  return result;
}

async function main() {
  let refused = 0;
  for (;;) {
    const [why, value] = await session();
    if (why === "going_away") {
      const delay = value * (1 + Math.random()); // the hint + up to 100 % jitter
      log(`going_away: reconnecting in ${delay.toFixed(0)} ms`);
      await sleep(delay);
    } else if (why === "refused") {
      refused += 1;
      const floor = CONNECT_FLOOR_MS[value] ?? 0;
      const delay = Math.max(floor, Math.min(30000, 500 * 2 ** refused)) * (1 + 0.2 * Math.random());
      log(`connect refused (${value}): retrying in ${(delay / 1000).toFixed(1)} s`);
      await sleep(delay);
    } else {
      log(`closed for good (${value}): exiting`);
      process.exit(0);
    }
  }
}

process.on("SIGTERM", () => process.exit(0));
main().catch((err) => {
  console.error(err);
  process.exit(1);
});
