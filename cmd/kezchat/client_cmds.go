package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"

	"kez.lat/chat/client"
	"kez.lat/chat/server/signing"
)

// stdin is where send reads a message given no text arguments.
var stdin io.Reader = os.Stdin

const defaultURL = "http://127.0.0.1:6969"

// defaultIdentityPath is $XDG_CONFIG_HOME/kezchat/identity.json, else
// ~/.config/kezchat/identity.json.
func defaultIdentityPath() string {
	if dir := os.Getenv("XDG_CONFIG_HOME"); filepath.IsAbs(dir) {
		return filepath.Join(dir, "kezchat", "identity.json")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".config", "kezchat", "identity.json")
	}
	return "kezchat-identity.json"
}

// envDefault is the environment variable's value, or def when it is unset.
func envDefault(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

// clientFlags are the flags every client command shares. Only these two
// come from the environment: a KEZ_FORCE or KEZ_SINCE left in a shell
// should not silently change what a command does.
type clientFlags struct {
	url, identity string
	// insecureLoopback lets the client reach people at loopback test
	// domains (127.0.0.1:<port>) over plain HTTP.
	insecureLoopback bool
}

func addIdentityFlag(fs *flag.FlagSet, f *clientFlags) {
	fs.StringVar(&f.identity, "identity", envDefault("KEZ_IDENTITY", defaultIdentityPath()), "identity file: keys, handle and server (env KEZ_IDENTITY)")
}

func addClientFlags(fs *flag.FlagSet, f *clientFlags) {
	fs.StringVar(&f.url, "url", envDefault("KEZ_URL", defaultURL), "chat server URL (env KEZ_URL)")
	addIdentityFlag(fs, f)
	addLoopbackFlag(fs, f)
}

func addLoopbackFlag(fs *flag.FlagSet, f *clientFlags) {
	fs.BoolVar(&f.insecureLoopback, "insecure-loopback", false,
		"for tests: reach people at the loopback test domains 127.0.0.1:<port> and localhost:<port> over plain HTTP (as the server's --federation-insecure-loopback)")
}

// newClient is a client of the --url server, reaching loopback test
// domains when told to.
func (f *clientFlags) newClient() *client.Client {
	c := client.New(f.url, nil)
	c.InsecureLoopback = f.insecureLoopback
	return c
}

// parseArgs parses args and checks the number of positional arguments is
// within [min, max] (max < 0: no limit).
func parseArgs(fs *flag.FlagSet, args []string, min, max int) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch n := fs.NArg(); {
	case n < min:
		fs.Usage()
		return errors.New("missing arguments")
	case max >= 0 && n > max:
		fs.Usage()
		return fmt.Errorf("unexpected arguments %q", fs.Args()[max:])
	}
	return nil
}

// loadIdentity loads the identity file, explaining how to make one.
func loadIdentity(path string) (*client.Identity, error) {
	id, err := client.LoadIdentity(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no identity at %s; create one with 'kezchat keygen' (or pass --identity)", path)
	}
	return id, err
}

// registered loads an identity that has a handle, and a client for its
// server.
func (f *clientFlags) registered() (*client.Identity, *client.Client, error) {
	id, err := loadIdentity(f.identity)
	if err != nil {
		return nil, nil, err
	}
	if id.Handle == "" {
		return nil, nil, fmt.Errorf("the identity at %s has no handle yet; run 'kezchat register <handle>'", f.identity)
	}
	c := f.newClient()
	// Every peer's keys are checked against what this identity first saw
	// of them and against their key documents.
	c.Pins, c.Self = &client.FilePins{Path: pinsPath(f.identity)}, id
	return id, c, nil
}

// pinsPath is the file of the peers' keys an identity has seen, beside it:
// identity.json's is identity.pins.json.
func pinsPath(identity string) string {
	return strings.TrimSuffix(identity, ".json") + ".pins.json"
}

// withKeyHelp adds to a refused key what the person can do about it.
func withKeyHelp(err error) error {
	var changed *client.KeyChangedError
	switch {
	case errors.As(err, &changed):
		h := safeText(changed.Handle)
		return fmt.Errorf("%w\n\nThe server answers other keys for %s than the ones this identity saw first. "+
			"It may be a new identity of %s (a new device, a reinstall), or a server reading your messages: nothing was sent or shown. "+
			"Compare the safety number with %s in person or over another channel:\n  kezchat safety-number %s\n"+
			"If %s sees %s, accept the new keys with:\n  kezchat trust %s", err, h, h, h, h, h, changed.NowSafety, h)
	case errors.Is(err, client.ErrKeyDocumentMismatch):
		return fmt.Errorf("%w\n\nThe server answers keys the identity did not sign in its key document: nothing was sent or shown", err)
	}
	return err
}

