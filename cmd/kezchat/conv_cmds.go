package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"image"
	_ "image/gif" // image.DecodeConfig reads an attached image's size
	_ "image/jpeg"
	_ "image/png"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"kez.lat/chat/client"
	"kez.lat/chat/server"
)

// maxFileBytes is the largest file send --file reads: what the server's
// default --max-blob-bytes holds once encrypted.
const maxFileBytes = client.DefaultMaxBlobBytes - client.AttachmentOverhead

// defaultFilesDir is where inbox and listen save received files.
const defaultFilesDir = "kezchat-files"

// groupsPath is the file of the groups an identity is in, beside it:
// identity.json's is identity.groups.json.
func groupsPath(identity string) string {
	return strings.TrimSuffix(identity, ".json") + ".groups.json"
}

// session is a registered identity, its client and its groups, which it
// holds the lock of (see lockFile) until close, or release.
type session struct {
	id         *client.Identity
	c          *client.Client
	groups     *client.Groups
	groupsPath string
	unlock     func()
}

func (f *clientFlags) session() (*session, error) {
	id, c, err := f.registered()
	if err != nil {
		return nil, err
	}
	s := &session{id: id, c: c, groupsPath: groupsPath(f.identity), unlock: func() {}}
	if err := s.lock(); err != nil {
		return nil, err
	}
	return s, nil
}

// groupSession is session, with the group changes waiting in the inbox
// taken, and the group ref names: what every command about one group
// starts with. The caller releases the session.
func (f *clientFlags) groupSession(ctx context.Context, ref string) (*session, *client.GroupState, error) {
	s, err := f.session()
	if err != nil {
		return nil, nil, err
	}
	g, err := s.findGroupSynced(ctx, ref)
	if err != nil {
		s.release()
		return nil, nil, err
	}
	return s, g, nil
}

func (s *session) findGroupSynced(ctx context.Context, ref string) (*client.GroupState, error) {
	if err := s.sync(ctx); err != nil {
		return nil, err
	}
	return s.findGroup(ref)
}

// lock takes the groups file's lock and reads the groups anew: another
// command may have changed them since.
func (s *session) lock() error {
	unlock, err := lockFile(s.groupsPath + ".lock")
	if err != nil {
		return err
	}
	g, err := client.LoadGroups(s.groupsPath, s.id.Handle)
	if err != nil {
		unlock()
		return err
	}
	if g.Domain == "" {
		// What other servers' people write is read against it.
		g.Domain = s.id.Server
	}
	s.groups, s.unlock = g, unlock
	return nil
}

// release lets the other commands of the identity at the groups file.
func (s *session) release() {
	s.unlock()
	s.unlock = func() {}
}

// sync takes the group changes waiting in the inbox and saves the groups.
func (s *session) sync(ctx context.Context) error {
	err := s.c.SyncGroups(ctx, s.id, s.groups)
	if serr := s.groups.Save(s.groupsPath); serr != nil {
		return errors.Join(err, serr)
	}
	return withKeyHelp(err)
}

