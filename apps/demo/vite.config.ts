import { defineConfig } from 'vite';

export default defineConfig({
  // One copy of Yjs in the page: y-prosemirror and @keel/client must share it.
  resolve: { dedupe: ['yjs', 'lib0', 'y-protocols', 'y-prosemirror'] },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    // libsodium's embedded WebAssembly is ~600 kB (≈200 kB gzipped); it is what the demo is about.
    chunkSizeWarningLimit: 1200,
  },
  server: { host: '127.0.0.1' },
});
