import './app.css';
import { mount } from 'svelte';
import App from './App.svelte';

mount(App, { target: document.getElementById('app')! });

if ('serviceWorker' in navigator) {
  // The worker tells an open tab where a notification click should take it.
  navigator.serviceWorker.addEventListener('message', (e: MessageEvent<{ type?: string; hash?: string }>) => {
    if (e.data?.type === 'navigate' && typeof e.data.hash === 'string' && e.data.hash.startsWith('#/')) {
      location.hash = e.data.hash;
    }
  });
  if (import.meta.env.PROD) {
    void navigator.serviceWorker.register('/sw.js', { scope: '/' }).catch((err) => console.warn('service worker:', err));
  }
}
