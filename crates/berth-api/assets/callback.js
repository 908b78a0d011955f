// The OAuth callback page: tell the connect modal (our opener, same origin)
// that the round trip is over, then close if it worked. The modal reads the
// outcome from Berth itself; this message carries no data.
(function () {
  'use strict';
  var card = document.getElementById('result');
  var ok = card.getAttribute('data-ok') === 'true';
  document.getElementById('title').focus();
  document.getElementById('close-window').addEventListener('click', function () { window.close(); });
  if (window.opener && !window.opener.closed) {
    try { window.opener.postMessage({ berth: 'oauth-finished', ok: ok }, window.location.origin); } catch (e) { /* opener navigated away */ }
    if (ok) setTimeout(function () { window.close(); }, 800);
  }
})();