func runSafetyNumber(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runSafetyCommand(ctx, args, stdout, stderr, "safety-number",
		"Prints the safety number of your identity and handle's (the keys you first saw of it): read it out to them, or compare it with theirs. The same on both sides means each has the other's keys.",
		"safety number with %s:\n  %s\n", (*client.Client).Safety)
}

func runTrust(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runSafetyCommand(ctx, args, stdout, stderr, "trust",
		"Accepts the keys the server now answers for handle, once you compared the new safety number with them.",
		"trusting the current keys of %s; safety number:\n  %s\n", (*client.Client).Trust)
}

// runSafetyCommand runs a command that takes a handle and prints a safety
// number with it: what safety-number and trust share.
func runSafetyCommand(ctx context.Context, args []string, stdout, stderr io.Writer, name, doc, out string,
	number func(*client.Client, context.Context, string) (string, error)) error {
	var f clientFlags
	fs := newFlagSet(name, name+" [flags] <handle|handle@domain>\n\n"+doc, stderr)
	addClientFlags(fs, &f)
	if err := parseArgs(fs, args, 1, 1); err != nil {
		return err
	}
	_, c, err := f.registered()
	if err != nil {
		return err
	}
	n, err := number(c, ctx, fs.Arg(0))
	if err != nil {
		return withKeyHelp(err)
	}
	fmt.Fprintf(stdout, out, safeText(fs.Arg(0)), n)
	return nil
}

func runKeygen(_ context.Context, args []string, stdout, stderr io.Writer) error {
	var f clientFlags
	fs := newFlagSet("keygen", "keygen [--alg ed25519|bip340] [--force]\n\nCreates a new identity (a signing key and an X25519 encryption key) in the identity file.", stderr)
	alg := fs.String("alg", "ed25519", "signature algorithm: ed25519 or bip340")
	force := fs.Bool("force", false, "replace an existing identity file (its keys are lost)")
	addIdentityFlag(fs, &f)
	if err := parseArgs(fs, args, 0, 0); err != nil {
		return err
	}
	id, err := client.NewIdentity(*alg)
	if err != nil {
		return err
	}
	if *force {
		err = id.Save(f.identity)
	} else {
		err = id.Create(f.identity)
	}
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s already exists; pass --force to replace it (its keys are lost)", f.identity)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "created %s identity in %s\nprimary_id: %s\nnext: kezchat register <handle>\n", *alg, f.identity, id.PrimaryID())
	return nil
}

func runRegister(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f clientFlags
	fs := newFlagSet("register", "register [flags] <handle>\n\nRegisters a handle for the identity on the server and records it in the identity file.", stderr)
	addClientFlags(fs, &f)
	if err := parseArgs(fs, args, 1, 1); err != nil {
		return err
	}
	id, err := loadIdentity(f.identity)
	if err != nil {
		return err
	}
	c := client.New(f.url, nil)
	u, err := c.Register(ctx, id, fs.Arg(0))
	if err != nil {
		return err
	}
	if err := id.Save(f.identity); err != nil {
		return fmt.Errorf("registered %s, but saving the identity failed: %w", u.Address(), err)
	}
	fmt.Fprintf(stdout, "registered %s (primary_id %s)\n", u.Address(), u.PrimaryID)
	return nil
}

func runLookup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f clientFlags
	fs := newFlagSet("lookup", "lookup [--url URL] <handle|handle@domain>\n\nPrints a person's public record: its keys and primary id; a person on another server's, from that server.", stderr)
	fs.StringVar(&f.url, "url", envDefault("KEZ_URL", defaultURL), "chat server URL (env KEZ_URL)")
	addLoopbackFlag(fs, &f)
	if err := parseArgs(fs, args, 1, 1); err != nil {
		return err
	}
	u, err := f.newClient().Lookup(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s\nprimary_id: %s\nalg:        %s\nkey:        %s\nenc_key:    %s\nregistered: %s\n",
		safeText(u.Address()), u.PrimaryID, safeText(u.Alg), signing.EncodeB64(u.Key), signing.EncodeB64(u.EncKey), u.CreatedAt.UTC().Format(time.RFC3339))
	return nil
}

