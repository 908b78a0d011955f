// End-to-end test of Berth's connect flow with real parts, all on loopback:
// - oidc-provider as the OAuth2 authorization server (code + PKCE, rotating
//   refresh tokens, short-lived access tokens), counting token requests;
// - the real `berth` binary (SQLite, or PostgreSQL with BERTH_TEST_BACKEND=postgres);
// - Debian's Chromium driven by playwright-core;
// - a host page on another origin using Vessel's own client packages
//   (@vesselapi/react-vessel-link, @vesselapi/client-sdk) and Berth's connect.js.
//
// Usage: node run.mjs   (BERTH_BIN, BERTH_TEST_BACKEND, BERTH_TEST_POSTGRES_URL)
// Screenshots of every step land in tests/e2e/artifacts/<backend>/.
import Provider from 'oidc-provider';
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const BIN = process.env.BERTH_BIN || path.join(ROOT, 'target/debug/berth');
const BACKEND = process.env.BERTH_TEST_BACKEND || 'sqlite';
const ART = path.join(HERE, 'artifacts', BACKEND);
const AT_TTL = 3; // seconds: short, so the test forces refreshes
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

fs.rmSync(ART, { recursive: true, force: true });
fs.mkdirSync(ART, { recursive: true });
const cleanups = [];
const log = (...a) => console.log(`[e2e ${BACKEND}]`, ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
    s.on('error', reject);
  });
}

// ---- the authorization server ------------------------------------------------

