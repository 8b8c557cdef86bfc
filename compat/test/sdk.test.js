// The official Douyin open-API SDK for Node.js, unmodified, against tptoken
// standing in for the platform's hosts (compat/run.sh starts it, in a private
// network namespace whose /etc/hosts sends those hosts to 127.0.0.1).
//
// The SDK is used as a legacy app would use it: the authorizer appid goes
// where the token used to go; tptoken replaces it with the real token. The
// only thing changed from the SDK's defaults is public and documented:
// setRuntimeOptions({ignoreSSL: false}), because the SDK turns TLS
// verification off by default. Caddy's root certificate is trusted through
// NODE_EXTRA_CA_CERTS, nothing else.
'use strict';

const { test, before } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const dns = require('node:dns').promises;
const http = require('node:http');
const path = require('node:path');
const fs = require('node:fs');
const { spawnSync } = require('node:child_process');

const sdk = require('@open-dy/open_api_sdk');
const Client = sdk.default;

// compat/Caddyfile: the emulators (one per TP) and the authorizers they know.
const EMU_V1 = 'http://127.0.0.1:9101';
const EMU_V2 = 'http://127.0.0.1:9102';
const TP1 = 'tt0000compatv1';
const TP2 = 'tt0000compatv2';
const V1_APP = 'tt0000v1app01';
const V1_REPLAY = 'tt0000v1app02';
const V2_APP = 'tt0000v2app01'; // the only appid allowed on /api/apps/v1/capacity/*
const V2_CONCURRENT = 'tt0000v2app02';
const V2_UNAUTHORIZED = 'tt0000v2app03';
const V2_REPLAY = 'tt0000v2app04';
// compat/run.sh: where the platform's hosts resolve inside the namespace.
const PLATFORM_HOSTS = {
	'open.douyin.com': '127.0.0.1', 'open.microapp.bytedance.com': '127.0.0.1', 'webcast.bytedance.com': '127.0.0.1',
	'minigame.zijieapi.com': '127.0.0.1', 'developer.toutiao.com': '127.0.0.2',
};

// client is the SDK's client with TLS verification on (its default is off).
function client() {
	const c = new Client({ clientKey: 'unused-by-the-api-methods', clientSecret: 'unused' });
	c.setRuntimeOptions(new sdk.RuntimeOptions({
		readTimeout: 5000, connectTimeout: 1000, autoretry: true, maxAttempts: 3, // the SDK's defaults
		ignoreSSL: false,
	}));
	return c;
}

// emu calls an emulator's control surface (/_emulator/...) on loopback.
function emu(base, method, path, body) {
	return new Promise((resolve, reject) => {
		const req = http.request(base + '/_emulator/' + path, { method }, (res) => {
			let text = '';
			res.setEncoding('utf8');
			res.on('data', (c) => { text += c; });
			res.on('end', () => {
				if (res.statusCode !== 200) {
					reject(new Error(`${method} ${path}: HTTP ${res.statusCode}: ${text}`));
					return;
				}
				resolve(JSON.parse(text));
			});
		});
		req.on('error', reject);
		req.end(body === undefined ? undefined : JSON.stringify(body));
	});
}

// calls returns what the emulator's APIs received since the last clearCalls.
async function calls(base) { return (await emu(base, 'GET', 'calls')).calls; }
async function clearCalls(base) { await emu(base, 'DELETE', 'calls'); }
async function stats(base, appid) { return (await emu(base, 'GET', 'stats')).per_appid[appid] || {}; }

// onlyCall is the one API call the emulator received since clearCalls.
async function onlyCall(base) {
	const cs = await calls(base);
	assert.equal(cs.length, 1, JSON.stringify(cs));
	return cs[0];
}

// assertFields checks the fields of got that want names.
function assertFields(got, want) {
	assert.deepEqual(Object.fromEntries(Object.keys(want).map((k) => [k, got[k]])), want);
}

const sha256 = (s) => crypto.createHash('sha256').update(s).digest('hex');
// fingerprint is how tptoken names a value it cannot confirm as an appid: it
// may be a token (the first 16 hex digits of its SHA-256).
const fingerprint = (s) => sha256(s).slice(0, 16);

