/*
 * Click-to-call widget for the WebRTC-to-SIP gateway. No build step, no dependencies.
 *
 * One tag puts a call button on a page:
 *
 *   <script src="https://GATEWAY/widget.js" data-target="sales" data-token-url="/token"></script>
 *
 * Attributes (all but data-target optional):
 *   data-target     what to call: a target name from the gateway's configuration
 *   data-token-url  your backend's URL that returns a call token, as JSON {"token": "..."}
 *                   or as plain text; fetched with the page's cookies before each call.
 *                   Without it the gateway must run in anonymous (demo) mode.
 *   data-gateway    the gateway's WebSocket URL; default: wss://<host of this script>/ws
 *   data-label      the button's text; default "Call"
 *   data-container  CSS selector of the element to render into; default: after the tag
 *   data-ui="none"  no user interface: use the JavaScript API only
 *   data-ice-transport-policy  "relay" to send media only through the gateway's TURN
 *                   servers (they and their short-lived credentials come from the gateway)
 *
 * JavaScript API, for sites that want their own button:
 *
 *   const phone = GatewayCall.create({ target: 'sales', tokenUrl: '/token' });
 *   (option iceTransportPolicy: 'relay': media through the gateway's TURN servers only)
 *   phone.on('state', ({ state, reason, sipCode, message }) => ...);
 *   phone.call(); phone.hangup(); phone.mute(true); phone.dtmf('1#'); phone.transfer('desk');
 *   phone.restartIce();  (done by itself when the audio path breaks or the network changes)
 *   const check = await phone.preflight();  (microphone, gateway and media path, before a
 *                                             call: {ok, message, mos, rttMs, ...})
 *
 * States: idle, connecting, ringing, in-call, reconnecting (the connection to the gateway
 * dropped; the call and its audio go on while the widget takes it back), ended. Events: state, dtmf ({digit}, a digit
 * from the far end), error ({message}), remotestream (the far end's MediaStream), muted,
 * transfer ({sipCode}: 202 when the far end took it, then the target's call status; a 2xx
 * ends the call with reason `transferred`), quality (every 2 s in a call: {lossPercent,
 * jitterMs, rttMs, mos, level: good|fair|poor}; the widget hints at a poor connection).
 * The first widget made from a tag is GatewayCall.widgets[0].
 */
