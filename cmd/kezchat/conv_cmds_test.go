package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"kez.lat/chat/server/testutil"
)

func TestSanitizeFileNameKeepsANameInsideTheDirectory(t *testing.T) {
	long := strings.Repeat("é", 150) + ".txt"
	for in, want := range map[string]string{
		"report.pdf":              "report.pdf",
		"../../etc/passwd":        "passwd",
		`..\..\windows\win.ini`:   "win.ini",
		"..":                      "file",
		".hidden":                 "hidden",
		"":                        "file",
		"  spaced .txt. ":         "spaced .txt",
		"a\x00b\nc.txt":           "a_b_c.txt",
		"evil\u202etxt.exe":       "evil_txt.exe",
		"con:name?.txt":           "con_name_.txt",
		"photo 😀.jpg":             "photo 😀.jpg",
		string([]byte{0xff, 'x'}): "_x",
	} {
		if got := sanitizeFileName(in); got != want {
			t.Errorf("sanitizeFileName(%q) = %q, want %q", in, got, want)
		}
	}
	got := sanitizeFileName(long)
	if len(got) > maxFileName || !strings.HasSuffix(got, ".txt") || !strings.HasPrefix(got, "éé") {
		t.Errorf("a long name became %q (%d bytes)", got, len(got))
	}
}

func TestSaveFileNeverOverwritesNorLeavesTheDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "files")
	outside := filepath.Join(t.TempDir(), "outside.txt")
	if err := os.WriteFile(outside, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for i, name := range []string{"a.txt", "a.txt", "../a.txt", "/abs/a.txt"} {
		p, err := saveFile(dir, name, []byte{byte('0' + i)})
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	want := []string{"a.txt", "a (2).txt", "a (3).txt", "a (4).txt"}
	for i, p := range paths {
		if p != filepath.Join(dir, want[i]) {
			t.Errorf("file %d saved to %s, want %s", i, p, want[i])
		}
		if b, _ := os.ReadFile(p); string(b) != string(rune('0'+i)) {
			t.Errorf("%s holds %q", p, b)
		}
		if st, _ := os.Stat(p); runtime.GOOS != "windows" && st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v", p, st.Mode().Perm())
		}
	}
	// A link planted in the directory is not followed out of it.
	if err := os.Symlink(outside, filepath.Join(dir, "link.txt")); err != nil {
		t.Fatal(err)
	}
	p, err := saveFile(dir, "link.txt", []byte("new"))
	if err != nil || p != filepath.Join(dir, "link (2).txt") {
		t.Fatalf("saving over a link: %s %v", p, err)
	}
	if b, _ := os.ReadFile(outside); string(b) != "keep" {
		t.Errorf("the file outside became %q", b)
	}
}

func TestConversationCommandsRefuseBadArguments(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	id := filepath.Join(dir, "id.json")
	if _, _, err := runCmd(t, ctx, runKeygen, "--identity", id); err != nil {
		t.Fatal(err)
	}
	seventeen := []string{"--identity", id}
	for range 17 {
		seventeen = append(seventeen, "--file", "x")
	}
	for _, c := range []struct {
		name string
		cmd  command
		args []string
		want string
	}{
		{"group without a command", runGroup, nil, "missing command"},
		{"an unknown group command", runGroup, []string{"merge"}, "unknown command"},
		{"group create without members", runGroup, []string{"create", "--identity", id, "team"}, "missing arguments"},
		{"group add without a handle", runGroup, []string{"add", "--identity", id, "team"}, "missing arguments"},
		{"group rename with three arguments", runGroup, []string{"rename", "--identity", id, "a", "b", "c"}, "unexpected arguments"},
		{"react without an emoji", runReact, []string{"--identity", id, "bob", "mid"}, "missing arguments"},
		{"seventeen files", runSend, append(seventeen, "bob"), "at most 16 files"},
		{"an unregistered identity", runGroup, []string{"list", "--identity", id}, "register"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := runCmd(t, ctx, c.cmd, c.args...)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%v: %v, want an error saying %q", c.args, err, c.want)
			}
		})
	}
}

// terminals are people at the CLI of one server, each with an identity
// file in dir.
type terminals struct {
	t   *testing.T
	url string
	dir string
}