func runInbox(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f clientFlags
	var rf readerFlags
	fs := newFlagSet("inbox", "inbox [flags]\n\nPrints the messages waiting in the inbox, decrypted, as \"[seq] from: body\", and saves the files they carry.", stderr)
	addClientFlags(fs, &f)
	addReaderFlags(fs, &rf)
	since := fs.Uint64("since", 0, "print only messages after this seq")
	ack := fs.Bool("ack", false, "acknowledge (delete) the printed messages on the server")
	if err := parseArgs(fs, args, 0, 0); err != nil {
		return err
	}
	s, err := f.session()
	if err != nil {
		return err
	}
	defer s.release()
	r := rf.reader(s, stdout, stderr)
	cursor, handled, printed := *since, *since, 0
	acknowledge := func() error {
		if !*ack || handled <= *since {
			return nil
		}
		n, err := s.c.Ack(ctx, s.id, handled)
		if err != nil {
			return fmt.Errorf("acknowledging up to seq %d: %w", handled, err)
		}
		fmt.Fprintf(stderr, "acknowledged %d message(s) up to seq %d\n", n, handled)
		return nil
	}
	for {
		page, err := s.c.Poll(ctx, s.id, cursor, 500)
		if err != nil {
			return errors.Join(err, acknowledge())
		}
		if len(page.Messages) == 0 {
			break
		}
		for _, env := range page.Messages {
			if err := r.show(ctx, env); err != nil {
				r.flushReceipts(ctx)
				return errors.Join(err, acknowledge())
			}
			handled = env.Seq
			printed++
		}
		r.flushReceipts(ctx)
		cursor = page.Next
	}
	if printed == 0 {
		fmt.Fprintln(stderr, "no messages")
	}
	return acknowledge()
}

func runListen(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f clientFlags
	var rf readerFlags
	fs := newFlagSet("listen", "listen [flags]\n\nFollows the inbox live, printing messages decrypted, saving the files they carry and acknowledging each one; stop with Ctrl-C.", stderr)
	addClientFlags(fs, &f)
	addReaderFlags(fs, &rf)
	since := fs.Uint64("since", 0, "start after this seq (messages up to it are not printed)")
	if err := parseArgs(fs, args, 0, 0); err != nil {
		return err
	}
	s, err := f.session()
	if err != nil {
		return err
	}
	defer s.release()
	r := rf.reader(s, stdout, stderr)
	s.c.OnListenError = func(err error, wait time.Duration) {
		fmt.Fprintf(stderr, "connection lost (%v); reconnecting in %v\n", err, wait.Round(time.Millisecond))
	}
	fmt.Fprintf(stderr, "listening as %s@%s on %s (Ctrl-C to stop)\n", safeText(s.id.Handle), safeText(s.id.Server), s.c.BaseURL())
	// Commands of this identity in other terminals change the groups too:
	// between messages, listen lets them.
	s.release()
	err = s.c.Listen(ctx, s.id, *since, func(env client.Envelope) error {
		if err := s.lock(); err != nil {
			return err
		}
		err := r.show(ctx, env)
		s.release()
		if err != nil {
			return err
		}
		r.flushReceipts(ctx)
		if _, err := s.c.Ack(ctx, s.id, env.Seq); err != nil && ctx.Err() == nil {
			// Not fatal: the next acknowledgement covers this one too.
			fmt.Fprintf(stderr, "acknowledging seq %d: %v\n", env.Seq, err)
		}
		return nil
	})
	if ctx.Err() != nil {
		return nil // interrupted: the normal way to stop
	}
	return err
}

// safeText makes text from the network safe to print on a terminal: control
// characters (but newline and tab) and the bidirectional overrides that can
// reorder what is shown are replaced by visible escapes.
func safeText(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\n' || r == '\t':
			b.WriteRune(r)
		case r == unicode.ReplacementChar:
			b.WriteRune(r)
		case unicode.IsControl(r), unicode.Is(unicode.Bidi_Control, r), r == '\u2028', r == '\u2029':
			fmt.Fprintf(&b, "\\u%04x", r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// indent indents the lines after the first, so a body cannot pass for
// another "[seq] from:" line.
func indent(s string) string {
	return strings.ReplaceAll(s, "\n", "\n    ")
}