function templateList(appid) {
	return client().templateList(new sdk.TemplateListRequest({ accessToken: appid, pageNumber: '1', pageSize: '10' }));
}

// The JSON body qrcodeCreate sends for these fields (the SDK writes its fields
// in alphabetical order and leaves unset ones out).
const QRCODE = { appName: 'douyin', path: 'pages/index?from=compat', width: 430 };
const QRCODE_BODY = JSON.stringify({ app_name: 'douyin', path: 'pages/index?from=compat', width: 430 });

function qrcodeCreate(appid) {
	return client().qrcodeCreate(new sdk.QrcodeCreateRequest({ accessToken: appid, ...QRCODE }));
}

function common(req) {
	return client().commonOpenAPI(new sdk.CommonRequest({ header: {}, query: {}, ...req }));
}

// Ready once the emulators have pushed their tickets and authorizations and
// tptoken has exchanged the codes: a call for each family gets through.
before(async () => {
	const deadline = Date.now() + 30_000;
	for (;;) {
		try {
			await templateList(V2_APP);
			const v1 = await common({ host: 'open.microapp.bytedance.com', path: '/openapi/v1/microapp/app/info', method: 'GET',
				query: { authorizer_access_token: V1_APP } });
			if (v1.errno === 0) return;
			throw new Error(JSON.stringify(v1));
		} catch (err) {
			if (Date.now() > deadline) throw new Error(`tptoken not ready after 30 s: ${err.message}`);
			await new Promise((r) => setTimeout(r, 250));
		}
	}
});

test('the platform hosts resolve to the sidecar, by /etc/hosts alone', async () => {
	for (const [h, ip] of Object.entries(PLATFORM_HOSTS)) {
		assert.deepEqual(await dns.lookup(h, { all: true }), [{ address: ip, family: 4 }], h);
	}
});

test('a typed v2 GET method sends the appid as its token and gets the appid\'s real token injected', async () => {
	await clearCalls(EMU_V2);
	const res = await templateList(V2_APP);
	assert.equal(res.errNo, 0);
	// appid: the token that reached the platform is the authorizer's; token_carriers: one token, where v2 takes it.
	assertFields(await onlyCall(EMU_V2), {
		code: 0, host: 'open.douyin.com', method: 'GET', path: '/api/apps/v1/template/list/',
		query: 'page_number=1&page_size=10', appid: V2_APP, token_carriers: { 'header:access-token': 1 },
	});
});

test('a typed v2 POST-JSON method gets its body through unchanged', async () => {
	await clearCalls(EMU_V2);
	const res = await qrcodeCreate(V2_APP);
	assert.equal(res.errNo, 0);
	assertFields(await onlyCall(EMU_V2), {
		code: 0, method: 'POST', path: '/api/apps/v1/qrcode/create/', appid: V2_APP,
		body_sha256: sha256(QRCODE_BODY), token_carriers: { 'header:access-token': 1 },
	});
});

// Caddy drops request headers with an underscore unless its server lists them
// in expected_underscore_headers, which then drops access-token on that server:
// compat/Caddyfile gives developer.toutiao.com a server of its own.
test('a developer.toutiao.com method sends its token in header access_token, which its own Caddy server lets through', async () => {
	await clearCalls(EMU_V2);
	// Its answer model has no err_no field (the SDK checks err_no before casting): success is not throwing.
	await client().entityGetBasicAuth(new sdk.EntityGetBasicAuthRequest({ accessToken: V2_APP, entityId: 'e1' }));
	// token_carriers: the appid's carrier is gone, the token injected.
	assertFields(await onlyCall(EMU_V2), {
		code: 0, host: 'developer.toutiao.com', path: '/auth/entity/get_basic_auth', appid: V2_APP,
		token_carriers: { 'header:access-token': 1 },
	});
});

