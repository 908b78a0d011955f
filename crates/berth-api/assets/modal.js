// Berth's connect modal. Runs in an iframe (mode "iframe": Vessel client-sdk,
// Berth's connect.js / init.js) or as a full page (mode "page": a shareable
// link `/connect#token=<session token>`).
//
// Messages to the host page go only to the origin that started the flow,
// checked against the session's allowed origins; never to "*".
(function () {
  'use strict';
  var root = document.getElementById('berth-connect');
  var MODE = root.getAttribute('data-mode');
  var $ = function (id) { return document.getElementById(id); };

  var token = null;        // session or link token
  var host = null;         // origin allowed to receive results (iframe mode)
  var session = null;      // /auth/session-status result
  var integration = null;  // /integrations/find result
  var auth = null;         // chosen auth method
  var wantedAuth = null, oauthAppId = null;
  var pollTimer = null, baselineError = null, oauthUrl = null, finished = false;

  function show(name) {
    var sections = document.querySelectorAll('section[data-screen]');
    for (var i = 0; i < sections.length; i++) {
      sections[i].hidden = sections[i].getAttribute('data-screen') !== name;
    }
    $('back').hidden = !(name === 'form' && session && !session.integrationId && !fixedIntegration);
    var active = document.querySelector('section[data-screen="' + name + '"]');
    var focus = active && (active.querySelector('input, select') || active.querySelector('h1'));
    if (focus) focus.focus();
  }

  function stopPolling() { if (pollTimer) { clearInterval(pollTimer); pollTimer = null; } }

  function api(path, body) {
    return fetch(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-vessel-session-token': token || '' },
      body: JSON.stringify(body || {})
    }).then(function (r) {
      return r.json().catch(function () { return { error: { message: 'Berth answered HTTP ' + r.status } }; })
        .then(function (j) {
          if (!r.ok || j.error) {
            var e = new Error((j.error && j.error.message) || ('HTTP ' + r.status));
            e.code = j.error && j.error.code;
            throw e;
          }
          return j.result;
        });
    });
  }

  function post(msg) {
    if (MODE === 'iframe' && host) window.parent.postMessage(msg, host);
  }

  function fail(message, retry) {
    stopPolling();
    $('failure-text').textContent = message;
    $('retry').hidden = !retry;
    show('failure');
  }

  function sessionError(e) {
    if (e.code === 'SESSION_EXPIRED') return 'This connect link has expired. Ask the app for a new one.';
    if (e.code === 'INVALID_SESSION_TOKEN') return 'This connect link is not valid. Ask the app for a new one.';
    return e.message;
  }

  // ---- start ---------------------------------------------------------------

  var fixedIntegration = null;

  function begin(opts) {
    finished = false;
    stopPolling();
    if (!token) return fail('No session token was given to the connect window.');
    show('loading');
    wantedAuth = opts.authType || null;
    oauthAppId = opts.oauthAppId || null;
    api('/auth/session-status').then(function (s) {
      session = s;
      if (MODE === 'iframe' && s.allowedOrigins.length && s.allowedOrigins.indexOf(host) < 0) {
        var bad = host;
        host = null; // nothing more goes to that page
        return fail('This page (' + bad + ') is not allowed to use this connect session.');
      }
      if (s.state !== 'created') {
        return fail('This connect session already finished. Ask the app for a new one to connect again.');
      }
      fixedIntegration = s.integrationId || opts.integrationId || null;
      if (fixedIntegration) return pick(fixedIntegration);
      show('picker');
    }, function (e) { fail(sessionError(e)); });
  }

  // ---- picker --------------------------------------------------------------

  function filterApps() {
    var q = $('search').value.trim().toLowerCase();
    var cat = $('category').value;
    var items = $('apps').children, shown = 0;
    for (var i = 0; i < items.length; i++) {
      var li = items[i];
      var ok = li.getAttribute('data-name').indexOf(q) >= 0 &&
        (!cat || (' ' + li.getAttribute('data-categories') + ' ').indexOf(' ' + cat + ' ') >= 0);
      li.hidden = !ok;
      if (ok) shown++;
    }
    $('no-match').hidden = shown > 0;
  }
  $('search').addEventListener('input', filterApps);
  $('category').addEventListener('change', filterApps);
  $('apps').addEventListener('click', function (e) {
    var b = e.target.closest('button[data-integration]');
    if (b) pick(b.getAttribute('data-integration'));
  });
  $('back').addEventListener('click', function () { show('picker'); });

  // ---- form ----------------------------------------------------------------

  var METHOD_LABELS = { oauth2: 'Sign in', apiKey: 'API key', basic: 'Username and password', 'oauth2-client-credentials': 'Client credentials' };

  function pick(id) {
    show('loading');
    api('/integrations/find', { id: id }).then(function (r) {
      integration = r.integration;
      var methods = integration.auth || [];
      auth = methods.filter(function (a) { return a.type === wantedAuth; })[0] ||
        methods.filter(function (a) { return a.default; })[0] || methods[0];
      renderForm();
      show('form');
    }, function (e) { fail(sessionError(e), false); });
  }

  function renderForm() {
    $('form-title').textContent = 'Connect ' + integration.display.name;
    $('form-icon').src = '/icons/' + encodeURIComponent(integration.id) + '.svg';
    var methods = $('methods');
    methods.textContent = '';
    methods.hidden = integration.auth.length < 2;
    integration.auth.forEach(function (a) {
      var b = document.createElement('button');
      b.type = 'button';
      b.setAttribute('role', 'radio');
      b.setAttribute('aria-checked', String(a === auth));
      b.textContent = METHOD_LABELS[a.type] || a.type;
      b.addEventListener('click', function () { auth = a; renderForm(); });
      methods.appendChild(b);
    });
    $('form-help').textContent = (auth.display && auth.display.markdown || '').replace(/\*\*|\*|`/g, '');
    var qs = $('questions');
    qs.textContent = '';
    (auth.questions || []).forEach(function (q) {
      var wrap = document.createElement('div');
      wrap.className = 'field';
      var label = document.createElement('label');
      label.htmlFor = 'q-' + q.id;
      label.textContent = q.label + (q.required ? '' : ' (optional)');
      var input;
      if (q.type === 'select') {
        input = document.createElement('select');
        (q.options || []).forEach(function (o) {
          var opt = document.createElement('option');
          opt.value = o.value; opt.textContent = o.label;
          if (o.default) opt.selected = true;
          input.appendChild(opt);
        });
      } else {
        input = document.createElement('input');
        input.type = q.format === 'password' ? 'password' : (q.format === 'url' ? 'url' : 'text');
        input.autocomplete = 'off';
        input.spellcheck = false;
        if (q.default) input.value = q.default;
      }
      input.id = 'q-' + q.id;
      input.name = q.id;
      if (q.required) input.required = true;
      wrap.appendChild(label);
      wrap.appendChild(input);
      qs.appendChild(wrap);
    });
    $('submit').textContent = auth.type === 'oauth2' ? 'Continue to ' + integration.display.name : 'Connect';
    $('submit').disabled = false;
    $('form-error').hidden = true;
  }

  $('form').addEventListener('submit', function (e) {
    e.preventDefault();
    var answers = {}, missing = [];
    (auth.questions || []).forEach(function (q) {
      var v = $('q-' + q.id).value.trim();
      if (v) answers[q.id] = v; else if (q.required) missing.push(q.label);
    });
    if (missing.length) return formError('Please fill in: ' + missing.join(', ') + '.');
    $('submit').disabled = true;
    // Open the popup inside the click so browsers allow it; it is pointed
    // at the provider once Berth answers.
    var popup = null;
    if (auth.type === 'oauth2' && MODE === 'iframe') popup = window.open('', 'berth-oauth', 'width=520,height=700');
    api('/auth/start', {
      integrationId: integration.id,
      authType: auth.type,
      oauthAppId: auth.type === 'oauth2' ? oauthAppId : null,
      answers: answers
    }).then(function (r) {
      if (r.oauthURL) return oauth(r.oauthURL, popup);
      if (popup) popup.close();
      success(r.publicToken);
    }, function (err) {
      if (popup) popup.close();
      $('submit').disabled = false;
      formError(err.message);
    });
  });

  function formError(m) {
    var el = $('form-error');
    el.textContent = m;
    el.hidden = false;
    el.focus && el.focus();
  }

  // ---- OAuth hand-off ------------------------------------------------------

  function oauth(url, popup) {
    oauthUrl = url;
    if (MODE === 'page') {
      // Same tab: the callback page shows the result.
      window.location.assign(url);
      return;
    }
    baselineError = session.lastError || null;
    if (popup && !popup.closed) popup.location.href = url;
    else window.open(url, 'berth-oauth', 'width=520,height=700');
    $('popup-link').href = url;
    show('waiting');
    pollTimer = setInterval(poll, 1000);
  }

  $('popup-link').addEventListener('click', function (e) {
    e.preventDefault();
    if (oauthUrl) window.open(oauthUrl, 'berth-oauth', 'width=520,height=700');
  });

  function poll() {
    api('/auth/session-status').then(function (s) {
      if (finished) return;
      if (s.state !== 'created') return success(s.publicToken);
      if (s.lastError && s.lastError !== baselineError) {
        session = s;
        fail(s.lastError, true);
      }
    }, function (e) { fail(sessionError(e)); });
  }

  // The callback page pings its opener (same origin) when it is done.
  window.addEventListener('message', function (e) {
    if (e.origin === window.location.origin && e.data && e.data.berth === 'oauth-finished' && pollTimer) poll();
  });

  // ---- outcome -------------------------------------------------------------

  function success(publicToken) {
    if (finished) return;
    finished = true;
    stopPolling();
    $('success-title').textContent = 'Connected to ' + integration.display.name;
    show('success');
    post({ messageType: '_vessel_send_token_', sessionToken: token, publicToken: publicToken || null });
  }

  $('retry').addEventListener('click', function () {
    if (integration) { renderForm(); show('form'); } else begin({});
  });

  function close() {
    stopPolling();
    if (MODE === 'iframe') post({ messageType: '_vessel_close_connect_' });
    else { fail('You closed the connect window. You can close this tab.'); }
  }
  $('close').addEventListener('click', close);
  $('done').addEventListener('click', function () {
    if (MODE === 'iframe') post({ messageType: '_vessel_close_connect_' });
    else window.close();
  });
  document.addEventListener('keydown', function (e) { if (e.key === 'Escape') close(); });

  // ---- wiring ----------------------------------------------------------------

  if (MODE === 'iframe') {
    var parentOrigin = (window.location.ancestorOrigins && window.location.ancestorOrigins[0]) ||
      (document.referrer ? new URL(document.referrer).origin : null);
    window.addEventListener('message', function (e) {
      if (e.source !== window.parent) return;
      var d = e.data || {};
      if (d.messageType !== '_vessel_start_modal_flow_') return;
      var p = d.payload || {};
      host = e.origin;
      token = p.sessionToken || p.linkToken || null;
      begin({
        integrationId: (p.integration && p.integration.id) || p.integrationId,
        authType: (p.auth && p.auth.type) || p.authType,
        oauthAppId: p.oauthAppId
      });
    });
    show('loading');
    document.body.setAttribute('data-ready', 'yes');
    // Carries no secret, so the referrer's origin is enough to address it.
    if (parentOrigin && parentOrigin !== 'null') {
      window.parent.postMessage({ messageType: '_vessel_modal_ready_' }, parentOrigin);
    }
  } else {
    var params = new URLSearchParams(window.location.hash.slice(1));
    token = params.get('token') || params.get('session');
    // Keep the token out of the address bar and history.
    if (token) history.replaceState(null, '', window.location.pathname);
    begin({ integrationId: params.get('integrationId') });
  }
})();
