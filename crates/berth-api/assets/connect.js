// Berth connect: opens Berth's connect modal in an iframe on your page.
// Served as /connect.js and as /init.js (what @vesselapi/react-vessel-link
// loads from its `baseUrl`). Defines two globals with the same engine:
//
//   window.Vessel = { init(config), open({ linkToken, integrationId? }), state: { isLoaded } }
//       v1 link flow: config.onSuccess(publicToken) -> exchange at POST /link/exchange.
//   window.Berth  = { init(config), open({ sessionToken | linkToken, integrationId? }), connectUrl(token) }
//       config.onSuccess(token): the session token (exchange at POST /auth/access-token)
//       or, for a link token, the public token (exchange at POST /link/exchange).
//
// Messages go only to Berth's origin (the modal), never to "*".
(function () {
  'use strict';
  if (window.Berth && window.Berth.__berth) return;
  var script = document.currentScript;
  var BASE = script && script.src ? new URL(script.src, window.location.href).origin : window.location.origin;
  var MODAL_ID = '__vessel-modal__';
  var config = {};
  var iframe = null, pending = null, lastKind = 'session';
  var state = { isLoaded: false };

  function ensureIframe() {
    iframe = document.getElementById(MODAL_ID);
    if (iframe) return iframe;
    iframe = document.createElement('iframe');
    iframe.id = MODAL_ID;
    iframe.title = 'Connect an account';
    iframe.src = BASE + '/modal/index.html';
    iframe.setAttribute('allow', 'clipboard-write');
    iframe.style.cssText = 'position:fixed;top:0;left:0;width:100vw;height:100vh;border:none;z-index:99999;display:none;background:transparent;';
    document.body.appendChild(iframe);
    return iframe;
  }

  function hide() { if (iframe) iframe.style.display = 'none'; }

  function send(msg) { iframe.contentWindow.postMessage(msg, BASE); }

  window.addEventListener('message', function (e) {
    if (e.origin !== BASE || !iframe || e.source !== iframe.contentWindow) return;
    var d = e.data || {};
    switch (d.messageType) {
      case '_vessel_modal_ready_':
        var first = !state.isLoaded;
        state.isLoaded = true;
        if (pending) { send(pending); pending = null; }
        if (first && config.onLoad) config.onLoad();
        break;
      case '_vessel_send_token_':
        hide();
        if (config.onSuccess) config.onSuccess(lastKind === 'link' ? d.publicToken : d.sessionToken);
        break;
      case '_vessel_close_connect_':
        hide();
        if (config.onClose) config.onClose();
        break;
    }
  });

  function init(options) {
    config = options || {};
    if (document.body) ensureIframe();
    else document.addEventListener('DOMContentLoaded', ensureIframe);
  }

  function open(opts) {
    opts = opts || {};
    var token = opts.sessionToken || opts.linkToken;
    if (!token) { console.error('Berth: open() needs a sessionToken or linkToken'); return; }
    lastKind = opts.linkToken && !opts.sessionToken ? 'link' : 'session';
    ensureIframe();
    var msg = { messageType: '_vessel_start_modal_flow_', payload: { sessionToken: token, integrationId: opts.integrationId || null } };
    iframe.style.display = 'block';
    if (state.isLoaded) send(msg); else pending = msg;
  }

  function openLink(opts) {
    if (!state.isLoaded) { console.error('Vessel has not been loaded, did you call Vessel.init()?'); return; }
    open({ linkToken: opts && opts.linkToken, integrationId: opts && opts.integrationId });
  }

  window.Berth = {
    __berth: true,
    init: init,
    open: open,
    state: state,
    connectUrl: function (token, integrationId) {
      return BASE + '/connect#token=' + encodeURIComponent(token) + (integrationId ? '&integrationId=' + encodeURIComponent(integrationId) : '');
    }
  };
  window.Vessel = { init: init, open: openLink, state: state };
})();