test('a v1 call through commonOpenAPI sends the appid in authorizer_access_token and gets the real token', async () => {
	const res = await common({ host: 'open.microapp.bytedance.com', path: '/openapi/v1/microapp/app/info', method: 'GET',
		query: { authorizer_access_token: V1_APP, hello: 'world' } });
	assert.equal(res.errno, 0, JSON.stringify(res));
	assert.equal(res.data.appid, V1_APP);
	assert.equal(res.data.family, 'v1');
	const q = new URLSearchParams(res.data.query);
	assert.equal(q.get('hello'), 'world');
	assert.equal(q.get('component_appid'), TP1);
	assert.deepEqual(q.getAll('authorizer_access_token'), ['***']);
});

test('a TP-level call through commonOpenAPI gets the component token (v2 and v1)', async () => {
	const v2 = await common({ host: 'open.douyin.com', path: '/api/tpapp/v2/auth/get_auth_app_list/', method: 'GET',
		header: { 'access-token': TP2 }, query: { page: '1', size: '50' } });
	assert.equal(v2.err_no, 0, JSON.stringify(v2));
	assert.ok(v2.data.auth_app_list.some((a) => a.auth_appid === V2_APP), JSON.stringify(v2.data));

	const v1 = await common({ host: 'open.microapp.bytedance.com', path: '/openapi/v1/tp/auth_app_list', method: 'GET',
		query: { component_access_token: TP1, page: '1', size: '50' } });
	assert.equal(v1.errno, 0, JSON.stringify(v1));
	assert.ok(v1.data.authAppList.some((a) => a.authAppId === V1_APP), JSON.stringify(v1.data));
});

test('a stale token is replaced: the platform says expired, tptoken refreshes and replays the POST once', async () => {
	await templateList(V2_REPLAY); // tptoken holds a token for it now
	const before = await stats(EMU_V2, V2_REPLAY);
	await emu(EMU_V2, 'POST', 'expire', { appid: V2_REPLAY, family: 'v2' });
	await clearCalls(EMU_V2);

	const res = await qrcodeCreate(V2_REPLAY);
	assert.equal(res.errNo, 0);
	const after = await stats(EMU_V2, V2_REPLAY);
	assert.equal(after.refreshes - (before.refreshes || 0), 1, 'exactly one refresh');
	const cs = await calls(EMU_V2);
	assert.deepEqual(cs.map((c) => c.code), [28001008, 0], 'rejected as expired, then replayed');
	assert.ok(cs.every((c) => c.body_sha256 === sha256(QRCODE_BODY)), 'the replay carries the same body');
});

test('a revoked token is replayed: v1 40020, then the same POST with a fresh token', async () => {
	const body = { version: '1.0.0', path: 'pages/index' };
	const call = () => common({ host: 'open.microapp.bytedance.com', path: '/openapi/v1/microapp/app/qrcode', method: 'POST',
		header: { 'content-type': 'application/json' }, query: { authorizer_access_token: V1_REPLAY }, body });
	assert.equal((await call()).errno, 0);
	const before = await stats(EMU_V1, V1_REPLAY);
	await emu(EMU_V1, 'POST', 'revoke', { appid: V1_REPLAY, family: 'v1' });
	await clearCalls(EMU_V1);

	const res = await call();
	assert.equal(res.errno, 0, JSON.stringify(res));
	assert.equal(res.data.appid, V1_REPLAY);
	assert.equal(res.data.body_sha256, sha256(JSON.stringify(body)));
	assert.equal((await stats(EMU_V1, V1_REPLAY)).refreshes - (before.refreshes || 0), 1);
	assert.deepEqual((await calls(EMU_V1)).map((c) => c.code), [40020, 0]);
});

test('20 concurrent calls on an expired token all succeed, with one refresh', async () => {
	await templateList(V2_CONCURRENT);
	const before = await stats(EMU_V2, V2_CONCURRENT);
	await emu(EMU_V2, 'POST', 'expire', { appid: V2_CONCURRENT, family: 'v2' });

	const results = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? templateList : qrcodeCreate)(V2_CONCURRENT)));
	assert.ok(results.every((r) => r.errNo === 0));
	const after = await stats(EMU_V2, V2_CONCURRENT);
	assert.equal(after.refreshes - (before.refreshes || 0), 1, 'one refresh for the whole burst');
	assert.equal(after.downstream_ok - before.downstream_ok, 20);
});