async function startOidc(port, redirectUris) {
  const issuer = `http://127.0.0.1:${port}`;
  const stats = { tokenPosts: 0, refreshOk: 0, codeOk: 0, grantErrors: 0, failTokens: false };
  const provider = new Provider(issuer, {
    clients: [{
      client_id: 'test-client',
      client_secret: 'test-secret',
      redirect_uris: redirectUris,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    pkce: { required: () => true },
    scopes: ['openid', 'offline_access', 'profile', 'email'],
    claims: { openid: ['sub'], email: ['email', 'email_verified'] },
    ttl: { AccessToken: AT_TTL, AuthorizationCode: 60, IdToken: 3600, RefreshToken: 86400, Interaction: 600, Session: 3600, Grant: 86400 },
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: true,
    clockTolerance: 0,
    cookies: { keys: ['e2e-cookie-key'] },
    features: { devInteractions: { enabled: true }, revocation: { enabled: true } },
    findAccount: async (ctx, sub) => ({ accountId: sub, async claims() { return { sub, email: `${sub}@example.test`, email_verified: true }; } }),
    loadExistingGrant: async (ctx) => {
      const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
      grant.addOIDCScope(ctx.oidc.params.scope || 'openid');
      grant.addOIDCClaims(['sub', 'email', 'email_verified']);
      await grant.save();
      return grant;
    },
  });
  provider.on('grant.success', (ctx) => {
    if (ctx.oidc.params.grant_type === 'refresh_token') stats.refreshOk++;
    if (ctx.oidc.params.grant_type === 'authorization_code') stats.codeOk++;
  });
  provider.on('grant.error', () => { stats.grantErrors++; });
  provider.use(async (ctx, next) => {
    if (ctx.path === '/token' && ctx.method === 'POST') {
      stats.tokenPosts++;
      if (stats.failTokens) {
        // Stands in for a revoked grant: what a provider says when the
        // end user removed the app.
        ctx.status = 400;
        ctx.body = { error: 'invalid_grant', error_description: 'grant request is invalid (revoked by the user)' };
        return;
      }
    }
    await next();
  });
  const server = provider.listen(port, '127.0.0.1');
  cleanups.push(() => server.close());
  return { issuer, stats };
}

// ---- Berth -------------------------------------------------------------------------

async function createDatabase() {
  if (BACKEND !== 'postgres') return null;
  const admin = process.env.BERTH_TEST_POSTGRES_URL;
  assert.ok(admin, 'BERTH_TEST_POSTGRES_URL must be set for the postgres backend');
  const name = `berth_e2e_${process.pid}_${Date.now()}`;
  execFileSync('psql', [admin, '-q', '-c', `CREATE DATABASE ${name}`]);
  return admin.replace(/\/[^/]*$/, `/${name}`);
}

async function startBerth({ port, dataDir, dbUrl, providersFile, configFile, name }) {
  const args = ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir,
    '--providers-file', providersFile, '--config', configFile];
  if (dbUrl) args.push('--database-url', dbUrl);
  const logFile = fs.createWriteStream(path.join(ART, `${name}.log`));
  const child = spawn(BIN, args, {
    env: { ...process.env, BERTH_LOG: 'info,berth=debug', BERTH_REFRESH_MARGIN_SECS: '1', E2E_OIDC_SECRET: 'test-secret' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stderr.pipe(logFile);
  let out = '';
  await new Promise((resolve, reject) => {
    child.stdout.on('data', (d) => { out += d; if (out.includes('Listening on')) resolve(); });
    child.on('exit', (code) => reject(new Error(`berth exited with ${code}; see ${name}.log`)));
  });
  cleanups.push(() => child.kill('SIGTERM'));
  const token = (out.match(/berth_dev_[A-Za-z0-9_-]+/) || [])[0];
  return { url: `http://127.0.0.1:${port}`, token, child };
}

async function call(base, p, headers = {}, body = {}) {
  const r = await fetch(base + p, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
  let json = null;
  try { json = await r.json(); } catch { /* not JSON */ }
  return { status: r.status, body: json };
}

// ---- the customer's app: another origin, with a backend holding the API token ----

function startHost(port, berth, apiToken) {
  const origin = `http://127.0.0.1:${port}`;
  const vendor = {
    // The package's UMD build expects Babel's regenerator global, which an
    // app bundler normally provides.
    '/vendor/regenerator.js': 'node_modules/regenerator-runtime/runtime.js',
    '/vendor/react.js': 'node_modules/react/umd/react.production.min.js',
    '/vendor/react-dom.js': 'node_modules/react-dom/umd/react-dom.production.min.js',
    '/vendor/vessel-link.js': 'node_modules/@vesselapi/react-vessel-link/dist/index.umd.js',
    '/vendor/client-sdk.js': 'node_modules/@vesselapi/client-sdk/dist/index.umd.js',
  };
  const page = (title, body) => `<!doctype html><html><head><meta charset="utf-8"><title>${title}</title></head>
<body><h1>${title}</h1>${body}<pre id="result"></pre>
<script>
async function show(r) { document.getElementById('result').textContent = JSON.stringify(await r.json()); }
function exchange(kind, token) {
  return fetch('/api/exchange-' + kind, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token }) }).then(show);
}
</script></body></html>`;
  const pages = {
    '/link.html': page('Vessel Link (react-vessel-link)', `<div id="root"></div>
<script src="/vendor/regenerator.js"></script><script src="/vendor/react.js"></script><script src="/vendor/react-dom.js"></script><script src="/vendor/vessel-link.js"></script>
<script>
const e = React.createElement;
function App() {
  return e(VesselLink.VesselConnectButton, {
    baseUrl: ${JSON.stringify(berth)},
    className: 'connect',
    getLinkToken: async () => (await (await fetch('/api/link-token', { method: 'POST' })).json()).linkToken,
    onSuccess: (publicToken) => exchange('public', publicToken),
    onLoad: () => { document.body.dataset.loaded = 'yes'; },
  }, 'Connect CRM');
}
ReactDOM.createRoot(document.getElementById('root')).render(e(App));
</script>`),
    '/sdk.html': page('Vessel client-sdk', `
<iframe id="__vessel-modal__" src="${berth}/modal/index.html" style="position:fixed;top:0;left:0;width:100vw;height:100vh;border:none;z-index:99999;display:none"></iframe>
<button id="connect">Connect sandbox</button>
<script src="/vendor/client-sdk.js"></script>
<script>
const vessel = VesselSDK.default({
  onSuccess: (sessionToken) => exchange('session', sessionToken),
  onLoad: () => { document.body.dataset.loaded = 'yes'; },
}, { baseUrl: ${JSON.stringify(berth)} });
document.getElementById('connect').onclick = () => vessel.open({
  integrationId: 'sandbox',
  getSessionToken: async () => (await (await fetch('/api/session-token?integrationId=sandbox', { method: 'POST' })).json()).sessionToken,
});
</script>`),
    '/berth.html': page('Berth connect.js', `<button id="connect">Connect Acme</button>
<script src="${berth}/connect.js"></script>
<script>
Berth.init({ onSuccess: (t) => exchange('session', t), onLoad: () => { document.body.dataset.loaded = 'yes'; } });
document.getElementById('connect').onclick = async () => {
  const t = (await (await fetch('/api/session-token?integrationId=acme-oidc', { method: 'POST' })).json()).sessionToken;
  Berth.open({ sessionToken: t });
};
</script>`),
  };
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, origin);
    try {
      if (vendor[url.pathname]) {
        res.writeHead(200, { 'content-type': 'text/javascript' });
        return res.end(fs.readFileSync(path.join(HERE, vendor[url.pathname])));
      }
      if (pages[url.pathname]) {
        res.writeHead(200, { 'content-type': 'text/html' });
        return res.end(pages[url.pathname]);
      }
      let body = '';
      for await (const c of req) body += c;
      const input = body ? JSON.parse(body) : {};
      let r;
      if (url.pathname === '/api/link-token') {
        r = await call(berth, '/link/token', { 'vessel-api-token': apiToken }, { allowedOrigins: [origin] });
        r = r.body;
      } else if (url.pathname === '/api/session-token') {
        r = await call(berth, '/auth/session-token', { 'x-vessel-api-token': apiToken },
          { integrationId: url.searchParams.get('integrationId'), allowedOrigins: [origin] });
        r = r.body.result;
      } else if (url.pathname === '/api/exchange-public') {
        r = (await call(berth, '/link/exchange', { 'vessel-api-token': apiToken }, { publicToken: input.token })).body;
      } else if (url.pathname === '/api/exchange-session') {
        r = (await call(berth, '/auth/access-token', { 'x-vessel-api-token': apiToken, 'x-vessel-session-token': input.token })).body;
      } else {
        res.writeHead(404); return res.end();
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(r));
    } catch (e) {
      res.writeHead(500); res.end(String(e));
    }
  });
  server.listen(port, '127.0.0.1');
  cleanups.push(() => server.close());
  return origin;
}

// ---- the run ---------------------------------------------------------------------------

async function main() {
  const [oidcPort, berthPort, berth2Port, hostPort] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  const berthUrl = `http://127.0.0.1:${berthPort}`;
  const oidc = await startOidc(oidcPort, [`${berthUrl}/auth/oauth-callback`]);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-e2e-'));
  cleanups.push(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const providersFile = path.join(tmp, 'providers.toml');
  fs.writeFileSync(providersFile, `
[integrations.acme-oidc]
name = "Acme OAuth"
category = "crm"
color = "#7C3AED"
base_url = "${oidc.issuer}"
[integrations.acme-oidc.auth.oauth2]
authorize_url = "${oidc.issuer}/auth"
token_url = "${oidc.issuer}/token"
scopes = ["openid", "email", "offline_access"]
pkce = true
token_auth = "basic"
attach = { header = "Authorization", value = "Bearer {{credential.accessToken}}" }
markdown = "Sign in at Acme (a local oidc-provider)."
`);
  const configFile = path.join(tmp, 'berth.toml');
  fs.writeFileSync(configFile, `[oauth_apps.acme-oidc]\nclient_id = "test-client"\nclient_secret_env = "E2E_OIDC_SECRET"\n`);
  const dbUrl = await createDatabase();
  const dataDir = path.join(tmp, 'data');
  const berth = await startBerth({ port: berthPort, dataDir, dbUrl, providersFile, configFile, name: 'berth' });
  assert.ok(berth.token, 'the first start prints a development token');
  const api = { 'x-vessel-api-token': berth.token };
  const hostOrigin = startHost(hostPort, berthUrl, berth.token);

  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pw-profile-'));
  cleanups.push(() => fs.rmSync(userDataDir, { recursive: true, force: true }));
  const ctx = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 900, height: 760 },
  });
  cleanups.unshift(() => ctx.close());
  ctx.setDefaultTimeout(20000);
  const page = ctx.pages()[0] ?? await ctx.newPage();
  const consoleLog = fs.createWriteStream(path.join(ART, 'browser-console.log'));
  page.on('console', (m) => consoleLog.write(`${m.type()}: ${m.text()}\n`));
  page.on('pageerror', (e) => consoleLog.write(`pageerror: ${e.message}\n`));
  let step = 0;
  const shot = async (p, name) => p.screenshot({ path: path.join(ART, `${String(++step).padStart(2, '0')}-${name}.png`) });

  try {
    // 1. Full page: picker, OAuth at the real authorization server, back.
    log('full-page OAuth flow');
    let st = (await call(berthUrl, '/auth/session-token', api, { externalUserId: 'user-1' })).body.result.sessionToken;
    await page.setViewportSize({ width: 390, height: 760 });
    await page.goto(`${berthUrl}/connect#token=${st}`);
    await page.getByRole('heading', { name: 'Choose an app to connect' }).waitFor();
    await shot(page, 'picker-phone');
    await page.setViewportSize({ width: 900, height: 760 });
    assert.ok(!page.url().includes(st), 'the session token leaves the address bar');
    await page.selectOption('#category', 'chat');
    assert.equal(await page.isVisible('button[data-integration="salesforce"]'), false, 'category filter hides CRMs');
    await page.selectOption('#category', '');
    await page.fill('#search', 'acme');
    await shot(page, 'picker-search');
    await page.keyboard.press('Tab'); // keyboard reachable
    await page.click('button[data-integration="acme-oidc"]');
    await page.getByRole('heading', { name: 'Connect Acme OAuth' }).waitFor();
    await shot(page, 'oauth-form');
    await page.click('#submit');
    await page.waitForSelector('input[name="login"]');
    assert.ok(page.url().startsWith(oidc.issuer), 'sent to the authorization server');
    await shot(page, 'provider-login');
    await page.fill('input[name="login"]', 'alice');
    await page.fill('input[name="password"]', 'x');
    await page.click('button[type="submit"]');
    await page.getByRole('heading', { name: 'Connected to Acme OAuth' }).waitFor();
    assert.ok(page.url().startsWith(`${berthUrl}/auth/oauth-callback`));
    await shot(page, 'oauth-connected');
    let ex = await call(berthUrl, '/auth/access-token', { ...api, 'x-vessel-session-token': st });
    assert.equal(ex.status, 200, JSON.stringify(ex.body));
    const { accessToken, connectionId } = ex.body.result;
    assert.equal(oidc.stats.codeOk, 1);

    // 2. The token works through passthrough; a replayed callback is refused.
    const me = () => call(berthUrl, '/passthrough', { ...api, 'x-vessel-access-token': accessToken }, { method: 'GET', path: '/me' });
    let r = await me();
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.result.sub, 'alice');

    // 3. Refresh race: the access token expires; 50 concurrent calls cause
    //    exactly one refresh request at the authorization server.
    log('refresh race (one process)');
    await sleep(AT_TTL * 1000);
    let before = oidc.stats.tokenPosts;
    let results = await Promise.all(Array.from({ length: 50 }, () => me()));
    assert.deepEqual(results.filter((x) => x.status !== 200), [], 'every call succeeds');
    assert.equal(oidc.stats.tokenPosts - before, 1, 'exactly one refresh request for 50 concurrent calls');
    assert.equal(oidc.stats.grantErrors, 0);
    log(`50 calls, ${oidc.stats.tokenPosts - before} refresh request`);

    // 4. Across processes (PostgreSQL): two Berth servers share the store.
    let me2 = me;
    if (BACKEND === 'postgres') {
      log('refresh race (two processes)');
      const berth2 = await startBerth({ port: berth2Port, dataDir, dbUrl, providersFile, configFile, name: 'berth2' });
      me2 = () => call(berth2.url, '/passthrough', { ...api, 'x-vessel-access-token': accessToken }, { method: 'GET', path: '/me' });
      await sleep(AT_TTL * 1000);
      before = oidc.stats.tokenPosts;
      results = await Promise.all(Array.from({ length: 50 }, (_, i) => (i % 2 ? me() : me2())));
      assert.deepEqual(results.filter((x) => x.status !== 200).map((x) => x.body), [], 'every call succeeds');
      assert.equal(oidc.stats.tokenPosts - before, 1, 'exactly one refresh request across two processes');
      assert.equal(oidc.stats.grantErrors, 0);
      log(`50 calls over 2 processes, ${oidc.stats.tokenPosts - before} refresh request`);
    }

    // 5. The provider refuses the refresh token: the connection needs
    //    re-authentication, visibly, and the modal re-authenticates it in place.
    log('invalid_grant and re-authentication');
    //    20 racing calls (over two processes on PostgreSQL) send the dead
    //    refresh token once; every one answers 409.
    oidc.stats.failTokens = true;
    await sleep(AT_TTL * 1000);
    before = oidc.stats.tokenPosts;
    results = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? me() : me2())));
    assert.deepEqual(results.filter((x) => x.status !== 409).map((x) => [x.status, x.body]), [], 'every racing call answers 409');
    assert.ok(results.every((x) => x.body.error.code === 'CONNECTION_NEEDS_REAUTH'));
    assert.equal(oidc.stats.tokenPosts - before, 1, 'exactly one refused refresh request for 20 racing calls');
    log(`20 racing calls, ${oidc.stats.tokenPosts - before} refused refresh request`);
    r = await me();
    assert.equal(r.status, 409, JSON.stringify(r.body));
    assert.equal(r.body.error.code, 'CONNECTION_NEEDS_REAUTH');
    assert.equal(oidc.stats.tokenPosts - before, 1, 'a later call does not try again');
    let c = (await call(berthUrl, '/connections/find', api, { id: connectionId })).body.result.connection;
    assert.equal(c.authState, 'needs_reauth');
    assert.match(c.authError, /invalid_grant/);
    oidc.stats.failTokens = false;
    st = (await call(berthUrl, '/auth/session-token', api, { connectionId })).body.result.sessionToken;
    await page.goto(`${berthUrl}/connect#token=${st}`);
    await page.getByRole('heading', { name: 'Connect Acme OAuth' }).waitFor();
    await page.click('#submit');
    const login = page.locator('input[name="login"]');
    const done = page.getByRole('heading', { name: 'Connected to Acme OAuth' });
    await Promise.race([login.waitFor(), done.waitFor()]);
    if (await login.isVisible()) {
      await login.fill('alice');
      await page.fill('input[name="password"]', 'x');
      await page.click('button[type="submit"]');
    }
    await done.waitFor();
    await shot(page, 'reauthorized');
    c = (await call(berthUrl, '/connections/find', api, { id: connectionId })).body.result.connection;
    assert.equal(c.authState, 'ok');
    ex = await call(berthUrl, '/auth/access-token', { ...api, 'x-vessel-session-token': st });
    assert.equal(ex.body.result.connectionId, connectionId, 'same connection id');
    r = await call(berthUrl, '/passthrough', { ...api, 'x-vessel-access-token': ex.body.result.accessToken }, { method: 'GET', path: '/me' });
    assert.equal(r.status, 200, JSON.stringify(r.body));

    // 6. Berth's connect.js in an iframe on another origin, OAuth in a popup.
    log('connect.js modal with OAuth popup');
    await page.goto(`${hostOrigin}/berth.html`);
    await page.waitForSelector('body[data-loaded="yes"]');
    await page.click('#connect');
    const modal = page.frameLocator('#__vessel-modal__');
    await modal.getByRole('heading', { name: 'Connect Acme OAuth' }).waitFor();
    await shot(page, 'iframe-oauth-form');
    const [popup] = await Promise.all([ctx.waitForEvent('page'), modal.locator('#submit').click()]);
    const popupLogin = popup.locator('input[name="login"]');
    // The authorization server may remember alice's session and redirect
    // straight back, so the popup can close before a login form shows.
    const closed = popup.isClosed() ? Promise.resolve() : popup.waitForEvent('close').catch(() => {});
    await Promise.race([popupLogin.waitFor().catch(() => {}), closed]);
    if (!popup.isClosed() && await popupLogin.isVisible().catch(() => false)) {
      await popupLogin.fill('bob');
      await popup.fill('input[name="password"]', 'x');
      await popup.click('button[type="submit"]');
    }
    await page.waitForFunction(() => document.getElementById('result').textContent.includes('accessToken'));
    await shot(page, 'iframe-oauth-done');
    let result = JSON.parse(await page.textContent('#result'));
    assert.match(result.result.connectionId, /^v_connection_development_acme-oidc_/);

    // 7. @vesselapi/react-vessel-link, unmodified, with baseUrl = Berth: the
    //    sandbox with an API key, ending in onSuccess(publicToken) + /link/exchange.
    log('react-vessel-link');
    await page.goto(`${hostOrigin}/link.html`);
    await page.waitForSelector('body[data-loaded="yes"]');
    await page.click('button.connect');
    await modal.getByRole('heading', { name: 'Choose an app to connect' }).waitFor();
    await shot(page, 'vessel-link-picker');
    await modal.locator('#search').fill('sandbox');
    await modal.locator('button[data-integration="sandbox"]').click();
    await modal.locator('#q-api-key').fill('demo-key-1');
    await modal.locator('#submit').click();
    await page.waitForFunction(() => document.getElementById('result').textContent.includes('accessToken'));
    await shot(page, 'vessel-link-done');
    result = JSON.parse(await page.textContent('#result'));
    assert.match(result.connectionId, /^v_connection_development_sandbox_/);
    assert.equal(result.integrationId, 'sandbox');

    // 8. @vesselapi/client-sdk, unmodified (pre-created iframe): invalid
    //    credentials show the provider's reason, then a good key connects.
    log('client-sdk');
    await page.goto(`${hostOrigin}/sdk.html`);
    // The page pre-creates the iframe, so the modal may announce itself
    // before the SDK listens (onLoad is then not called; open() still
    // works). Wait for the modal itself instead.
    await modal.locator('body[data-ready="yes"]').waitFor({ state: 'attached' });
    await page.click('#connect');
    await modal.getByRole('heading', { name: /Connect Berth Sandbox/ }).waitFor();
    await modal.locator('#q-api-key').fill('invalid-key');
    await modal.locator('#submit').click();
    await modal.locator('#form-error').waitFor();
    assert.match(await modal.locator('#form-error').textContent(), /rejected/);
    await shot(page, 'client-sdk-invalid-credentials');
    await modal.locator('#q-api-key').fill('demo-key-2');
    await modal.locator('#submit').click();
    await page.waitForFunction(() => document.getElementById('result').textContent.includes('accessToken'));
    await shot(page, 'client-sdk-done');
    result = JSON.parse(await page.textContent('#result'));
    assert.match(result.result.connectionId, /^v_connection_development_sandbox_/);

    // 9. A session that names allowed origins refuses other pages.
    log('allowed origins');
    const other = await call(berthUrl, '/auth/session-token', api, { allowedOrigins: ['https://app.example.com'] });
    r = await fetch(`${berthUrl}/integrations/find`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-vessel-session-token': other.body.result.sessionToken, origin: hostOrigin },
      body: '{"id":"sandbox"}',
    });
    assert.equal(r.status, 403);
    log('all passed');
  } catch (e) {
    await shot(page, 'failure').catch(() => {});
    throw e;
  }
}

try {
  await main();
} catch (e) {
  console.error(e);
  process.exitCode = 1;
} finally {
  for (const f of cleanups) { try { await f(); } catch { /* best effort */ } }
  // oidc-provider keeps timers alive; the run is over.
  setTimeout(() => process.exit(process.exitCode ?? 0), 200).unref();
}
