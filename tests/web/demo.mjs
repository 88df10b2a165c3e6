// Drives the gateway's demo page in headless Chromium like a visitor: open it, click Call,
// wait for "in call", listen (the page's WebAudio analyser) for the tone the fake
// microphone sends coming back, press keypad digits, hang up. Writes a screenshot of each
// state and prints one JSON line with what it saw. The Rust test (tests/tests/web_demo.rs)
// starts the gateway and the trunks and checks the result.
//
// usage: node demo.mjs URL OUT_DIR TONE_WAV EXPECT_HZ DIGITS|--unreachable|--no-mic
//        [--drop-connection|--restart-ice|--preflight]
// With --drop-connection the page's WebSocket is closed once the tone is heard: the widget
// must show "Reconnecting…", resume the call, and the tone must be heard again. With
// --restart-ice the widget restarts ICE once the tone is heard (as on a network change):
// the gateway's answer must carry new ICE credentials and the tone must be heard again. With
// --preflight the widget's preflight() runs before the call. Every run records the widget's
// `quality` events.

import { chromium } from 'playwright-core';
import { poll, recordCall, restartIce, runAndReport, sendingStats } from './page.mjs';

const [url, outDir, toneWav, expectHzText, digits, dropFlag] = process.argv.slice(2);
const expectHz = Number(expectHzText);
const result = { states: [], peakHz: 0, levelDb: -120, digits: '', statusInCall: '', statusEnded: '', detailEnded: '', errors: [], screenshots: [] };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    // --no-mic: the visitor refuses the microphone (no auto-accepting fake permission UI).
    ...(digits === '--no-mic' ? [] : ['--use-fake-ui-for-media-stream']),
    '--use-fake-device-for-media-stream',
    `--use-file-for-fake-audio-capture=${toneWav}`,
    '--autoplay-policy=no-user-gesture-required',
    // The gateway listens on loopback in the tests.
    '--allow-loopback-in-peer-connection',
  ],
});

async function shot(page, name) {
  const path = `${outDir}/${name}.png`;
  await page.screenshot({ path, fullPage: true });
  result.screenshots.push(path);
}

// Listens for the tone again (the analyser's reading reset first): the last peak heard.
async function listenAgain(page) {
  await page.evaluate(() => { window.demo.peakHz = 0; });
  let heard = 0;
  let hz = 0;
  const listenUntil = Date.now() + 10000;
  while (Date.now() < listenUntil && heard < 10) {
    hz = await page.evaluate(() => window.demo.peakHz);
    heard = Math.abs(hz - expectHz) <= 25 ? heard + 1 : 0;
    await page.waitForTimeout(100);
  }
  return hz;
}

await runAndReport(browser, result, async () => {
  const context = await browser.newContext({ permissions: digits === '--no-mic' ? [] : ['microphone'] });
  const page = await context.newPage();
  page.on('console', (m) => process.stderr.write(`page: ${m.text()}\n`));
  page.on('pageerror', (e) => result.errors.push(`page error: ${e.message}`));
  await page.goto(url);
  const widget = page.locator('.gateway-call');
  await widget.locator('#status').waitFor();
  await shot(page, '1-idle');
  if (dropFlag === '--preflight') {
    result.preflight = await page.evaluate(() => window.GatewayCall.widgets[0].preflight());
  }
  await page.evaluate(() => {
    window.qualityEvents = [];
    window.GatewayCall.widgets[0].on('quality', (q) => window.qualityEvents.push(q));
  });

  await widget.locator('#call').click();
  if (await poll(page, () => window.demo.states.includes('connecting'), null, 5000)) {
    await shot(page, '2-connecting');
  }
  if (digits === '--unreachable' || digits === '--no-mic') {
    // No gateway there, or no microphone allowed: the widget must say so plainly.
    await poll(page, () => window.demo.states.includes('ended'), null, 10000);
    result.statusEnded = await widget.locator('#status').textContent();
    result.detailEnded = await widget.locator('#detail').textContent();
    await shot(page, digits === '--no-mic' ? '3-no-microphone' : '3-unreachable');
    const demo = await page.evaluate(() => window.demo);
    result.states = demo.states;
    result.shownErrors = demo.errors;
    return;
  }
  const inCall = await poll(page, () => window.demo.states.includes('in-call') || window.demo.states.includes('ended'), null, 20000);
  if (!inCall || !(await page.evaluate(() => window.demo.states.includes('in-call')))) {
    throw new Error('the call never reached "in call"');
  }
  // Listen: the tone must come back, steadily, for a second.
  let steady = 0;
  const until = Date.now() + 15000;
  while (Date.now() < until && steady < 10) {
    const d = await page.evaluate(() => ({ peakHz: window.demo.peakHz, levelDb: window.demo.levelDb }));
    result.peakHz = d.peakHz;
    result.levelDb = d.levelDb;
    steady = Math.abs(d.peakHz - expectHz) <= 25 ? steady + 1 : 0;
    await page.waitForTimeout(100);
  }
  result.statusInCall = await widget.locator('#status').textContent();
  await shot(page, '3-in-call');
  // What Chromium's encoder makes of the gateway's answer.
  result.sending = await page.evaluate(sendingStats);

  if (dropFlag === '--drop-connection') {
    // The network blinks: the signaling connection goes, the call must not.
    await page.evaluate(() => window.GatewayCall.widgets[0].ws.close());
    if (await poll(page, () => window.demo.states.includes('reconnecting'), null, 5000)) {
      result.statusReconnecting = await widget.locator('#status').textContent();
    }
    await poll(page, () => window.demo.states.lastIndexOf('in-call') > window.demo.states.indexOf('reconnecting'), null, 15000);
    result.statusResumed = await widget.locator('#status').textContent();
    result.resumedPeakHz = await listenAgain(page);
  }

  if (dropFlag === '--restart-ice') {
    await restartIce(page, result);
    result.restartedPeakHz = await listenAgain(page);
  }

  if (digits) {
    await widget.locator('#keypad').click();
    for (const key of digits) {
      await widget.locator(`button[data-key="${key}"]`).click();
      await page.waitForTimeout(300);
    }
    await poll(page, (n) => window.demo.digits.length >= n, digits.length, 10000);
    await shot(page, '4-keypad');
  }

  // Mute: the far end (an echo) goes quiet; unmute brings the tone back.
  await widget.locator('#mute').click();
  await page.waitForTimeout(1500);
  result.mutedLevelDb = await page.evaluate(() => window.demo.levelDb);
  result.mutedDetail = await widget.locator('#detail').textContent();
  await widget.locator('#mute').click();
  result.unmutedPeakHz = (await poll(page, (hz) => Math.abs(window.demo.peakHz - hz) <= 25 && window.demo.peakHz, expectHz, 5000)) || 0;

  result.quality = await page.evaluate(() => window.qualityEvents);
  await widget.locator('#call').click();
  await poll(page, () => window.demo.states.includes('ended'), null, 10000);
  result.statusEnded = await widget.locator('#status').textContent();
  result.detailEnded = await widget.locator('#detail').textContent();
  await shot(page, '5-ended');
  await recordCall(page, result);
});