// runNode runs code in a fresh Node process (NODE_EXTRA_CA_CERTS is read at
// start), with the given extra environment, and returns its JSON output.
function runNode(code, env) {
	const r = spawnSync(process.execPath, ['-e', code], {
		cwd: path.join(__dirname, '..'), env: { ...process.env, ...env }, encoding: 'utf8', timeout: 20_000,
	});
	assert.equal(r.status, 0, r.stderr);
	return JSON.parse(r.stdout);
}

const PROBE = `
	const sdk = require('@open-dy/open_api_sdk');
	const c = new sdk.default({});
	if (process.env.STRICT) c.setRuntimeOptions({ readTimeout: 5000, connectTimeout: 1000, autoretry: false, maxAttempts: 1, ignoreSSL: false });
	c.categoryGetAuditCategories(new sdk.CategoryGetAuditCategoriesRequest({ accessToken: '${V2_APP}' }))
		.then((r) => console.log(JSON.stringify({ ok: true, errNo: r.errNo })),
			(e) => console.log(JSON.stringify({ ok: false, code: e.code, message: e.message })));`;

test('TLS is verified: without Caddy\'s root trusted, a verifying client refuses the sidecar', () => {
	assert.ok(process.env.NODE_EXTRA_CA_CERTS, 'the suite runs with Caddy\'s root in NODE_EXTRA_CA_CERTS');
	const withRoot = runNode(PROBE, { STRICT: '1' });
	assert.deepEqual(withRoot, { ok: true, errNo: 0 });
	const without = runNode(PROBE, { STRICT: '1', NODE_EXTRA_CA_CERTS: '' });
	assert.equal(without.ok, false);
	assert.match(without.code, /CERT|ISSUER|SIGNATURE/, JSON.stringify(without));
});

test('the SDK\'s default does not verify TLS (ignoreSSL: true): it accepts an untrusted certificate', () => {
	// A fact about the SDK that users of a drop-in must know: turn verification on.
	const lax = runNode(PROBE, { NODE_EXTRA_CA_CERTS: '' });
	assert.deepEqual(lax, { ok: true, errNo: 0 });
});

// tptoken's own failures reach the SDK's caller with their message: HTTP 200,
// the family's envelope, a code that is neither success nor "renew your token".

async function assertSDKError(promise, ...fragments) {
	const err = await promise.then(() => null, (e) => e);
	assert.ok(err, 'the call must fail');
	assert.doesNotMatch(err.message, /Reqeust Failed/, 'a failure the SDK cannot read');
	assert.match(err.code, /^[1-9][0-9]*$/, `a platform code, not an HTTP status: ${err.code}`);
	assert.ok(!['28001003', '28001008', '40020', '40009', '40010'].includes(err.code), `not a code that means "renew the token": ${err.code}`);
	for (const f of fragments) assert.ok(err.message.includes(f), `${JSON.stringify(err.message)} names ${f}`);
	return err;
}

// An appid with no record may be a token (an app not migrated yet sends its
// old one): tptoken names it by its fingerprint, never repeats it.
test('an unknown appid surfaces tptoken\'s message in the thrown error (v2) and the result (v1)', async () => {
	const err = await assertSDKError(templateList('tt0000nobody'), fingerprint('tt0000nobody'), 'no authorization on record');
	assert.equal(err.code, '40022');
	assert.ok(!err.message.includes('tt0000nobody'), err.message);
	const v1 = await common({ host: 'open.microapp.bytedance.com', path: '/openapi/v1/microapp/app/info', method: 'GET',
		query: { authorizer_access_token: 'tt0000nobody' } });
	assertFields(v1, { errno: 40022 });
	assert.ok(v1.message.includes(fingerprint('tt0000nobody')), v1.message);
	assertFields(v1.tptoken, { error: 'unknown_authorizer', appid: '', appid_fingerprint: fingerprint('tt0000nobody'), status: 403 });
	assert.ok(!JSON.stringify(v1).includes('tt0000nobody'));
});

