// The screening plugin, in JavaScript: proves the gateway's WIT interface is usable beyond
// Rust. Built into a WebAssembly component by jco/componentize-js (`npm run build`), with
// every WASI feature disabled: it reaches nothing but the gateway's host interface.
//
// Configuration (JSON):
//   { "block": ["+1900", "anonymous"], "code": 603, "header": "X-Screened" }
// A call whose caller, or the identity its trunk asserts (P-Asserted-Identity), starts with a
// blocked entry is refused with `code` (603 Decline by default); other outbound calls get
// the header `header: passed` on their INVITE. Transfers are not this plugin's business.

import { log, counter } from 'gateway:plugin/host@0.4.0';

let rules = { block: [], code: 603, header: 'X-Screened' };

export function manifest() {
  return { audio: false, dataDir: false };
}

export function init(config) {
  let parsed;
  try {
    parsed = JSON.parse(config || '{}');
  } catch (e) {
    throw `screen-js config is not JSON: ${e.message}`;
  }
  const block = parsed.block ?? [];
  if (!Array.isArray(block) || block.some((b) => typeof b !== 'string')) {
    throw 'screen-js config: `block` must be a list of strings';
  }
  const code = parsed.code ?? 603;
  if (!Number.isInteger(code) || code < 400 || code > 699) {
    throw 'screen-js config: `code` must be a SIP status from 400 to 699';
  }
  const header = parsed.header ?? 'X-Screened';
  if (typeof header !== 'string' || !/^X-[A-Za-z0-9-]+$/.test(header)) {
    throw 'screen-js config: `header` must be an X- header name';
  }
  rules = { block, code, header };
}

export function onCallStart(call) {
  const clean = (n) => n.replace(/[\s\-().\/]/g, '');
  const caller = clean(call.caller);
  const asserted = call.asserted === undefined ? caller : clean(call.asserted);
  const blocked = (n) => rules.block.some((prefix) => n.startsWith(prefix));
  if (blocked(caller) || blocked(asserted)) {
    counter('blocked', 1n);
    log('info', `blocked ${caller} calling ${call.destination}`);
    return { tag: 'reject', val: { sipCode: rules.code, reason: `caller ${caller} is blocked` } };
  }
  counter('passed', 1n);
  if (call.direction !== 'outbound') {
    return { tag: 'continue' };
  }
  return {
    tag: 'route',
    val: {
      trunk: undefined,
      failover: [],
      number: undefined,
      callerId: undefined,
      headers: [[rules.header, 'passed']],
      recordAudio: false,
    },
  };
}

export function onEvent(callId, event) {
  if (event.tag === 'ended') {
    counter(`ended-${event.val.sipCode}`, 1n);
  }
}

export function onAudio(callId, frame) {}

export function onTransfer(callId, request) {
  return undefined;
}
