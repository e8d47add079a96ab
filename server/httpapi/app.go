package httpapi

import (
	"net/http"

	"kez.lat/chat/server"
)

// fallbackPage is served at / when no web app was built into the binary.
const fallbackPage = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>kez-chat</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#111;background:#fff}
@media (prefers-color-scheme:dark){body{color:#eee;background:#111}}code{background:rgba(127,127,127,.2);padding:.1rem .3rem;border-radius:.2rem}</style>
</head>
<body>
<h1>kez-chat</h1>
<p>This server is running. The web app was not built into this binary; chat from two terminals with the CLI:</p>
<pre><code>kezchat keygen &amp;&amp; kezchat register alice
kezchat send bob "hello"
kezchat listen</code></pre>
<p>The API is described in <code>docs/protocol.md</code>; health: <a href="/v1/healthz">/v1/healthz</a>.</p>
</body>
</html>
`

func fallbackApp() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			writeError(w, server.Errorf(server.CodeNotFound, "no page %s", r.URL.Path))
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
		_, _ = w.Write([]byte(fallbackPage))
	})
}