// findGroup resolves a group the client is in by id, name, or #name.
func (s *session) findGroup(ref string) (*client.GroupState, error) {
	name := strings.TrimPrefix(ref, "#")
	var found []*client.GroupState
	for _, g := range s.groups.List() {
		if g.ID == ref {
			return g, nil
		}
		if g.Name == name {
			found = append(found, g)
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("you are in no group %q ('kezchat group list' shows yours)", safeText(ref))
	case 1:
		return found[0], nil
	}
	return nil, fmt.Errorf("you are in %d groups named %q; name one by its id ('kezchat group list')", len(found), safeText(ref))
}

// name is a person named on the command line as this client names people
// (client.Client.Name): a handle of the identity's server, or an address
// handle@domain elsewhere, where an address at the identity's own server
// is its bare handle.
func (s *session) name(ctx context.Context, arg string) (string, error) {
	a, err := s.c.Name(ctx, arg)
	if err != nil {
		return "", err
	}
	return a.String(), nil
}

// names is name of each of args.
func (s *session) names(ctx context.Context, args []string) ([]string, error) {
	out := make([]string, len(args))
	for i, a := range args {
		n, err := s.name(ctx, a)
		if err != nil {
			return nil, err
		}
		out[i] = n
	}
	return out, nil
}

// groupName is how a group is shown: #name, or its id when unknown.
func (s *session) groupName(id string) string {
	if g := s.groups.State(id); g != nil {
		return "#" + safeText(g.Name)
	}
	return "group " + id
}

// fileFlags are the --file flags of a send: each a path, at most 16.
type fileFlags []string

func (f *fileFlags) String() string { return strings.Join(*f, ",") }
func (f *fileFlags) Set(v string) error {
	if len(*f) == client.MaxAttachments {
		return fmt.Errorf("at most %d files", client.MaxAttachments)
	}
	*f = append(*f, v)
	return nil
}

// composeFlags are what send and group send share: files, a reply.
type composeFlags struct {
	files     fileFlags
	replyTo   string
	replyFrom string
}

func addComposeFlags(fs *flag.FlagSet, f *composeFlags) {
	fs.Var(&f.files, "file", "attach this file (repeatable, at most 16)")
	fs.StringVar(&f.replyTo, "reply-to", "", "reply to the message of this mid (inbox --mids shows them)")
	fs.StringVar(&f.replyFrom, "reply-from", "", "with --reply-to: who sent that message, a handle or handle@domain (default: the person you write to; in a group, required)")
}

// compose builds the plaintext of a send: the text of args (or stdin when
// there is neither text nor a file), the files uploaded, the reply.
func (f *composeFlags) compose(ctx context.Context, s *session, args []string, peer string) (client.Plaintext, []string, error) {
	body := strings.Join(args, " ")
	if len(args) == 0 && len(f.files) == 0 {
		data, err := io.ReadAll(io.LimitReader(stdin, server.MaxCiphertext+1))
		if err != nil {
			return client.Plaintext{}, nil, fmt.Errorf("reading the message from stdin: %w", err)
		}
		if len(data) > server.MaxCiphertext {
			return client.Plaintext{}, nil, fmt.Errorf("the message is over %d bytes", server.MaxCiphertext)
		}
		body = strings.TrimRight(string(data), "\r\n")
	}
	if strings.TrimSpace(body) == "" && len(f.files) == 0 {
		return client.Plaintext{}, nil, errors.New("nothing to send")
	}
	pt := client.Plaintext{Body: body}
	if f.replyTo != "" {
		from := f.replyFrom
		if from == "" {
			from = peer
		}
		if from == "" {
			return client.Plaintext{}, nil, errors.New("--reply-to in a group needs --reply-from <handle>: who sent the message")
		}
		from, err := s.name(ctx, from)
		if err != nil {
			return client.Plaintext{}, nil, fmt.Errorf("--reply-from: %w", err)
		}
		pt.Reply = &client.Reply{From: from, MID: f.replyTo}
	}
	var blobs []string
	for _, path := range f.files {
		a, err := attachFile(ctx, s, path)
		if err != nil {
			return client.Plaintext{}, nil, err
		}
		pt.Attachments = append(pt.Attachments, a)
		blobs = append(blobs, a.Blob)
	}
	if err := pt.Check(); err != nil {
		return client.Plaintext{}, nil, err
	}
	return pt, blobs, nil
}

// attachFile reads, encrypts and uploads one file.
func attachFile(ctx context.Context, s *session, path string) (client.Attachment, error) {
	f, err := os.Open(path)
	if err != nil {
		return client.Attachment{}, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return client.Attachment{}, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(data) > maxFileBytes {
		return client.Attachment{}, fmt.Errorf("%s is over %d bytes, more than the server takes", path, maxFileBytes)
	}
	name := filepath.Base(path)
	typ := mime.TypeByExtension(filepath.Ext(name))
	if typ == "" {
		typ = http.DetectContentType(data)
	}
	a, err := s.c.Attach(ctx, s.id, name, typ, data)
	if err != nil {
		return client.Attachment{}, fmt.Errorf("uploading %s: %w", path, err)
	}
	if strings.HasPrefix(typ, "image/") {
		if cfg, _, err := image.DecodeConfig(bytes.NewReader(data)); err == nil {
			a.Width, a.Height = cfg.Width, cfg.Height
		}
	}
	return a, nil
}

func runSend(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f clientFlags
	var cf composeFlags
	fs := newFlagSet("send", "send [flags] <handle|handle@domain> [text...]\n\nEncrypts and sends a message, with --file a file; with neither text nor file, the message is read from stdin. "+
		"To a person on another server (handle@domain), your server relays it: 'kezchat outbox' shows when it is delivered.", stderr)
	addClientFlags(fs, &f)
	addComposeFlags(fs, &cf)
	if err := parseArgs(fs, args, 1, -1); err != nil {
		return err
	}
	to := fs.Arg(0)
	if cf.replyTo == "" && cf.replyFrom != "" {
		return errors.New("--reply-from needs --reply-to")
	}
	s, err := f.session()
	if err != nil {
		return err
	}
	defer s.release()
	if to, err = s.name(ctx, to); err != nil {
		return err
	}
	pt, blobs, err := cf.compose(ctx, s, fs.Args()[1:], to)
	if err != nil {
		return withKeyHelp(err)
	}
	r, pt, err := s.c.SendTo(ctx, s.id, to, pt, blobs)
	if err != nil {
		return withKeyHelp(err)
	}
	if r.State == client.OutboxQueued {
		fmt.Fprintf(stdout, "queued for %s, relayed by your server (mid %s); 'kezchat outbox' shows when it is delivered\n", safeText(r.To), pt.MID)
		return nil
	}
	fmt.Fprintf(stdout, "sent to %s (seq %d, mid %s)\n", safeText(r.To), r.Seq, pt.MID)
	return nil
}

func runReact(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f clientFlags
	fs := newFlagSet("react", "react [flags] <handle|handle@domain|group> <mid> <emoji>\n\nReacts to a message with an emoji, replacing your earlier reaction to it; \"\" takes it back.", stderr)
	addClientFlags(fs, &f)
	author := fs.String("author", "", "who sent the message, a handle or handle@domain (default: the person of the conversation; in a group, required)")
	if err := parseArgs(fs, args, 3, 3); err != nil {
		return err
	}
	conv, mid, emoji := fs.Arg(0), fs.Arg(1), fs.Arg(2)
	s, err := f.session()
	if err != nil {
		return err
	}
	defer s.release()
	pt := client.Plaintext{Kind: client.KindReaction, Emoji: &emoji, Target: &client.Target{From: *author, MID: mid}}
	if *author != "" {
		if pt.Target.From, err = s.name(ctx, *author); err != nil {
			return fmt.Errorf("--author: %w", err)
		}
	}
	if err := s.sync(ctx); err != nil {
		return err
	}
	g, gerr := s.findGroup(conv)
	if gerr != nil {
		if conv, err = s.name(ctx, conv); err != nil {
			return errors.Join(gerr, err)
		}
		if pt.Target.From == "" {
			pt.Target.From = conv
		}
		if err := pt.Check(); err != nil {
			return err
		}
		r, _, err := s.c.SendTo(ctx, s.id, conv, pt, nil)
		if err != nil {
			return withKeyHelp(err)
		}
		fmt.Fprintf(stdout, "reacted to %s's %s (seq %d)\n", safeText(pt.Target.From), mid, r.Seq)
		return nil
	}
	if pt.Target.From == "" {
		return errors.New("reacting in a group needs --author <handle>: who sent the message")
	}
	pt.Group = &client.GroupRef{ID: g.ID}
	if err := pt.Check(); err != nil {
		return err
	}
	if _, _, err := s.c.SendGroup(ctx, s.id, client.Without(g.Members, s.id.Handle), pt, nil); err != nil {
		return withKeyHelp(err)
	}
	fmt.Fprintf(stdout, "reacted to %s's %s in #%s\n", safeText(pt.Target.From), mid, safeText(g.Name))
	return nil
}

// groupCommands are the subcommands of `kezchat group`.
var groupCommands = map[string]subcommand{
	"create":  {runGroupCreate, "create a group: you, its admin, and the members named"},
	"add":     {runGroupChange(client.OpAdd), "add a member (admins only)"},
	"remove":  {runGroupChange(client.OpRemove), "remove a member (admins only)"},
	"promote": {runGroupChange(client.OpPromote), "make a member an admin (admins only)"},
	"leave":   {runGroupLeave, "leave a group (its last admin names another)"},
	"rename":  {runGroupRename, "rename a group (admins only)"},
	"send":    {runGroupSend, "send a message, or a file, to a group"},
	"list":    {runGroupList, "list your groups, with their members and admins"},
}

func runGroup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(stderr, "Usage: kezchat group <command> [flags]\n\nCommands:")
		names := make([]string, 0, len(groupCommands))
		for n := range groupCommands {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(stderr, "  %-8s %s\n", n, groupCommands[n].summary)
		}
		if len(args) == 0 {
			return errors.New("missing command")
		}
		return flag.ErrHelp
	}
	sub, ok := groupCommands[args[0]]
	if !ok {
		return fmt.Errorf("unknown command %q (create, add, remove, promote, leave, rename, send, list)", args[0])
	}
	return sub.run(ctx, args[1:], stdout, stderr)
}

