package hostile_test

import (
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/testutil"
)

// noise yields n deterministic bytes without holding them.
type noise struct {
	n   int64
	rng *rand.ChaCha8
}

func newNoise(n int64) *noise { return &noise{n: n, rng: rand.NewChaCha8([32]byte{7})} }

func (p *noise) Read(b []byte) (int, error) {
	if p.n <= 0 {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.n)]
	p.rng.Read(b)
	p.n -= int64(len(b))
	return len(b), nil
}

// A 25 MiB attachment goes through the server, on either store, a piece at
// a time: its heap, read from /metrics of the binary while the upload and
// then the download run, grows by far less than the blob.
func TestA25MiBBlobPassesThroughTheServerWithoutBeingHeld(t *testing.T) {
	const size, bound = 25 << 20, 8 << 20
	for _, store := range []string{"sqlite", "jetstream"} {
		t.Run(store, func(t *testing.T) {
			var args []string
			if store == "jetstream" {
				n := testutil.StartNATS(t, testutil.NATSOptions{})
				args = []string{"--store", "jetstream", "--nats-url", n.URL}
			}
			tg := start(t, args...)
			id, _ := tg.register(t, "sender")
			h := sha256.New()
			io.Copy(h, newNoise(size))
			digest := signing.EncodeB64(h.Sum(nil))
			path := "/v1/blobs/sender"
			auth, err := signing.SignRequest(id.Signer, domain, http.MethodPost, path, time.Now().Unix(), "sha256="+digest)
			if err != nil {
				t.Fatal(err)
			}

			measure := func(what string, do func()) {
				before := tg.heap(t)
				stop := make(chan struct{})
				var wg sync.WaitGroup
				peak := before
				wg.Go(func() {
					for {
						peak = max(peak, tg.heap(t))
						select {
						case <-stop:
							return
						case <-time.After(20 * time.Millisecond):
						}
					}
				})
				do()
				close(stop)
				wg.Wait()
				grew := peak - before
				t.Logf("%s: heap %.1f MiB before, +%.1f MiB at peak", what, before/mib, grew/mib)
				if grew > bound {
					t.Fatalf("%s of 25 MiB grew the server's heap by %.1f MiB, over %d", what, grew/mib, bound>>20)
				}
			}
			var id43 string
			measure("the upload", func() {
				req, _ := http.NewRequest(http.MethodPost, tg.url+path+"?sha256="+digest, newNoise(size))
				req.ContentLength = size
				req.Header.Set("X-KEZ-Auth", auth)
				res, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer res.Body.Close()
				body, _ := io.ReadAll(res.Body)
				if res.StatusCode != http.StatusCreated || len(body) < 50 {
					t.Fatalf("uploading: %d %s", res.StatusCode, body)
				}
				id43 = string(body[7:50]) // {"id":"<43>",...
			})
			measure("the download", func() {
				res, err := http.Get(tg.url + "/v1/blobs/" + id43)
				if err != nil {
					t.Fatal(err)
				}
				defer res.Body.Close()
				got := sha256.New()
				if n, err := io.Copy(got, res.Body); err != nil || n != size || signing.EncodeB64(got.Sum(nil)) != digest {
					t.Fatalf("downloading: %d %d bytes, %v", res.StatusCode, n, err)
				}
			})
		})
	}
}
