package jsstore_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"kez.lat/chat/server/jsstore"
	"kez.lat/chat/server/testutil"
)

func TestRestoreLockIsTakenByExactlyOneOfRestoresStartedAtOnceAndTheOthersGiveUpAfterTheirWait(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	const restores = 8
	start := make(chan struct{})
	leases := make([]*jsstore.RestoreLease, restores)
	errs := make([]error, restores)
	var wg sync.WaitGroup
	for i := range restores {
		nc, err := nats.Connect(n.URL)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		wg.Go(func() {
			<-start
			leases[i], _, errs[i] = jsstore.AcquireRestore(context.Background(), nc, "b-1", 1,
				jsstore.RestoreLockOptions{Holder: fmt.Sprintf("pod-%d", i), Poll: 20 * time.Millisecond, Wait: 500 * time.Millisecond})
		})
	}
	close(start)
	wg.Wait()
	var holders []string
	for i := range restores {
		switch {
		case leases[i] != nil:
			holders = append(holders, fmt.Sprintf("pod-%d", i))
		case errs[i] == nil || !strings.Contains(errs[i].Error(), "waited 500ms for another restore") || !strings.Contains(errs[i].Error(), "checking backup b-1 by pod-"):
			t.Errorf("pod-%d: %v, want it to give up naming the holder", i, errs[i])
		}
	}
	if len(holders) != 1 {
		t.Fatalf("holders %v, want exactly one", holders)
	}
	// The holder kept its lease while the others waited past its length.
	for _, l := range leases {
		if l != nil {
			if err := l.Held(context.Background()); err != nil {
				t.Errorf("%s lost its lease: %v", holders[0], err)
			}
			if err := l.Finish(context.Background(), jsstore.RestoreRestored, ""); err != nil {
				t.Fatal(err)
			}
		}
	}
	nc, _ := nats.Connect(n.URL)
	defer nc.Close()
	_, done, err := jsstore.AcquireRestore(context.Background(), nc, "b-1", 1, jsstore.RestoreLockOptions{Wait: time.Minute})
	if err != nil || done == nil || done.Holder != holders[0] || done.Phase != jsstore.RestoreRestored {
		t.Errorf("after the marker: %+v, %v", done, err)
	}
}