// change sends next, made from before (nil: a create), then reads it back
// from the inbox, where it is taken in the order every member takes it,
// and says whether it stuck.
func (s *session) change(ctx context.Context, stdout io.Writer, before, next *client.GroupState) error {
	r, err := s.c.SendGroupChange(ctx, s.id, before, next)
	if err != nil {
		return withKeyHelp(err)
	}
	if err := s.sync(ctx); err != nil {
		return err
	}
	if s.groups.Seq < r.Seq {
		return fmt.Errorf("sent, but the inbox does not hold the change yet (seq %d); 'kezchat group list' shows when it does", r.Seq)
	}
	now := s.groups.State(next.ID)
	if now == nil || now.Hash() != next.Hash() {
		if now == nil {
			return errors.New("the change was sent, but this client did not take it")
		}
		fmt.Fprintf(stdout, "your change lost to a concurrent one by %s; #%s is now:\n", safeText(now.By), safeText(now.Name))
		printGroup(stdout, now)
		return errors.New("the change did not take effect; make it again if it still applies")
	}
	printGroup(stdout, now)
	return nil
}

func groupFlagSet(name, synopsis string, f *clientFlags, stderr io.Writer) *flag.FlagSet {
	fs := newFlagSet("group "+name, synopsis, stderr)
	addClientFlags(fs, f)
	return fs
}