func newTerminals(t *testing.T, handles ...string) *terminals {
	t.Helper()
	srv := testutil.StartServer(t, testutil.Options{})
	t.Cleanup(http.DefaultTransport.(*http.Transport).CloseIdleConnections)
	tt := &terminals{t: t, url: srv.URL, dir: t.TempDir()}
	for _, h := range handles {
		if _, _, err := runCmd(t, context.Background(), runKeygen, "--identity", tt.identity(h)); err != nil {
			t.Fatal(err)
		}
		tt.run(h, runRegister, h)
	}
	return tt
}

func (tt *terminals) identity(h string) string { return filepath.Join(tt.dir, h+".json") }

// run runs a command as h, failing the test when it fails.
func (tt *terminals) run(h string, cmd command, args ...string) string {
	tt.t.Helper()
	out, errOut, err := tt.try(h, cmd, args...)
	if err != nil {
		tt.t.Fatalf("%s %v: %v\n%s", h, args, err, errOut)
	}
	return out
}

func (tt *terminals) try(h string, cmd command, args ...string) (string, string, error) {
	tt.t.Helper()
	flags := []string{"--identity", tt.identity(h), "--url", tt.url}
	if len(args) > 0 && (cmd == nil) {
		cmd, args = groupCommands[args[0]].run, args[1:]
	}
	return runCmd(tt.t, context.Background(), cmd, append(flags, args...)...)
}

// group runs `kezchat group <args>` as h.
func (tt *terminals) group(h string, args ...string) string {
	tt.t.Helper()
	return tt.run(h, nil, args...)
}

// inbox runs `kezchat inbox --ack` as h, files saved in h's directory.
func (tt *terminals) inbox(h string, extra ...string) string {
	tt.t.Helper()
	return tt.run(h, runInbox, append([]string{"--ack", "--files-dir", tt.files(h)}, extra...)...)
}

func (tt *terminals) files(h string) string { return filepath.Join(tt.dir, h+"-files") }

func TestAGroupOfThreeAtTheirTerminals(t *testing.T) {
	tt := newTerminals(t, "alice", "bob", "carol")
	out := tt.group("alice", "create", "team", "bob", "carol")
	if want := "#team (id "; !strings.HasPrefix(out, want) || !strings.Contains(out, "members: alice, bob, carol\n  admins:  alice\n") {
		t.Fatalf("group create printed %q", out)
	}
	if st, err := os.Stat(groupsPath(tt.identity("alice"))); err != nil || runtime.GOOS != "windows" && st.Mode().Perm() != 0o600 {
		t.Fatalf("alice's groups file: %v %v", st, err)
	}
	for _, h := range []string{"bob", "carol"} {
		if out := tt.group(h, "list"); !strings.Contains(out, "#team") || !strings.Contains(out, "members: alice, bob, carol") {
			t.Fatalf("%s's group list: %q", h, out)
		}
	}
	tt.group("bob", "send", "team", "hello", "team")
	tt.group("alice", "send", "#team", "hi bob")

	out = tt.inbox("carol")
	for _, want := range []string{"#team alice created #team; members alice, bob, carol; admins alice (version 1)\n",
		"#team bob: hello team\n", "#team alice: hi bob\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("carol's inbox lacks %q:\n%s", want, out)
		}
	}
	if out := tt.inbox("alice"); !strings.Contains(out, "#team bob: hello team") || strings.Contains(out, "alice: hi bob") {
		t.Errorf("alice's inbox:\n%s", out)
	}
	tt.inbox("bob")

	// Only an admin removes; then the removed member learns it.
	if _, _, err := tt.try("bob", nil, "remove", "team", "carol"); err == nil || !strings.Contains(err.Error(), "may only leave") {
		t.Fatalf("bob, not an admin, removing carol: %v", err)
	}
	out = tt.group("alice", "remove", "team", "carol")
	if !strings.Contains(out, "members: alice, bob\n") {
		t.Fatalf("group remove printed %q", out)
	}
	out = tt.inbox("carol")
	if !strings.Contains(out, "alice remove: removed carol;") || !strings.Contains(out, "you are not in this group") {
		t.Fatalf("carol's inbox after her removal:\n%s", out)
	}
	if out, errOut, err := tt.try("carol", nil, "list"); err != nil || out != "" || !strings.Contains(errOut, "no groups") {
		t.Fatalf("carol's group list after her removal: %q %q %v", out, errOut, err)
	}
	if _, _, err := tt.try("carol", nil, "send", "team", "still here?"); err == nil {
		t.Fatal("carol sent to a group she is not in")
	}
	if out := tt.group("bob", "send", "team", "just us"); !strings.Contains(out, "1 recipient(s)") {
		t.Fatalf("bob's send after the removal: %q", out)
	}
	if out, errOut, _ := tt.try("carol", runInbox); out != "" {
		t.Fatalf("carol received after her removal: %q %q", out, errOut)
	}

	// Bob leaves; alice renames; both show at alice's.
	tt.group("bob", "leave", "team")
	tt.group("alice", "rename", "team", "solo")
	out = tt.inbox("alice")
	for _, want := range []string{"#solo bob: just us", "bob leave: removed bob;", "alice rename: renamed #team to #solo;"} {
		if !strings.Contains(out, want) {
			t.Errorf("alice's inbox lacks %q:\n%s", want, out)
		}
	}
	if _, _, err := tt.try("alice", nil, "leave", "solo"); err == nil || !strings.Contains(err.Error(), "--admin") {
		t.Errorf("the last admin leaving without naming one: %v", err)
	}
}

