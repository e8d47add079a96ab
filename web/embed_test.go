package web

import (
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"
)

func testApp() fstest.MapFS {
	big := strings.Repeat("console.log('kez');\n", 200)
	return fstest.MapFS{
		"index.html":              {Data: []byte("<!doctype html><title>kez-chat</title>")},
		"sw.js":                   {Data: []byte(big)},
		"manifest.webmanifest":    {Data: []byte(`{"name":"kez-chat"}`)},
		"assets/index-abc123.js":  {Data: []byte(big)},
		"assets/index-abc123.css": {Data: []byte("body{}")},
		".keep":                   {Data: []byte("placeholder")},
		"icons/icon-192.png":      {Data: []byte("\x89PNG\r\n\x1a\n")},
	}
}

func get(t *testing.T, h http.Handler, path string, hdr ...string) *http.Response {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

func TestHandlerCachingAndSPAFallback(t *testing.T) {
	h, err := newHandler(testApp())
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		path, status, cache, ctype string
	}{
		{"/", "200", "no-cache", "text/html"},
		{"/index.html", "200", "no-cache", "text/html"},
		{"/sw.js", "200", "no-cache", "text/javascript"},
		{"/manifest.webmanifest", "200", "no-cache", "application/manifest+json"},
		{"/assets/index-abc123.js", "200", "public, max-age=31536000, immutable", "text/javascript"},
		{"/assets/index-abc123.css", "200", "public, max-age=31536000, immutable", "text/css"},
		{"/chat/alice", "200", "no-cache", "text/html"}, // SPA fallback
		{"/assets/gone-000.js", "404", "", ""},
		{"/missing.png", "404", "", ""},
		{"/.keep", "404", "", ""}, // the placeholder is not served
	}
	for _, c := range cases {
		res := get(t, h, c.path)
		if got := res.Status[:3]; got != c.status {
			t.Errorf("%s: status %s, want %s", c.path, got, c.status)
			continue
		}
		if c.status != "200" {
			continue
		}
		if got := res.Header.Get("Cache-Control"); got != c.cache {
			t.Errorf("%s: Cache-Control %q, want %q", c.path, got, c.cache)
		}
		if got := res.Header.Get("Content-Type"); !strings.HasPrefix(got, c.ctype) {
			t.Errorf("%s: Content-Type %q, want %s", c.path, got, c.ctype)
		}
		if strings.HasPrefix(c.ctype, "text/html") && !strings.Contains(res.Header.Get("Content-Security-Policy"), "script-src 'self'") {
			t.Errorf("%s: no CSP on the page", c.path)
		}
	}
}

func TestHandlerGzipAndRevalidation(t *testing.T) {
	h, err := newHandler(testApp())
	if err != nil {
		t.Fatal(err)
	}
	plain := get(t, h, "/assets/index-abc123.js")
	body, _ := io.ReadAll(plain.Body)
	if plain.Header.Get("Content-Encoding") != "" || !strings.HasPrefix(string(body), "console.log") {
		t.Fatalf("without Accept-Encoding: encoding %q", plain.Header.Get("Content-Encoding"))
	}
	gz := get(t, h, "/assets/index-abc123.js", "Accept-Encoding", "br, gzip")
	if gz.Header.Get("Content-Encoding") != "gzip" || gz.Header.Get("Vary") != "Accept-Encoding" {
		t.Fatalf("gzip: encoding %q vary %q", gz.Header.Get("Content-Encoding"), gz.Header.Get("Vary"))
	}
	zr, err := gzip.NewReader(gz.Body)
	if err != nil {
		t.Fatal(err)
	}
	unzipped, _ := io.ReadAll(zr)
	if string(unzipped) != string(body) {
		t.Fatal("gzip body differs from the plain one")
	}
	if gz.Header.Get("ETag") == plain.Header.Get("ETag") {
		t.Fatal("gzip and plain bodies share an ETag")
	}
	if r := get(t, h, "/assets/index-abc123.js", "Accept-Encoding", "gzip;q=0"); r.Header.Get("Content-Encoding") != "" {
		t.Fatal("gzip;q=0 still got gzip")
	}
	if r := get(t, h, "/sw.js", "If-None-Match", get(t, h, "/sw.js").Header.Get("ETag")); r.StatusCode != http.StatusNotModified {
		t.Fatalf("If-None-Match with the current ETag: %d, want 304", r.StatusCode)
	}
}

func TestNoBuildMeansNoHandler(t *testing.T) {
	if _, err := newHandler(fstest.MapFS{".keep": {Data: []byte("x")}}); err == nil {
		t.Fatal("a dist with only the placeholder made a handler; the server would not fall back")
	}
}

// The page may read other servers (federation) over https only; a page
// served on loopback may also reach loopback test domains over http.
func TestContentSecurityPolicyConnect(t *testing.T) {
	for _, c := range []struct {
		host     string
		loopback bool
	}{
		{"chat.example", false},
		{"chat.example:8443", false},
		{"127.0.0.1:6969", true},
		{"localhost:6969", true},
		{"localhost", true},
		{"127.0.0.2:6969", false},
		{"localhost.evil.example", false},
	} {
		csp := contentSecurityPolicy(c.host)
		if !strings.Contains(csp, "connect-src 'self' https:") {
			t.Errorf("%s: %q", c.host, csp)
		}
		if got := strings.Contains(csp, "http://127.0.0.1:*"); got != c.loopback {
			t.Errorf("%s: loopback sources %v, want %v", c.host, got, c.loopback)
		}
	}
}
