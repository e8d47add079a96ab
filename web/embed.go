// Package web holds the web client (a Svelte PWA, built by `make web` into
// dist/) and serves it. The binary embeds whatever dist/ holds when it is
// compiled; without a build there is only dist/.keep, and Handler returns
// nil so the server serves its built-in fallback page.
package web

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"
)

// dist is the output of the vite build. dist/.keep is committed and never
// deleted by the build, so the pattern always matches something and a fresh
// clone compiles without npm.
//
//go:embed all:dist
var dist embed.FS

// Handler serves the built web app, or returns nil when the binary was
// compiled without one.
func Handler() http.Handler {
	sub, err := fs.Sub(dist, "dist")
	if err != nil {
		return nil
	}
	h, err := newHandler(sub)
	if err != nil {
		return nil
	}
	return h
}

// contentSecurityPolicy allows only the app's own scripts, the API on the
// same origin and, for people on other servers (docs/protocol.md,
// "Conversations across servers"), what the app reads from their servers
// (WebFinger, records, key documents, attachments), over https. Inline
// styles are allowed because Svelte sets style attributes; inline scripts
// are not. A page served on loopback (a test, a laptop) may also reach the
// loopback test domains' servers (127.0.0.1:<port>, localhost:<port>)
// over plain http; no other page may.
func contentSecurityPolicy(host string) string {
	connect := "connect-src 'self' https:"
	if loopbackHost(host) {
		connect += " http://127.0.0.1:* http://localhost:*"
	}
	return "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; " +
		"img-src 'self' data: blob:; " + connect + "; worker-src 'self'; manifest-src 'self'; " +
		"base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"
}

// loopbackHost reports whether a request's Host is 127.0.0.1 or localhost
// (with any port).
func loopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return host == "127.0.0.1" || host == "localhost"
}

// asset is one file of the app, read once at start.
type asset struct {
	body, gz     []byte // gz is nil when compressing does not pay
	etag, ctype  string
	cacheControl string
}

type handler struct {
	assets map[string]*asset // by path without the leading slash
}

// errNotBuilt means fsys has no index.html.
var errNotBuilt = fs.ErrNotExist

var mimeOnce sync.Once

func newHandler(fsys fs.FS) (*handler, error) {
	mimeOnce.Do(func() {
		// Not every system's MIME table knows these.
		_ = mime.AddExtensionType(".webmanifest", "application/manifest+json")
		_ = mime.AddExtensionType(".mjs", "text/javascript; charset=utf-8")
		_ = mime.AddExtensionType(".svg", "image/svg+xml")
		_ = mime.AddExtensionType(".woff2", "font/woff2")
	})
	if _, err := fs.Stat(fsys, "index.html"); err != nil {
		return nil, errNotBuilt
	}
	h := &handler{assets: make(map[string]*asset)}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasPrefix(path.Base(p), ".") {
			return err
		}
		body, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		a := &asset{
			body:  body,
			etag:  `"` + hex.EncodeToString(sum[:12]) + `"`,
			ctype: mime.TypeByExtension(path.Ext(p)),
			// Files under assets/ carry a content hash in their name, so they
			// never change; everything else (index.html, sw.js, the manifest)
			// must be revalidated so a new version is picked up.
			cacheControl: "no-cache",
		}
		if strings.HasPrefix(p, "assets/") {
			a.cacheControl = "public, max-age=31536000, immutable"
		}
		if a.ctype == "" {
			a.ctype = http.DetectContentType(body)
		}
		if compressible(a.ctype) {
			var b bytes.Buffer
			zw, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
			zw.Write(body)
			zw.Close()
			if b.Len() < len(body) {
				a.gz = b.Bytes()
			}
		}
		h.assets[p] = a
		return nil
	})
	if err != nil {
		return nil, err
	}
	return h, nil
}

func compressible(ctype string) bool {
	return strings.HasPrefix(ctype, "text/") || strings.Contains(ctype, "javascript") ||
		strings.Contains(ctype, "json") || strings.Contains(ctype, "svg")
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := strings.TrimPrefix(path.Clean("/"+r.URL.Path), "/")
	if p == "" {
		p = "index.html"
	}
	a, ok := h.assets[p]
	if !ok {
		// The app routes by URL hash, so any other page path is the app;
		// a missing file (a name with an extension, or under assets/) is not.
		if strings.HasPrefix(p, "assets/") || path.Ext(p) != "" {
			http.Error(w, "404 page not found", http.StatusNotFound)
			return
		}
		a = h.assets["index.html"]
	}
	hdr := w.Header()
	hdr.Set("Content-Type", a.ctype)
	hdr.Set("Cache-Control", a.cacheControl)
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "no-referrer")
	if strings.HasPrefix(a.ctype, "text/html") {
		hdr.Set("Content-Security-Policy", contentSecurityPolicy(r.Host))
	}
	body, etag := a.body, a.etag
	if a.gz != nil {
		hdr.Add("Vary", "Accept-Encoding")
		if acceptsGzip(r.Header.Get("Accept-Encoding")) {
			body, etag = a.gz, strings.TrimSuffix(a.etag, `"`)+`-gz"`
			hdr.Set("Content-Encoding", "gzip")
		}
	}
	hdr.Set("ETag", etag)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
}

// acceptsGzip reports whether an Accept-Encoding value allows gzip (q=0
// refuses it).
func acceptsGzip(v string) bool {
	for part := range strings.SplitSeq(v, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(name), "gzip") {
			q := strings.ReplaceAll(strings.TrimSpace(params), " ", "")
			return q != "q=0" && q != "q=0.0" && q != "q=0.00" && q != "q=0.000"
		}
	}
	return false
}
