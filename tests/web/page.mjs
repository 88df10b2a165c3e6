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
