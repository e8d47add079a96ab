package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// maxErrorBody bounds how much of an error response is read.
const maxErrorBody = 16 << 10

// APIError is a non-2xx answer of the server. Code is the stable error code
// of docs/protocol.md ("handle_taken", ...), empty when the body was not the
// protocol's error JSON (a proxy's error page, say).
type APIError struct {
	Status  int
	Code    string
	Message string
	// RetryAfter is the Retry-After header (rate_limited, too_many_streams,
	// unavailable), zero when absent.
	RetryAfter time.Duration
	// Index is, for a refused group send (POST /v1/batch), the position of
	// the document the refusal is about; -1 when the answer names none.
	Index int
}

func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "server answered %d", e.Status)
	if e.Code != "" {
		b.WriteString(" " + e.Code)
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	if e.Index >= 0 {
		fmt.Fprintf(&b, " (document %d)", e.Index)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %v)", e.RetryAfter)
	}
	return b.String()
}

// ErrorCode returns the protocol error code of err's *APIError, or "" when
// err is nil or not an APIError.
func ErrorCode(err error) string {
	var e *APIError
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// usageError is a mistake on this side (an unregistered identity, one for
// another server, a bad URL) that no retry can fix.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// retryable reports whether a request that failed with err may succeed if
// repeated later (with fresh auth): transport failures, 5xx and 429.
func retryable(err error) bool {
	var e *APIError
	if errors.As(err, &e) {
		return e.Status >= 500 || e.Status == http.StatusTooManyRequests
	}
	var u usageError
	return !errors.As(err, &u)
}

// parseAPIError builds the APIError of a non-2xx response, reading at most
// maxErrorBody bytes of its body.
func parseAPIError(resp *http.Response) *APIError {
	e := &APIError{Status: resp.StatusCode, RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()), Index: -1}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var doc struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
			Index   *int   `json:"index"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &doc) == nil && doc.Error.Code != "" {
		e.Code, e.Message = doc.Error.Code, doc.Error.Message
		if doc.Error.Index != nil && *doc.Error.Index >= 0 {
			e.Index = *doc.Error.Index
		}
		return e
	}
	// Not the protocol's error JSON: keep a short, printable excerpt.
	text := strings.TrimSpace(strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return ' '
	}, string(body)))
	if len(text) > 200 {
		text = text[:200] + "..."
	}
	if text == "" {
		text = http.StatusText(resp.StatusCode)
	}
	e.Message = text
	return e
}

// parseRetryAfter reads a Retry-After value: delay seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		return time.Duration(min(n, 24*3600)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