func runGroupCreate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f clientFlags
	fs := groupFlagSet("create", "group create [flags] <name> <handle|handle@domain>...\n\nCreates a group of you (its admin) and the people named, on your server or others, and tells them.", &f, stderr)
	if err := parseArgs(fs, args, 2, -1); err != nil {
		return err
	}
	s, err := f.session()
	if err != nil {
		return err
	}
	defer s.release()
	if err := s.sync(ctx); err != nil {
		return err
	}
	members, err := s.names(ctx, fs.Args()[1:])
	if err != nil {
		return err
	}
	next, err := client.NewGroup(s.id.Handle, fs.Arg(0), members)
	if err != nil {
		return err
	}
	return s.change(ctx, stdout, nil, next)
}

// runGroupChange is group add, remove and promote: an admin's change of
// one member.
func runGroupChange(op string) command {
	return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		var f clientFlags
		fs := groupFlagSet(op, "group "+op+" [flags] <group> <handle|handle@domain>\n\nAn admin's change of the group (by name or id), sent to its members.", &f, stderr)
		if err := parseArgs(fs, args, 2, 2); err != nil {
			return err
		}
		s, g, err := f.groupSession(ctx, fs.Arg(0))
		if err != nil {
			return err
		}
		defer s.release()
		h, err := s.name(ctx, fs.Arg(1))
		if err != nil {
			return err
		}
		next, err := g.Next(s.id.Handle, op, func(n *client.GroupState) {
			switch op {
			case client.OpAdd:
				n.Members = append(n.Members, h)
			case client.OpRemove:
				n.Members, n.Admins = client.Without(n.Members, h), client.Without(n.Admins, h)
			case client.OpPromote:
				n.Admins = append(n.Admins, h)
			}
		})
		switch {
		case op == client.OpAdd && g.IsMember(h), op == client.OpRemove && !g.IsMember(h), op == client.OpPromote && g.IsAdmin(h):
			return fmt.Errorf("nothing to change: %s is already so in #%s", safeText(h), safeText(g.Name))
		case err != nil:
			return err
		}
		return s.change(ctx, stdout, g, next)
	}
}

