// Drives the gateway's demo page in headless Firefox (Debian's firefox-esr, over WebDriver
// BiDi) like a visitor: open it, click Call, wait for "in call", listen (the page's WebAudio
// analyser) for Firefox's fake microphone tone coming back, press keypad digits, hang up.
// Prints one JSON line with what it saw; tests/tests/web_demo.rs checks it. Firefox is not
// Chromium: its own ICE agent, DTLS, Opus encoder and SDP (no `minptime`, `stereo=1`), so the
// gateway's answer and caps meet a second browser stack.
//
// usage: node firefox.mjs URL EXPECT_HZ DIGITS [--restart-ice|--preflight|--drop-connection]
// With --drop-connection the page's WebSocket is closed once the tone is heard: the widget
// must resume the call and the tone must be heard again. With --restart-ice the widget
// restarts ICE once the tone is heard (as on a network change): the gateway's answer must
// carry new ICE credentials and the tone must be heard again. With --preflight the widget's
// preflight() runs before the call. Every run records the widget's `quality` events.

import puppeteer from 'puppeteer-core';
import { poll, recordCall, restartIce, runAndReport, sendingStats, sleep } from './page.mjs';

const [url, expectHzText, digits, flag] = process.argv.slice(2);
const expectHz = Number(expectHzText);
const result = { states: [], peakHz: 0, digits: '', errors: [] };

const browser = await puppeteer.launch({
  browser: 'firefox',
  executablePath: process.env.FIREFOX || '/usr/bin/firefox-esr',
  headless: true,
  extraPrefsFirefox: {
    // A fake microphone (a sine tone) without a permission prompt.
    'media.navigator.streams.fake': true,
    'media.navigator.permission.disabled': true,
    // A page allowed the microphone gets all its host candidates, loopback included; one
    // not allowed it only the default route's address (and the gateway is on loopback).
    'permissions.default.microphone': 1,
    'media.navigator.audio.fake_frequency': expectHz,
    // The gateway listens on loopback in the tests.
    'media.peerconnection.ice.loopback': true,
    'media.peerconnection.ice.obfuscate_host_addresses': false,
    'media.autoplay.default': 0,
    'media.autoplay.blocking_policy': 0,
    // A headless box has no sound card, and an AudioContext with no output device never
    // runs (the page's analyser would hear nothing): Firefox's own test audio backend.
    'media.cubeb.force_mock_context': true,
  },
});

// Listens until the tone comes back steadily for a second (or 15 s pass): the last peak heard.
async function listen(page) {
  let steady = 0;
  let hz = 0;
  const until = Date.now() + 15000;
  while (Date.now() < until && steady < 10) {
    hz = await page.evaluate(() => window.demo.peakHz);
    steady = Math.abs(hz - expectHz) <= 25 ? steady + 1 : 0;
    await sleep(100);
  }
  return hz;
}

await runAndReport(browser, result, async () => {
  const page = await browser.newPage();
  page.on('console', (m) => process.stderr.write(`page: ${m.text()}\n`));
  page.on('pageerror', (e) => result.errors.push(`page error: ${e.message}`));
  await page.goto(url);
  await page.waitForSelector('.gateway-call >>> #status');
  if (flag === '--preflight') {
    result.preflight = await page.evaluate(() => window.GatewayCall.widgets[0].preflight());
  }
  await page.evaluate(() => {
    window.qualityEvents = [];
    window.GatewayCall.widgets[0].on('quality', (q) => window.qualityEvents.push(q));
  });
  await page.click('.gateway-call >>> #call');
  const inCall = await poll(page, () => window.demo.states.includes('in-call') || window.demo.states.includes('ended'), null, 20000);
  if (!inCall || !(await page.evaluate(() => window.demo.states.includes('in-call')))) {
    throw new Error('the call never reached "in call"');
  }
  result.peakHz = await listen(page);
  // What Firefox's encoder makes of the gateway's answer.
  result.sending = await page.evaluate(sendingStats);
  if (flag === '--drop-connection') {
    // The network blinks: the signaling connection goes, the call must not.
    await page.evaluate(() => window.GatewayCall.widgets[0].ws.close());
    result.reconnecting = Boolean(await poll(page, () => window.demo.states.includes('reconnecting'), null, 5000));
    await poll(page, () => window.demo.states.lastIndexOf('in-call') > window.demo.states.indexOf('reconnecting'), null, 15000);
    await page.evaluate(() => { window.demo.peakHz = 0; });
    result.resumedPeakHz = await listen(page);
  }
  if (flag === '--restart-ice') {
    await restartIce(page, result);
    await page.evaluate(() => { window.demo.peakHz = 0; });
    result.restartedPeakHz = await listen(page);
  }
  if (digits) {
    await page.click('.gateway-call >>> #keypad');
    for (const key of digits) {
      await page.click(`.gateway-call >>> button[data-key="${key}"]`);
      await sleep(300);
    }
    await poll(page, (n) => window.demo.digits.length >= n, digits.length, 10000);
  }
  // The widget's first `quality` event comes 4 s into a call (two 2 s samples).
  await poll(page, () => window.qualityEvents.length > 0, null, 8000);
  result.quality = await page.evaluate(() => window.qualityEvents);
  await page.click('.gateway-call >>> #call');
  await poll(page, () => window.demo.states.includes('ended'), null, 10000);
  await recordCall(page, result);
});
