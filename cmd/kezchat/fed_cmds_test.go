package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kez.lat/chat/server/app"
	"kez.lat/chat/server/testutil"
)

// fedTerminals are people at the CLI, each of one of several federated
// servers on loopback (--insecure-loopback), with identity files in dir.
type fedTerminals struct {
	t    *testing.T
	dir  string
	urls map[string]string // by handle
	// domains are the handles' servers' domains.
	domains map[string]string
}

// newFedTerminals starts a federated server for each group of handles and
// registers them there.
func newFedTerminals(t *testing.T, servers ...[]string) *fedTerminals {
	t.Helper()
	t.Cleanup(http.DefaultTransport.(*http.Transport).CloseIdleConnections)
	ft := &fedTerminals{t: t, dir: t.TempDir(), urls: map[string]string{}, domains: map[string]string{}}
	for _, handles := range servers {
		srv := testutil.StartServer(t, testutil.Options{Federation: &app.Federation{}})
		for _, h := range handles {
			ft.urls[h], ft.domains[h] = srv.URL, srv.Service.Domain()
			if _, _, err := runCmd(t, context.Background(), runKeygen, "--identity", ft.identity(h)); err != nil {
				t.Fatal(err)
			}
			ft.run(h, runRegister, h)
		}
	}
	return ft
}

func (ft *fedTerminals) identity(h string) string { return filepath.Join(ft.dir, h+".json") }

// address is h's address, as people of other servers name h.
func (ft *fedTerminals) address(h string) string { return h + "@" + ft.domains[h] }

func (ft *fedTerminals) try(h string, cmd command, args ...string) (string, string, error) {
	ft.t.Helper()
	flags := []string{"--identity", ft.identity(h), "--url", ft.urls[h], "--insecure-loopback"}
	if cmd == nil {
		cmd, args = groupCommands[args[0]].run, args[1:]
	}
	return runCmd(ft.t, context.Background(), cmd, append(flags, args...)...)
}

func (ft *fedTerminals) run(h string, cmd command, args ...string) string {
	ft.t.Helper()
	out, errOut, err := ft.try(h, cmd, args...)
	if err != nil {
		ft.t.Fatalf("%s %v: %v\n%s", h, args, err, errOut)
	}
	return out
}

// waitInbox runs `kezchat inbox --ack` as h until what it printed holds
// every one of want, and returns all it printed.
func (ft *fedTerminals) waitInbox(h string, want ...string) string {
	ft.t.Helper()
	var all strings.Builder
	testutil.Eventually(ft.t, 20*time.Second, h+"'s inbox to show "+strings.Join(want, ", "), func() bool {
		all.WriteString(ft.run(h, runInbox, "--ack", "--mids", "--files-dir", filepath.Join(ft.dir, h+"-files")))
		for _, w := range want {
			if !strings.Contains(all.String(), w) {
				return false
			}
		}
		return true
	})
	return all.String()
}

func TestPeopleOfTwoServersChatAtTheirTerminals(t *testing.T) {
	ft := newFedTerminals(t, []string{"alice"}, []string{"bob"})
	alice, bob := ft.address("alice"), ft.address("bob")

	out := ft.run("alice", runSend, bob, "hello", "bob")
	if !strings.HasPrefix(out, "queued for "+bob+", relayed by your server (mid ") {
		t.Fatalf("send to %s printed %q", bob, out)
	}
	first := midOf(t, out)
	file := filepath.Join(ft.dir, "notes.txt")
	if err := os.WriteFile(file, []byte("notes from one"), 0o600); err != nil {
		t.Fatal(err)
	}
	second := midOf(t, ft.run("alice", runSend, "--file", file, bob, "the notes"))
	out = ft.waitInbox("bob", "] "+alice+": hello bob", "] "+alice+": the notes")
	saved, err := os.ReadFile(filepath.Join(ft.dir, "bob-files", "notes.txt"))
	if err != nil || string(saved) != "notes from one" || !strings.Contains(out, "file notes.txt (14 bytes, text/plain") {
		t.Fatalf("bob's inbox saved %q (%v):\n%s", saved, err, out)
	}
	// bob answers alice by her address; she sees him by his, and that he
	// read her messages (his receipt came back across).
	ft.run("bob", runSend, alice, "hi alice")
	ft.waitInbox("alice", "] "+bob+": hi alice", "] "+bob+" has read ")
	// Her two messages are delivered (her receipt to bob's may be on
	// its way).
	testutil.Eventually(t, 20*time.Second, "alice's outbox to say her messages are delivered", func() bool {
		out := ft.run("alice", runOutbox)
		return strings.Contains(out, "delivered "+bob+" "+first+" ") && strings.Contains(out, "delivered "+bob+" "+second+" ")
	})
	// The address of one's own server is one's bare handle.
	if out := ft.run("alice", runSafetyNumber, bob); !strings.Contains(out, "safety number with "+bob) {
		t.Fatalf("safety-number %s: %q", bob, out)
	}
	if out := ft.run("bob", runPrivacy, "--strangers", "refuse", "--know", alice, "--block", "mallory.example"); !strings.Contains(out, "strangers: refuse\nknown:     "+alice+"\nblocked:   mallory.example\n") {
		t.Fatalf("privacy: %q", out)
	}
}

func TestAGroupOfTwoServersAtTheirTerminals(t *testing.T) {
	ft := newFedTerminals(t, []string{"alice", "dave"}, []string{"bob"})
	bob := ft.address("bob")
	out := ft.group("alice", "create", "team", "dave", bob)
	if !strings.Contains(out, "members: alice, "+bob+", dave\n") {
		t.Fatalf("group create printed %q", out)
	}
	// bob's inbox takes the group in, in his names.
	ft.waitInbox("bob", "#team "+ft.address("alice")+" created #team; members "+ft.address("alice")+", bob, "+ft.address("dave")+";")
	if out := ft.group("bob", "list", "--offline"); !strings.Contains(out, "members: "+ft.address("alice")+", bob, "+ft.address("dave")+"\n") {
		t.Fatalf("bob's group list: %q", out)
	}
	if out := ft.group("bob", "send", "team", "hello", "team"); !strings.Contains(out, "2 recipient(s)") || !strings.Contains(out, "2 of them queued for other servers") {
		t.Fatalf("bob's group send printed %q", out)
	}
	ft.waitInbox("dave", "#team "+bob+": hello team")
}

// group runs `kezchat group <args>` as h.
func (ft *fedTerminals) group(h string, args ...string) string {
	ft.t.Helper()
	return ft.run(h, nil, args...)
}

// midOf is the mid a send printed: "... (mid <mid>)...".
func midOf(t *testing.T, out string) string {
	t.Helper()
	_, after, ok := strings.Cut(out, "(mid ")
	mid, _, ok2 := strings.Cut(after, ")")
	if !ok || !ok2 || mid == "" {
		t.Fatalf("no mid in %q", out)
	}
	return mid
}
