// The demo's service worker: keeps the app shell so the page (and the 988 line, the safety plan
// already on the device) opens with no network. Built files are content-hashed; the shell and
// config are fetched fresh when the network is there, from the cache when it is not.
const CACHE = 'keel-demo-v1';

self.addEventListener('install', (event) => {
  event.waitUntil(
    (async () => {
      const cache = await caches.open(CACHE);
      const shell = await fetch('/', { cache: 'no-store' });
      const html = await shell.clone().text();
      await cache.put('/', shell);
      // The first load was not controlled yet: fetch the assets it uses into the cache now.
      const assets = [...html.matchAll(/(?:src|href)="(\/assets\/[^"]+)"/g)].map((m) => m[1]);
      await cache.addAll(assets);
      await self.skipWaiting();
    })(),
  );
});

self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('fetch', (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== 'GET' || url.origin !== self.location.origin || url.pathname.startsWith('/dev/')) return;
  if (url.pathname.startsWith('/assets/')) {
    event.respondWith(caches.match(request).then((hit) => hit ?? fetch(request).then((r) => cache(request, r))));
    return;
  }
  // Navigations and /config.json: network first, the cached copy offline.
  const key = request.mode === 'navigate' ? '/' : request;
  event.respondWith(
    fetch(request)
      .then((r) => cache(key, r))
      .catch(async () => (await caches.match(key)) ?? Response.error()),
  );
});

const cache = async (key, response) => {
  if (response.ok) {
    const copy = response.clone();
    const store = await caches.open(CACHE);
    await store.put(key, copy);
  }
  return response;
};
