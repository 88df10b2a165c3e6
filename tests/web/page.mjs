// What both browser drivers (demo.mjs, Chromium; firefox.mjs, Firefox) ask of the demo page.

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Evaluates `fn(arg)` in the page every 100 ms until it is truthy (returned) or `timeoutMs`
// passed (null).
export async function poll(page, fn, arg, timeoutMs) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const value = await page.evaluate(fn, arg);
    if (value) return value;
    if (Date.now() > until) return null;
    await sleep(100);
  }
}

// In the page: what the browser's encoder makes of the gateway's answer — the Opus parameters
// it was given, and its payload bytes per packet so far (RTP headers are not counted in
// bytesSent).
export async function sendingStats() {
  const pc = window.GatewayCall.widgets[0].pc;
  const sdp = pc.remoteDescription.sdp;
  const pt = (sdp.match(/a=rtpmap:(\d+) opus\//i) || [])[1];
  const fmtp = (sdp.match(new RegExp(`a=fmtp:${pt} ([^\\r\\n]*)`)) || [])[1] || '';
  let bytes = 0;
  let packets = 0;
  (await pc.getStats()).forEach((r) => {
    if (r.type === 'outbound-rtp' && r.kind === 'audio') {
      bytes = r.bytesSent || 0;
      packets = r.packetsSent || 0;
    }
  });
  return { fmtp, bytes, packets, bytesPerPacket: packets ? bytes / packets : 0 };
}

// What the page recorded of its call, into `result`: the states it went through, the digits
// it heard back, and its errors.
export async function recordCall(page, result) {
  const demo = await page.evaluate(() => window.demo);
  result.states = demo.states;
  result.digits = demo.digits;
  result.errors.push(...demo.errors);
}

// Runs `scenario`, closes `browser` however it went, and prints `result` as one JSON line,
// the scenario's failure among its errors.
export async function runAndReport(browser, result, scenario) {
  try {
    await scenario();
  } catch (e) {
    result.errors.push(String(e.stack || e));
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(result));
}

// Has the widget restart ICE (as on a network change) and waits until the call is connected
// again; records into `result` the gateway's ICE username fragment before and after, and the
// ICE state reached.
export async function restartIce(page, result) {
  const gatewayUfrag = () => (window.GatewayCall.widgets[0].pc.remoteDescription.sdp.match(/a=ice-ufrag:(\S+)/) || [])[1];
  result.gatewayUfragBefore = await page.evaluate(gatewayUfrag);
  await page.evaluate(() => window.GatewayCall.widgets[0].restartIce());
  await poll(page, () => {
    const w = window.GatewayCall.widgets[0];
    return w.restarts === 1 && !w.restarting && w.pc.signalingState === 'stable' && ['connected', 'completed'].includes(w.pc.iceConnectionState);
  }, null, 10000);
  result.gatewayUfragAfter = await page.evaluate(gatewayUfrag);
  result.iceStateRestarted = await page.evaluate(() => window.GatewayCall.widgets[0].pc.iceConnectionState);
}