(function () {
  'use strict';

  const REASONS = {
    hangup: 'Call ended',
    remote_hangup: 'The other side hung up',
    busy: 'The line is busy',
    no_answer: 'No answer',
    not_found: 'That number does not exist',
    rejected: 'The call was not allowed',
    trunk_unavailable: 'The phone network is unavailable right now; please try again later',
    media_failed: 'The audio connection failed; a firewall may be blocking it',
    shutdown: 'The call service is restarting; please call again',
    transferred: 'Call transferred',
    media_timeout: 'The audio stopped; the call was ended',
    session_expired: 'The call was lost by the phone network',
  };

  const ERRORS = {
    NotAllowedError:
      'Microphone access is blocked. Allow the microphone for this site (the icon in the address bar) and try again.',
    SecurityError:
      'Microphone access is blocked. Allow the microphone for this site (the icon in the address bar) and try again.',
    NotFoundError: 'No microphone was found. Connect one and try again.',
    NotReadableError: 'The microphone is in use by another program. Close it and try again.',
  };

  // Errors before a call starts, in the caller's words (docs/protocol.md lists the codes).
  const FAILURES = {
    unauthorized: 'You are not signed in for calls, or your session expired. Reload the page and try again.',
    forbidden: 'You are not allowed to call this destination.',
    limit_reached: 'All lines are busy right now. Please try again in a minute.',
    draining: 'The call service is restarting. Please try again in a minute.',
    bad_sdp: 'This browser could not offer audio the call service understands.',
  };

  const script = document.currentScript;

  // ICE restarts one call may try; the gateway allows ten a minute.
  const MAX_RESTARTS = 5;

  // A peer connection to the gateway sending the microphone (a call's, or preflight's).
  function micConnection(mic, iceServers, iceTransportPolicy) {
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', iceServers: iceServers, iceTransportPolicy: iceTransportPolicy });
    for (const track of mic.getAudioTracks()) {
      pc.addTrack(track, mic);
    }
    return pc;
  }

  // The gateway takes an offer whole (no trickle): wait for candidates, briefly.
  function gathered(pc) {
    return new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') {
        return resolve();
      }
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') {
          resolve();
        }
      });
      setTimeout(resolve, 1500);
    });
  }

  // A gateway message, or null for a frame that is not JSON.
  function parseMessage(data) {
    try {
      return JSON.parse(data);
    } catch (e) {
      return null;
    }
  }

  // The messages of a WebSocket one at a time: next(ms) resolves with the next one, or null
  // when none comes in time or the socket closes.
  function inbox(ws) {
    const waiting = [];
    const queued = [];
    let closed = false;
    ws.onmessage = (event) => {
      const m = parseMessage(event.data);
      if (!m) {
        return;
      }
      const w = waiting.shift();
      w ? w(m) : queued.push(m);
    };
    ws.onerror = () => {};
    ws.onclose = () => {
      closed = true;
      while (waiting.length) {
        waiting.shift()(null);
      }
    };
    return {
      next(ms) {
        if (queued.length || closed) {
          return Promise.resolve(queued.length ? queued.shift() : null);
        }
        return new Promise((resolve) => {
          waiting.push(resolve);
          setTimeout(() => {
            const i = waiting.indexOf(resolve);
            if (i >= 0) {
              waiting.splice(i, 1);
              resolve(null);
            }
          }, ms);
        });
      },
    };
  }

  // What getStats() says of the audio coming in and of the path: counters to difference.
  async function readStats(pc) {
    const s = { received: 0, lost: 0, jitterMs: 0, rttMs: null };
    let pairRttMs = null;
    (await pc.getStats()).forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'audio') {
        s.received = r.packetsReceived || 0;
        s.lost = Math.max(0, r.packetsLost || 0);
        s.jitterMs = (r.jitter || 0) * 1000;
      } else if (r.type === 'remote-inbound-rtp' && r.kind === 'audio' && r.roundTripTime !== undefined) {
        s.rttMs = r.roundTripTime * 1000;
      } else if (r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded' && r.currentRoundTripTime !== undefined) {
        pairRttMs = r.currentRoundTripTime * 1000;
      }
    });
    if (s.rttMs === null) {
      s.rttMs = pairRttMs;
    }
    return s;
  }

  // Loss over the interval between two readings, jitter and round trip now, and a MOS estimate
  // by the E-model (ITU-T G.107, in Cole and Rosenbluth's simplification): one-way delay as
  // half the round trip, twice the jitter (the jitter buffer) and 20 ms of packetization;
  // Opus taken as Ie 0 and Bpl 20. Null when no audio came in the interval.
  function quality(before, now) {
    const received = now.received - before.received;
    const lost = Math.max(0, now.lost - before.lost);
    if (received + lost <= 0) {
      return null;
    }
    const lossPercent = (100 * lost) / (received + lost);
    const delay = (now.rttMs || 0) / 2 + 2 * now.jitterMs + 20;
    const id = 0.024 * delay + (delay > 177.3 ? 0.11 * (delay - 177.3) : 0);
    const ie = (95 * lossPercent) / (lossPercent + 20);
    const r = Math.max(0, Math.min(100, 93.2 - id - ie));
    const mos = 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r);
    const round = (x, d) => Math.round(x * 10 ** d) / 10 ** d;
    return {
      lossPercent: round(lossPercent, 1),
      jitterMs: round(now.jitterMs, 1),
      rttMs: now.rttMs === null ? null : round(now.rttMs, 1),
      mos: round(mos, 2),
      level: mos >= 4 ? 'good' : mos >= 3.5 ? 'fair' : 'poor',
    };
  }

  // Network changes that may have moved the audio path; the widgets in a call restart ICE.
  const live = new Set();
  function networkChanged() {
    for (const widget of live) {
      widget.restartIce();
    }
  }
  window.addEventListener('online', networkChanged);
  if (navigator.connection && navigator.connection.addEventListener) {
    navigator.connection.addEventListener('change', networkChanged);
  }

  function clock(ms) {
    const s = Math.floor(ms / 1000);
    return Math.floor(s / 60) + ':' + String(s % 60).padStart(2, '0');
  }

  function defaultGateway(src) {
    const base = src ? new URL(src, location.href) : new URL(location.href);
    const scheme = base.protocol === 'https:' ? 'wss:' : 'ws:';
    return scheme + '//' + base.host + '/ws';
  }

  class Widget {
    constructor(options) {
      this.gateway = options.gateway || defaultGateway(options.scriptSrc);
      this.target = options.target || '';
      this.tokenUrl = options.tokenUrl || null;
      this.label = options.label || 'Call';
      // STUN/TURN servers with fresh TURN credentials arrive from the gateway per connection.
      this.iceServers = [];
      this.iceTransportPolicy = options.iceTransportPolicy || 'all';
      this.state = 'idle';
      this.listeners = {};
      this.ws = null;
      this.pc = null;
      this.mic = null;
      this.callId = null;
      this.muted = false;
      this.startedAt = null;
      this.timer = null;
      this.audio = null;
      if (options.container !== null) {
        this.render(options.container);
      }
    }

    on(event, fn) {
      (this.listeners[event] = this.listeners[event] || []).push(fn);
      return this;
    }

    emit(event, detail) {
      for (const fn of this.listeners[event] || []) {
        try {
          fn(detail);
        } catch (e) {
          console.error(e);
        }
      }
    }

    setState(state, extra) {
      this.state = state;
      const detail = Object.assign({ state: state }, extra || {});
      this.emit('state', detail);
      this.paint(detail);
    }

    fail(message) {
      this.emit('error', { message: message });
      this.cleanup();
      this.setState('ended', { reason: 'error', message: message });
    }

    async call() {
      if (['connecting', 'ringing', 'in-call', 'reconnecting'].includes(this.state)) {
        return;
      }
      if (!this.target) {
        return this.fail('No one to call: set data-target on the widget.');
      }
      if (!window.RTCPeerConnection || !navigator.mediaDevices) {
        return this.fail('This browser cannot make calls. Use a current Chrome, Edge, Firefox or Safari.');
      }
      this.startedAt = null;
      live.add(this);
      this.setState('connecting');
      try {
        this.mic = await navigator.mediaDevices.getUserMedia({
          audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
        });
      } catch (e) {
        return this.fail(ERRORS[e.name] || 'The microphone could not be opened: ' + e.message);
      }
      let token;
      try {
        token = await this.fetchToken();
      } catch (e) {
        return this.fail(e.message);
      }
      this.connect(token);
    }

    // The call token from the page's backend (null without data-token-url); throws an Error
    // whose message is for the caller.
    async fetchToken() {
      if (!this.tokenUrl) {
        return null;
      }
      let response;
      try {
        response = await fetch(this.tokenUrl, { credentials: 'include' });
      } catch (e) {
        throw new Error('Could not reach the token service. Check your connection and try again.');
      }
      if (!response.ok) {
        throw new Error('You are not allowed to call right now (the token service answered ' + response.status + ').');
      }
      const text = (await response.text()).trim();
      return text.startsWith('{') ? JSON.parse(text).token : text;
    }

    /**
     * Checks what a call needs, before placing one: the microphone, the gateway (a signaling
     * connection and the token) and the media path (ICE, DTLS and SRTP to the gateway, which
     * echoes the microphone back for a few seconds; nothing is dialled). Resolves with
     * {ok, microphone, gateway, media, lossPercent, jitterMs, rttMs, mos, level, message};
     * never rejects. `message` says what to do when `ok` is false.
     */
    async preflight() {
      const result = { ok: false, microphone: false, gateway: false, media: false, message: '' };
      let mic = null;
      let ws = null;
      let pc = null;
      try {
        try {
          mic = await navigator.mediaDevices.getUserMedia({ audio: true });
        } catch (e) {
          result.message = ERRORS[e.name] || 'The microphone could not be opened: ' + e.message;
          return result;
        }
        result.microphone = true;
        let token;
        try {
          token = await this.fetchToken();
        } catch (e) {
          result.message = e.message;
          return result;
        }
        ws = new WebSocket(this.gateway);
        const messages = inbox(ws);
        let m = await messages.next(5000);
        if (!m || m.type !== 'hello') {
          result.message = 'Cannot reach the call service. Check your connection and try again.';
          return result;
        }
        let iceServers = m.ice_servers || [];
        if (token) {
          ws.send(JSON.stringify({ type: 'auth', token: token }));
          m = await messages.next(5000);
          if (!m || m.type !== 'authenticated') {
            result.message = FAILURES.unauthorized;
            return result;
          }
          iceServers = m.ice_servers || iceServers;
        }
        result.gateway = true;
        pc = micConnection(mic, iceServers, this.iceTransportPolicy);
        await pc.setLocalDescription(await pc.createOffer());
        await gathered(pc);
        ws.send(JSON.stringify({ type: 'preflight', sdp: pc.localDescription.sdp }));
        m = await messages.next(5000);
        if (!m || m.type !== 'preflight_answer') {
          result.message = (m && (FAILURES[m.code] || m.message)) || 'The call service did not answer the test.';
          return result;
        }
        await pc.setRemoteDescription({ type: 'answer', sdp: m.sdp });
        // The echo must come back: two seconds of it, within the test's time.
        const until = Date.now() + Math.max(2, Math.min(8, m.seconds - 1)) * 1000;
        let first = null;
        let last = null;
        while (Date.now() < until) {
          await new Promise((resolve) => setTimeout(resolve, 500));
          last = await readStats(pc);
          if (!first && last.received > 0) {
            first = last;
          } else if (first && last.received - first.received >= 100) {
            break;
          }
        }
        const q = first && quality(first, last);
        if (!q) {
          result.message = REASONS.media_failed;
          return result;
        }
        Object.assign(result, q, { ok: true, media: true });
        result.message = q.level === 'poor' ? 'Calls may sound poor on this connection.' : 'Ready to call.';
        return result;
      } catch (e) {
        result.message = 'The test could not run: ' + e.message;
        return result;
      } finally {
        if (pc) {
          pc.close();
        }
        if (ws) {
          ws.close();
        }
        if (mic) {
          for (const track of mic.getTracks()) {
            track.stop();
          }
        }
      }
    }

    // Every 2 s in a call: a `quality` event from the browser's own statistics, and the
    // widget's hint after two poor readings in a row.
    watchQuality(pc) {
      let previous = null;
      readStats(pc)
        .then((first) => {
          previous = previous || first;
        })
        .catch(() => {});
      this.poorReadings = 0;
      clearInterval(this.qualityTimer);
      this.qualityTimer = setInterval(async () => {
        if (this.pc !== pc) {
          return clearInterval(this.qualityTimer);
        }
        const sample = await readStats(pc).catch(() => null);
        const q = sample && previous && this.state === 'in-call' ? quality(previous, sample) : null;
        previous = sample || previous;
        if (q) {
          this.poorReadings = q.level === 'poor' ? this.poorReadings + 1 : 0;
          this.emit('quality', q);
          this.paint({ state: this.state });
        }
      }, 2000);
    }

    connect(token) {
      let opened = false;
      let ws;
      try {
        ws = new WebSocket(this.gateway);
      } catch (e) {
        return this.fail('The call service address is wrong: ' + this.gateway);
      }
      this.ws = ws;
      ws.onopen = () => {
        opened = true;
      };
      ws.onerror = () => {};
      ws.onclose = () => {
        if (this.ws !== ws) {
          return;
        }
        if (opened && this.callId && this.resumeToken && ['ringing', 'in-call', 'connecting', 'reconnecting'].includes(this.state)) {
          // The call goes on at the gateway for a while (its audio does not need this
          // connection): take it back on a new one.
          return this.reconnect();
        }
        if (!opened) {
          this.fail('Cannot reach the call service. Check your connection and try again.');
        } else if (this.state !== 'ended' && this.state !== 'idle') {
          this.fail('The connection to the call service was lost.');
        }
      };
      ws.onmessage = (event) => {
        const message = parseMessage(event.data);
        if (!message) {
          return;
        }
        this.handle(message, token).catch((e) => this.fail('The call could not be set up: ' + e.message));
      };
    }

    // Opens a new connection and resumes the call with its token, retrying for up to 20 s.
    reconnect() {
      if (this.state !== 'reconnecting') {
        this.resumeState = this.state;
        this.setState('reconnecting');
        this.reconnectUntil = Date.now() + 20000;
      }
      if (Date.now() > this.reconnectUntil) {
        this.cleanup();
        return this.setState('ended', { reason: 'error', message: 'The connection to the call service was lost.' });
      }
      setTimeout(() => {
        if (this.state !== 'reconnecting') {
          return;
        }
        let ws;
        try {
          ws = new WebSocket(this.gateway);
        } catch (e) {
          return this.reconnect();
        }
        this.ws = ws;
        ws.onclose = () => {
          if (this.ws === ws && ['reconnecting', 'ringing', 'in-call'].includes(this.state)) {
            this.reconnect();
          }
        };
        ws.onerror = () => {};
        ws.onmessage = (event) => {
          const m = parseMessage(event.data);
          if (!m) {
            return;
          } else if (m.type === 'hello') {
            this.send({ type: 'resume', call_id: this.callId, token: this.resumeToken });
          } else if (m.type === 'resumed') {
            this.setState(this.resumeState);
            // The network that dropped the connection may have moved the audio path too.
            if (this.pc && ['disconnected', 'failed'].includes(this.pc.iceConnectionState)) {
              this.restarting = false;
              this.restartIce();
            }
          } else if (m.type === 'error' && m.code === 'resume_refused') {
            this.fail('The call was lost while reconnecting.');
          } else {
            this.handle(m, null).catch((e) => this.fail('The call could not go on: ' + e.message));
          }
        };
      }, 1000);
    }

    send(message) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) {
        this.ws.send(JSON.stringify(message));
      }
    }

    async handle(m, token) {
      switch (m.type) {
        case 'hello':
          this.iceServers = m.ice_servers || [];
          if (token) {
            this.send({ type: 'auth', token: token });
          } else {
            await this.offer();
          }
          break;
        case 'authenticated':
          this.iceServers = m.ice_servers || this.iceServers;
          await this.offer();
          break;
        case 'renegotiation_needed':
          // The trunk chose a codec narrower (or wider) than the answer let us code, or Opus
          // modes other than it said: a new offer, whose answer re-tells our encoder. After
          // the one in flight, if any.
          if (m.call_id === this.callId && this.pc) {
            if (this.restarting) {
              this.renegotiateAgain = true;
            } else {
              await this.renegotiate(false);
            }
          }
          break;
        case 'renegotiated':
          if (this.pc && this.pc.signalingState === 'have-local-offer') {
            await this.pc.setRemoteDescription({ type: 'answer', sdp: m.sdp });
          }
          await this.renegotiated();
          break;
        case 'answer':
          this.callId = m.call_id;
          this.resumeToken = m.resume_token || null;
          await this.pc.setRemoteDescription({ type: 'answer', sdp: m.sdp });
          break;
        case 'progress':
        case 'ringing':
          if (this.state === 'connecting') {
            this.setState('ringing');
          }
          break;
        case 'answered':
          this.watchQuality(this.pc);
          this.startedAt = Date.now();
          this.setState('in-call');
          this.timer = setInterval(() => this.paint({ state: 'in-call' }), 1000);
          break;
        case 'dtmf':
          this.emit('dtmf', { digit: m.digit });
          break;
        case 'transfer_progress':
          this.emit('transfer', { sipCode: m.sip_code });
          break;
        case 'ended': {
          let message = REASONS[m.reason] || 'Call ended';
          if (m.reason === 'hangup' && this.startedAt) {
            message = 'You hung up after ' + clock(Date.now() - this.startedAt);
          }
          this.cleanup();
          this.setState('ended', { reason: m.reason, sipCode: m.sip_code, message: message });
          break;
        }
        case 'error':
          if (this.state === 'connecting' && !this.callId) {
            this.fail(FAILURES[m.code] || 'The call could not start: ' + m.message);
          } else if (this.restarting && m.call_id === this.callId && ['bad_sdp', 'limit_reached'].includes(m.code)) {
            // The gateway kept the old path: so does the peer connection.
            this.restarting = false;
            if (this.pc && this.pc.signalingState === 'have-local-offer') {
              await this.pc.setLocalDescription({ type: 'rollback' });
            }
            this.renegotiationFailed(this.restartingIce, m.message, m.code);
            await this.renegotiated();
          } else {
            this.emit('error', { message: m.message, code: m.code });
          }
          break;
        default:
          break;
      }
    }

    async offer() {
      const pc = micConnection(this.mic, this.iceServers, this.iceTransportPolicy);
      this.pc = pc;
      pc.ontrack = (event) => {
        const stream = event.streams[0] || new MediaStream([event.track]);
        if (!this.audio) {
          this.audio = new Audio();
          this.audio.autoplay = true;
        }
        this.audio.srcObject = stream;
        this.audio.play().catch(() => {});
        this.emit('remotestream', stream);
      };
      // A network change (Wi-Fi to mobile, a VPN coming up) silences the old path: restart
      // ICE and carry on over a new one. The gateway waits some 30 s for it.
      pc.oniceconnectionstatechange = () => {
        if (this.pc === pc && ['disconnected', 'failed'].includes(pc.iceConnectionState)) {
          this.restartIce();
        }
      };
      pc.onconnectionstatechange = () => {
        if (pc.connectionState === 'failed' && this.pc === pc && this.restarts >= MAX_RESTARTS) {
          this.hangup();
          this.fail(REASONS.media_failed);
        }
      };
      this.restarts = 0;
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      this.send({ type: 'call', to: this.target, sdp: pc.localDescription.sdp });
    }

    /** Restarts ICE on the call (a new offer with new ICE credentials, `renegotiate`). */
    async restartIce() {
      const pc = this.pc;
      if (!pc || !this.callId || this.restarting || !['ringing', 'in-call'].includes(this.state)) {
        return;
      }
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN || this.restarts >= MAX_RESTARTS) {
        return;
      }
      this.restarts += 1;
      await this.renegotiate(true);
    }

    // Sends a new offer in `renegotiate`, one at a time (`restarting` until the answer): an
    // ICE restart, or, when the gateway asks (`renegotiation_needed`), the same path again
    // for the answer's new audio caps.
    async renegotiate(iceRestart) {
      const pc = this.pc;
      this.restarting = true;
      this.restartingIce = iceRestart;
      try {
        await pc.setLocalDescription(await pc.createOffer({ iceRestart: iceRestart }));
        await gathered(pc);
        this.send({ type: 'renegotiate', call_id: this.callId, sdp: pc.localDescription.sdp });
      } catch (e) {
        this.restarting = false;
        this.renegotiationFailed(iceRestart, iceRestart ? 'The audio path could not be renewed: ' + e.message : e.message);
      }
    }

    // A `renegotiate` came to an end, answered or refused: the next, if one was asked for
    // meanwhile, goes now.
    async renegotiated() {
      this.restarting = false;
      if (this.renegotiateAgain && this.pc) {
        this.renegotiateAgain = false;
        await this.renegotiate(false);
      }
    }

    // A failed ICE restart is the page's to hear of; a failed band renegotiation leaves the
    // wider audio, which still plays: nothing for the page.
    renegotiationFailed(iceRestart, message, code) {
      if (iceRestart) {
        this.emit('error', { message: message, code: code });
      } else {
        console.warn('gateway-call: the audio was not renegotiated: ' + message);
      }
    }

    hangup() {
      if (this.callId) {
        this.send({ type: 'hangup', call_id: this.callId });
      }
      if (['connecting', 'ringing', 'in-call', 'reconnecting'].includes(this.state)) {
        // The gateway answers with `ended`; if it cannot, end here after a moment.
        const ws = this.ws;
        setTimeout(() => {
          if (this.ws === ws && this.state !== 'ended') {
            this.cleanup();
            this.setState('ended', { reason: 'hangup', message: REASONS.hangup });
          }
        }, 2000);
        if (!this.callId) {
          this.cleanup();
          this.setState('ended', { reason: 'hangup', message: REASONS.hangup });
        }
      }
    }

    mute(on) {
      this.muted = on === undefined ? !this.muted : !!on;
      if (this.mic) {
        for (const track of this.mic.getAudioTracks()) {
          track.enabled = !this.muted;
        }
      }
      this.emit('muted', { muted: this.muted });
      this.paint({ state: this.state });
    }

    /** Blind transfer of the far end to a target name (or a number, if the token allows). */
    transfer(to) {
      if (this.state !== 'in-call' || !to) {
        return;
      }
      this.send({ type: 'transfer', call_id: this.callId, to: String(to) });
    }

    dtmf(digits) {
      digits = String(digits).toUpperCase().replace(/[^0-9*#A-D]/g, '');
      if (!digits || this.state !== 'in-call') {
        return;
      }
      const sender = this.pc && this.pc.getSenders().find((s) => s.track && s.track.kind === 'audio');
      if (sender && sender.dtmf && sender.dtmf.canInsertDTMF) {
        sender.dtmf.insertDTMF(digits, 100, 70);
      } else {
        this.send({ type: 'dtmf', call_id: this.callId, digits: digits });
      }
    }

    cleanup() {
      live.delete(this);
      this.restarting = false;
      this.renegotiateAgain = false;
      clearInterval(this.qualityTimer);
      this.poorReadings = 0;
      clearInterval(this.timer);
      this.timer = null;
      if (this.pc) {
        this.pc.close();
        this.pc = null;
      }
      if (this.mic) {
        for (const track of this.mic.getTracks()) {
          track.stop();
        }
        this.mic = null;
      }
      const ws = this.ws;
      this.ws = null;
      if (ws) {
        ws.close();
      }
      this.callId = null;
      this.resumeToken = null;
      this.muted = false;
    }

    // --- the user interface (inside a shadow root, so the page's styles do not leak in) ---

    render(container) {
      const host = document.createElement('div');
      host.className = 'gateway-call';
      if (container) {
        (typeof container === 'string' ? document.querySelector(container) : container).appendChild(host);
      } else if (script && script.parentNode) {
        script.parentNode.insertBefore(host, script.nextSibling);
      } else {
        document.body.appendChild(host);
      }
      const root = host.attachShadow({ mode: 'open' });
      root.innerHTML =
        '<style>' +
        ':host{all:initial;font:15px/1.4 system-ui,sans-serif;color:#1d2433}' +
        '.card{display:inline-flex;flex-direction:column;gap:10px;padding:14px 16px;border:1px solid #d5dae3;border-radius:14px;background:#fff;width:250px;box-shadow:0 2px 10px rgba(0,0,0,.06)}' +
        '.row{display:flex;gap:8px;align-items:center}' +
        'button{font:inherit;border:0;border-radius:999px;padding:9px 16px;cursor:pointer}' +
        '.call{background:#16a34a;color:#fff;font-weight:600;flex:1}' +
        '.call.hang{background:#dc2626}' +
        '.small{background:#eef1f6;color:#1d2433}' +
        '.small[aria-pressed=true]{background:#1d2433;color:#fff}' +
        '.status{font-weight:600}' +
        '.detail{color:#5b6475;font-size:13px;min-height:18px}' +
        '.keys{display:grid;grid-template-columns:repeat(3,52px);gap:6px}' +
        '.keys button{border-radius:10px;padding:8px 0;background:#eef1f6}' +
        '[hidden]{display:none!important}' +
        '</style>' +
        '<div class="card" part="card">' +
        '<div class="status" id="status" role="status" aria-live="polite">Ready to call</div>' +
        '<div class="detail" id="detail"></div>' +
        '<div class="row"><button class="call" id="call" type="button"></button>' +
        '<button class="small" id="mute" type="button" aria-pressed="false" hidden>Mute</button>' +
        '<button class="small" id="keypad" type="button" aria-pressed="false" hidden>Keypad</button></div>' +
        '<div class="keys" id="keys" hidden></div>' +
        '</div>';
      const $ = (id) => root.getElementById(id);
      this.ui = { status: $('status'), detail: $('detail'), call: $('call'), mute: $('mute'), keypad: $('keypad'), keys: $('keys') };
      for (const key of '123456789*0#') {
        const b = document.createElement('button');
        b.type = 'button';
        b.textContent = key;
        b.setAttribute('aria-label', 'Key ' + key);
        b.dataset.key = key;
        b.addEventListener('click', () => this.dtmf(key));
        this.ui.keys.appendChild(b);
      }
      this.ui.call.addEventListener('click', () => {
        if (['connecting', 'ringing', 'in-call', 'reconnecting'].includes(this.state)) {
          this.hangup();
        } else {
          this.call();
        }
      });
      this.ui.mute.addEventListener('click', () => this.mute());
      this.ui.keypad.addEventListener('click', () => {
        const open = this.ui.keys.hidden;
        this.ui.keys.hidden = !open;
        this.ui.keypad.setAttribute('aria-pressed', String(open));
      });
      this.paint({ state: 'idle' });
    }

    paint(detail) {
      if (!this.ui) {
        return;
      }
      const ui = this.ui;
      const active = ['connecting', 'ringing', 'in-call', 'reconnecting'].includes(this.state);
      ui.call.textContent = active ? 'Hang up' : this.label;
      ui.call.classList.toggle('hang', active);
      ui.call.setAttribute('aria-label', active ? 'Hang up' : this.label);
      ui.mute.hidden = this.state !== 'in-call';
      ui.keypad.hidden = this.state !== 'in-call';
      if (this.state !== 'in-call') {
        ui.keys.hidden = true;
        ui.keypad.setAttribute('aria-pressed', 'false');
      }
      ui.mute.textContent = this.muted ? 'Unmute' : 'Mute';
      ui.mute.setAttribute('aria-pressed', String(this.muted));
      ui.status.dataset.state = this.state;
      switch (this.state) {
        case 'idle':
          ui.status.textContent = 'Ready to call';
          ui.detail.textContent = '';
          break;
        case 'connecting':
          ui.status.textContent = 'Connecting…';
          ui.detail.textContent = '';
          break;
        case 'ringing':
          ui.status.textContent = 'Ringing…';
          break;
        case 'reconnecting':
          ui.status.textContent = 'Reconnecting…';
          ui.detail.textContent = 'The connection dropped; the call goes on.';
          break;
        case 'in-call': {
          ui.status.textContent = 'In call ' + clock(Date.now() - (this.startedAt || Date.now()));
          ui.detail.textContent = this.muted
            ? 'Your microphone is muted'
            : this.poorReadings >= 2
              ? 'Poor connection: the audio may break up'
              : '';
          break;
        }
        case 'ended':
          ui.status.textContent = 'Call ended';
          ui.detail.textContent = detail.message || REASONS[detail.reason] || '';
          break;
      }
    }
  }

  const api = {
    widgets: [],
    create: function (options) {
      const widget = new Widget(Object.assign({ container: null }, options || {}));
      api.widgets.push(widget);
      return widget;
    },
  };
  window.GatewayCall = window.GatewayCall || api;

  if (script && script.dataset.target !== undefined) {
    const d = script.dataset;
    const make = () =>
      window.GatewayCall.widgets.push(
        new Widget({
          scriptSrc: script.src,
          gateway: d.gateway,
          target: d.target,
          tokenUrl: d.tokenUrl,
          label: d.label,
          iceTransportPolicy: d.iceTransportPolicy,
          container: d.ui === 'none' ? null : d.container || undefined,
        })
      );
    if (document.readyState === 'loading' && d.container) {
      document.addEventListener('DOMContentLoaded', make);
    } else {
      make();
    }
  }
})();
