import { defineConfig } from 'vite';
import { svelte } from '@sveltejs/vite-plugin-svelte';
import tailwindcss from '@tailwindcss/vite';
import { VitePWA } from 'vite-plugin-pwa';

export default defineConfig({
  plugins: [
    tailwindcss(),
    svelte(),
    VitePWA({
      strategies: 'injectManifest',
      srcDir: 'src',
      filename: 'sw.ts',
      // main.ts registers the worker itself: no inline script, so the page's
      // CSP can forbid inline scripts.
      injectRegister: false,
      manifest: {
        name: 'kez-chat',
        short_name: 'kez',
        description: 'End-to-end encrypted chat',
        start_url: '/',
        scope: '/',
        display: 'standalone',
        background_color: '#0b1220',
        theme_color: '#0f766e',
        icons: [
          { src: '/icons/icon-192.png', sizes: '192x192', type: 'image/png' },
          { src: '/icons/icon-512.png', sizes: '512x512', type: 'image/png' },
          { src: '/icons/icon-512.png', sizes: '512x512', type: 'image/png', purpose: 'maskable' },
        ],
      },
      injectManifest: {
        // A classic script (every browser runs those as service workers),
        // built in library mode, which inlines the lazy imports without
        // Vite's preload helper (it needs document and import.meta).
        rollupFormat: 'iife',
        globPatterns: ['**/*.{js,css,html,svg,png,webmanifest}'],
      },
    }),
  ],
  build: {
    outDir: 'dist',
    // scripts/clean-dist.mjs empties dist/ except the committed .keep that
    // go:embed needs; vite's own emptying would delete it.
    emptyOutDir: false,
    target: 'es2022',
  },
  server: { proxy: { '/v1': 'http://127.0.0.1:6969' } },
});