func runGroupLeave(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f clientFlags
	fs := groupFlagSet("leave", "group leave [flags] <group>\n\nLeaves the group; its last admin names another with --admin.", &f, stderr)
	admin := fs.String("admin", "", "the member (handle or handle@domain) who becomes an admin as you leave (needed when you are the last admin)")
	if err := parseArgs(fs, args, 1, 1); err != nil {
		return err
	}
	s, g, err := f.groupSession(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	defer s.release()
	me := s.id.Handle
	if *admin != "" {
		if *admin, err = s.name(ctx, *admin); err != nil {
			return fmt.Errorf("--admin: %w", err)
		}
	}
	if g.IsAdmin(me) && len(g.Admins) == 1 && *admin == "" {
		return errors.New("you are the group's last admin: name another with --admin <handle>")
	}
	if *admin != "" && !g.IsAdmin(me) {
		return errors.New("--admin: only an admin names admins")
	}
	next, err := g.Next(me, client.OpLeave, func(n *client.GroupState) {
		n.Members, n.Admins = client.Without(n.Members, me), client.Without(n.Admins, me)
		if *admin != "" {
			n.Admins = append(n.Admins, *admin)
		}
	})
	if err != nil {
		return err
	}
	if len(next.Members) == 0 {
		return errors.New("you are the group's only member")
	}
	return s.change(ctx, stdout, g, next)
}

func runGroupRename(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f clientFlags
	fs := groupFlagSet("rename", "group rename [flags] <group> <new name>\n\nRenames the group (admins only).", &f, stderr)
	if err := parseArgs(fs, args, 2, 2); err != nil {
		return err
	}
	s, g, err := f.groupSession(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	defer s.release()
	next, err := g.Next(s.id.Handle, client.OpRename, func(n *client.GroupState) { n.Name = fs.Arg(1) })
	if err != nil {
		return err
	}
	return s.change(ctx, stdout, g, next)
}

func runGroupSend(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f clientFlags
	var cf composeFlags
	fs := groupFlagSet("send", "group send [flags] <group> [text...]\n\nSends a message, with --file a file, to the group's members; with neither text nor file, the message is read from stdin.", &f, stderr)
	addComposeFlags(fs, &cf)
	if err := parseArgs(fs, args, 1, -1); err != nil {
		return err
	}
	if cf.replyTo == "" && cf.replyFrom != "" {
		return errors.New("--reply-from needs --reply-to")
	}
	s, g, err := f.groupSession(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	defer s.release()
	pt, blobs, err := cf.compose(ctx, s, fs.Args()[1:], "")
	if err != nil {
		return withKeyHelp(err)
	}
	pt.Group = &client.GroupRef{ID: g.ID}
	rs, pt, err := s.c.SendGroup(ctx, s.id, client.Without(g.Members, s.id.Handle), pt, blobs)
	if err != nil {
		return withKeyHelp(err)
	}
	queued := 0
	for _, r := range rs {
		if r.State == client.OutboxQueued {
			queued++ // for another server, which its server relays
		}
	}
	fmt.Fprintf(stdout, "sent to #%s, %d recipient(s) (mid %s)", safeText(g.Name), len(rs), pt.MID)
	if queued > 0 {
		fmt.Fprintf(stdout, ", %d of them queued for other servers", queued)
	}
	fmt.Fprintln(stdout)
	return nil
}

func runGroupList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f clientFlags
	fs := groupFlagSet("list", "group list [flags]\n\nTakes the group changes waiting in the inbox and lists your groups.", &f, stderr)
	offline := fs.Bool("offline", false, "list what this client knows without reading the inbox")
	if err := parseArgs(fs, args, 0, 0); err != nil {
		return err
	}
	s, err := f.session()
	if err != nil {
		return err
	}
	defer s.release()
	if !*offline {
		if err := s.sync(ctx); err != nil {
			return err
		}
	}
	gs := s.groups.List()
	if len(gs) == 0 {
		fmt.Fprintln(stderr, "no groups")
	}
	for _, g := range gs {
		printGroup(stdout, g)
	}
	return nil
}

// printGroup prints a group's name, id, version, members and admins.
func printGroup(w io.Writer, g *client.GroupState) {
	fmt.Fprintf(w, "#%s (id %s, version %d)\n  members: %s\n  admins:  %s\n", safeText(g.Name), g.ID, g.Version,
		strings.Join(g.Members, ", "), strings.Join(g.Admins, ", "))
}

// saveFile writes data as name in dir, never outside it (os.Root refuses
// any path that leaves it, symbolic links included) and never over a file
// there: " (2)", " (3)"... go before the extension while a name is taken.
func saveFile(dir, name string, data []byte) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return "", err
	}
	defer root.Close()
	base := sanitizeFileName(name)
	ext := filepath.Ext(base)
	stem := strings.TrimSuffix(base, ext)
	for i := 1; i <= 1000; i++ {
		n := base
		if i > 1 {
			n = fmt.Sprintf("%s (%d)%s", stem, i, ext)
		}
		f, err := root.OpenFile(n, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		_, err = f.Write(data)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			root.Remove(n)
			return "", err
		}
		return filepath.Join(dir, n), nil
	}
	return "", fmt.Errorf("%s holds 1000 files named like %q", dir, base)
}

// maxFileName bounds a saved file's name, in bytes (file systems allow
// 255).
const maxFileName = 200

// sanitizeFileName makes a sender's file name safe to create: its last
// path element only, without control, format (bidirectional overrides) or
// separator characters, nor leading dots (hidden files, ".."), at most
// maxFileName bytes with its extension kept; "file" when nothing is left.
func sanitizeFileName(name string) string {
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	name = strings.Map(func(r rune) rune {
		switch {
		case r == utf8.RuneError, unicode.IsControl(r), unicode.Is(unicode.Cf, r), unicode.Is(unicode.Zl, r), unicode.Is(unicode.Zp, r),
			strings.ContainsRune(`:*?"<>|`, r):
			return '_'
		}
		return r
	}, name)
	name = strings.TrimLeft(strings.TrimSpace(name), ".")
	name = strings.TrimRight(name, ". ")
	if len(name) > maxFileName {
		ext := filepath.Ext(name)
		if len(ext) > 20 {
			ext = ""
		}
		stem := name[:maxFileName-len(ext)]
		for !utf8.ValidString(stem) {
			stem = stem[:len(stem)-1]
		}
		name = stem + ext
	}
	if name == "" {
		return "file"
	}
	return name
}
