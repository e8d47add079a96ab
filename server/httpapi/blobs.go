package httpapi

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
)

// blobIdleTimeout is how long an upload or a download may go without a
// byte moving before it is cut off: the server's 30 s bound on a request,
// applied to each read and write of a body that may take minutes.
const blobIdleTimeout = 30 * time.Second

// uploadBlob takes POST /v1/blobs/{handle}?sha256=<D>. Everything that can
// be refused without the body is refused first (its length, the auth, the
// quotas when the length is known); then the body is streamed to the store,
// which keeps it only if it ends with the signed digest.
func (s *Server) uploadBlob(w http.ResponseWriter, r *http.Request) {
	handle := r.PathValue("handle")
	addr := s.clientAddr(r)
	if !s.allow(w, s.cfg.SendLimiter, addr) {
		return
	}
	if max := s.svc.MaxBlobBytes(); r.ContentLength > max {
		s.fail(w, r, server.BlobTooLarge(max))
		return
	}
	digest := r.URL.Query().Get("sha256")
	if digest == "" {
		s.fail(w, r, server.Errorf(server.CodeInvalidField, "sha256 (the body's signed SHA-256) is required"))
		return
	}
	if _, err := server.ParseBlobDigest(digest); err != nil {
		s.fail(w, r, err)
		return
	}
	sess, ok := s.authenticate(w, r, server.RequestAuth{
		Handle:   handle,
		Method:   http.MethodPost,
		Path:     "/v1/blobs/" + handle,
		Bindings: []string{"sha256=" + digest},
		Header:   r.Header.Get("X-KEZ-Auth"),
		Once:     true,
	})
	if !ok {
		return
	}
	rc := http.NewResponseController(w)
	meter := &server.QuotaMeter{
		R:       &idleReader{r: r.Body, rc: rc},
		Limiter: s.cfg.AddressQuota, Key: addr,
		Refusal: func(wait time.Duration) error {
			s.metrics.rateLimited.Inc()
			return &server.Error{Code: server.CodeAddressQuota, RetryAfter: wait,
				Message: fmt.Sprintf("this address has stored its day's quota of bytes; wait %s", wait.Round(time.Second))}
		},
	}
	length := r.ContentLength // -1 when chunked
	if err := meter.Prepay(length); err != nil {
		s.fail(w, r, err)
		return
	}
	receipt, err := s.svc.UploadBlob(r.Context(), server.BlobUpload{Session: sess, Digest: digest, Body: meter, Length: length})
	if err != nil {
		meter.Refund()
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, receipt)
}

// idleReader reads a request body, giving each read blobIdleTimeout, and
// turns a failure to read it (the client went away, or stalled) into a
// refusal rather than an internal error.
type idleReader struct {
	r  io.Reader
	rc *http.ResponseController
}

func (i *idleReader) Read(p []byte) (int, error) {
	_ = i.rc.SetReadDeadline(time.Now().Add(blobIdleTimeout))
	n, err := i.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		return n, server.Errorf(server.CodeInvalidField, "reading the body: %v", err)
	}
	return n, err
}

// downloadBlob answers GET /v1/blobs/{id} with the bytes as uploaded;
// http.ServeContent honours Range and conditional requests.
func (s *Server) downloadBlob(w http.ResponseWriter, r *http.Request) {
	// The id is the capability, not a cookie: a reader on another server
	// downloads it from its web app (docs/protocol.md, "Conversations
	// across servers").
	w.Header().Set("Access-Control-Allow-Origin", "*")
	b, content, err := s.svc.OpenBlob(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer content.Close()
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Cache-Control", "private, max-age=31536000, immutable")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("ETag", `"`+signing.EncodeB64(b.SHA256)+`"`)
	http.ServeContent(&idleWriter{ResponseWriter: w, rc: http.NewResponseController(w)}, r, "", b.CreatedAt, content)
}

// idleWriter gives each write of a response blobIdleTimeout: a reader that
// takes longer for one is cut off, however long the whole download takes.
type idleWriter struct {
	http.ResponseWriter
	rc *http.ResponseController
}

func (i *idleWriter) Write(p []byte) (int, error) {
	_ = i.rc.SetWriteDeadline(time.Now().Add(blobIdleTimeout))
	return i.ResponseWriter.Write(p)
}