test('an appid outside the route\'s allow list surfaces tptoken\'s message', async () => {
	await client().capacityQueryCapacityList(new sdk.CapacityQueryCapacityListRequest({ accessToken: V2_APP })); // allowed
	const err = await assertSDKError(client().capacityQueryCapacityList(new sdk.CapacityQueryCapacityListRequest({ accessToken: V2_CONCURRENT })),
		fingerprint(V2_CONCURRENT), 'allow list');
	assert.equal(err.code, '40008');
});

test('an authorizer that unauthorized the TP surfaces tptoken\'s message', async () => {
	await templateList(V2_UNAUTHORIZED);
	await emu(EMU_V2, 'POST', 'unauthorize', { appid: V2_UNAUTHORIZED, push: true });
	// The UNAUTHORIZED push reaches tptoken_events asynchronously.
	const deadline = Date.now() + 10_000;
	let err;
	while (Date.now() < deadline) {
		err = await templateList(V2_UNAUTHORIZED).then(() => null, (e) => e);
		if (err && !/^28001003/.test(err.message)) break;
		await new Promise((r) => setTimeout(r, 200));
	}
	const e = await assertSDKError(Promise.reject(err), V2_UNAUTHORIZED, 'authorization is gone');
	assert.equal(e.code, '40022');
});

test('client copies of the token in other header and query names are removed, never duplicated', async () => {
	await clearCalls(EMU_V2);
	const res = await common({ host: 'open.douyin.com', path: '/api/apps/v1/capacity/query_capacity_list/', method: 'GET',
		header: { 'access-token': V2_APP, access_token: V2_APP, 'x-token': V2_APP }, query: { access_token: V2_APP, k: 'v' } });
	assert.equal(res.err_no, 0, JSON.stringify(res));
	assertFields(await onlyCall(EMU_V2), { appid: V2_APP, query: 'k=v', token_carriers: { 'header:access-token': 1 } });
});

test('a typed method that sends its token in header x-token (webcast.bytedance.com) gets the real token in access-token', async () => {
	await clearCalls(EMU_V2);
	await client().cardGet(new sdk.CardGetRequest({ accessToken: V2_APP }));
	assertFields(await onlyCall(EMU_V2), {
		code: 0, host: 'webcast.bytedance.com', method: 'POST', path: '/api/card/get', appid: V2_APP,
		token_carriers: { 'header:access-token': 1 },
	});
});

// minigame.zijieapi.com resolves to the sidecar for Caddy too (compat/Caddyfile):
// the request comes back with the token the first pass injected.
test('a request loop is refused, and no token the platform issued reaches the SDK or Caddy\'s log', async () => {
	await templateList(V2_APP); // a token is held for it
	await clearCalls(EMU_V2);
	const err = await assertSDKError(client().giftReceiveReward(new sdk.GiftReceiveRewardRequest({ accessToken: V2_APP })),
		'request loop', 'minigame.zijieapi.com');
	assert.equal(err.code, '40000');
	assert.deepEqual(await calls(EMU_V2), [], 'the platform was never called');

	const { secrets } = await emu(EMU_V2, 'GET', 'secrets');
	assert.ok(secrets.length > 0);
	// The start-up check runs in the background: give it time.
	const reported = /an upstream of `transport tptoken` resolves to this Caddy.*minigame\.zijieapi\.com:443/;
	let log = '';
	for (const deadline = Date.now() + 10_000; !reported.test(log) && Date.now() < deadline;) {
		log = fs.readFileSync(process.env.COMPAT_CADDY_LOG, 'utf8');
		if (!reported.test(log)) await new Promise((r) => setTimeout(r, 200));
	}
	assert.match(log, reported, 'the start-up check reported the loop');
	assert.match(log, /request loop refused/);
	for (const s of secrets) {
		assert.ok(!err.message.includes(s), 'the SDK\'s error holds an issued secret');
		assert.ok(!log.includes(s), `Caddy's log holds an issued secret (${s.length} characters)`);
	}
});
