// A wasi:http/proxy handler in JavaScript, built by componentize-js
// (StarlingMonkey) in scripts/real-apps.sh, with the fetch-event API.
//
// GET /                  {"app": "javascript", "path": ...}
// GET /hash?s=TEXT       {"sha256": ...}, from the engine's WebCrypto
// GET /call/NAME/PATH    calls deployment NAME by name (http://NAME.skiff.local/PATH)
//                        and answers {"status": ..., "body": ...}
// anything else          404

function json(status, value) {
  return new Response(JSON.stringify(value), { status, headers: { 'content-type': 'application/json' } });
}

async function handle(request) {
  const url = new URL(request.url);
  if (url.pathname === '/') {
    return json(200, { app: 'javascript', path: url.pathname });
  }
  if (url.pathname === '/hash') {
    const text = url.searchParams.get('s') ?? '';
    const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text));
    const hex = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
    return json(200, { sha256: hex });
  }
  const call = url.pathname.match(/^\/call\/([a-z0-9-]+)(\/.*)$/);
  if (call) {
    const answer = await fetch(`http://${call[1]}.skiff.local${call[2]}${url.search}`);
    return json(200, { status: answer.status, body: await answer.text() });
  }
  return json(404, { error: 'not found', path: url.pathname });
}

addEventListener('fetch', (event) => event.respondWith(handle(event.request)));