func TestRepliesAndReactionsAtTheTerminal(t *testing.T) {
	tt := newTerminals(t, "alice", "bob")
	out := tt.run("alice", runSend, "bob", "lunch?")
	mid := regexp.MustCompile(`mid ([A-Za-z0-9_-]+)\)`).FindStringSubmatch(out)
	if mid == nil {
		t.Fatalf("send printed %q, without the mid", out)
	}
	if out := tt.inbox("bob", "--mids"); !strings.Contains(out, " "+mid[1]+"] alice: lunch?\n") {
		t.Fatalf("bob's inbox --mids:\n%s", out)
	}
	midOf := func(out string) string {
		t.Helper()
		m := regexp.MustCompile(`mid ([A-Za-z0-9_-]+)\)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("send printed %q, without the mid", out)
		}
		return m[1]
	}
	yes := midOf(tt.run("bob", runSend, "--reply-to", mid[1], "alice", "yes!"))
	tt.run("bob", runReact, "alice", mid[1], "👍")
	tt.run("bob", runReact, "--author", "alice", "alice", mid[1], "")
	out = tt.inbox("alice")
	for _, want := range []string{"bob has read " + mid[1] + "\n", "bob: yes!\n    (reply to alice's " + mid[1] + ")\n",
		"bob reacted 👍 to alice's " + mid[1] + "\n", "bob took back the reaction to alice's " + mid[1] + "\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("alice's inbox lacks %q:\n%s", want, out)
		}
	}
	// Alice read bob's reply, and only that: no receipt for a reaction.
	more := midOf(tt.run("bob", runSend, "alice", "one more"))
	tt.inbox("alice", "--no-read-receipts")
	out = tt.inbox("bob")
	if want := "alice has read " + yes + "\n"; !strings.Contains(out, want) || strings.Count(out, "alice has read") != 1 {
		t.Errorf("bob's inbox, want %q once:\n%s", want, out)
	}
	if want := "alice received " + more + "\n"; !strings.Contains(out, want) {
		t.Errorf("bob's inbox lacks %q (read receipts off):\n%s", want, out)
	}
	if _, _, err := tt.try("bob", runSend, "--reply-from", "alice", "alice", "x"); err == nil {
		t.Error("--reply-from without --reply-to was sent")
	}
}

func TestAddressesAtTheTerminal(t *testing.T) {
	tt := newTerminals(t, "alice", "bob")
	// An address at one's own server is the bare handle.
	if out := tt.run("alice", runSend, "bob@"+testutil.Domain, "hi"); !strings.HasPrefix(out, "sent to bob (seq ") {
		t.Fatalf("send to bob's address on his own server: %q", out)
	}
	if out := tt.inbox("bob"); !strings.Contains(out, "alice: hi") {
		t.Fatalf("bob's inbox: %q", out)
	}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"a loopback domain without --insecure-loopback", []string{"bob@127.0.0.1:7000", "hi"}, "--insecure-loopback"},
		{"not an address", []string{"bob@Two.example", "hi"}, "not an address"},
		{"an address of no handle", []string{"@two.example", "hi"}, "not a handle"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, _, err := tt.try("alice", runSend, c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("send %v: %v, want an error saying %q", c.args, err, c.want)
			}
		})
	}
	if _, _, err := tt.try("alice", nil, "create", "team", "bob", "carol@Three.example"); err == nil || !strings.Contains(err.Error(), "not an address") {
		t.Fatalf("group create with a malformed address: %v", err)
	}
}
