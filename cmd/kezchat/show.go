package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"kez.lat/chat/client"
	"kez.lat/chat/server"
)

// readerFlags are what inbox and listen share.
type readerFlags struct {
	filesDir       string
	mids           bool
	noReadReceipts bool
}

func addReaderFlags(fs *flag.FlagSet, f *readerFlags) {
	fs.StringVar(&f.filesDir, "files-dir", defaultFilesDir, "save received files in this directory (never over a file there)")
	fs.BoolVar(&f.mids, "mids", false, "print each message's mid, to reply or react to it: [seq mid]")
	fs.BoolVar(&f.noReadReceipts, "no-read-receipts", false, "tell senders their messages were delivered, not that they were read")
}

func (f *readerFlags) reader(s *session, stdout, stderr io.Writer) *reader {
	receipt := client.ReceiptRead
	if f.noReadReceipts {
		receipt = client.ReceiptDelivered
	}
	return &reader{s: s, filesDir: f.filesDir, mids: f.mids, receipt: receipt, stdout: stdout, stderr: stderr}
}

// reader shows the messages of an inbox, in order: it applies each to the
// groups, keeps the files it carries, and prints it.
type reader struct {
	s              *session
	filesDir       string
	mids           bool
	receipt        string // what the receipts of shown messages say
	stdout, stderr io.Writer
	// receipts are the mids shown since the last flush, per sender and
	// conversation, in the order first shown.
	receipts []*pendingReceipt
}

// pendingReceipt is the mids of one sender's messages, in one
// conversation, that a receipt will name.
type pendingReceipt struct {
	to    string
	group *client.GroupRef
	mids  []string
}

// maxPendingReceipts bounds the conversations receipts wait for between
// flushes; past it, they are flushed.
const maxPendingReceipts = 64

// show handles one envelope. A message that fails verification, or that
// its group does not allow, is reported on stderr and counts as handled (it
// can never become readable); any other failure, such as the sender's
// record or a file being unreachable, is returned so the message is not
// acknowledged unread.
func (r *reader) show(ctx context.Context, env client.Envelope) error {
	s := r.s
	pt, err := s.c.Decrypt(ctx, s.id, env)
	switch {
	case errors.Is(err, client.ErrInvalidMessage), client.ErrorCode(err) == server.CodeUnknownHandle:
		fmt.Fprintf(r.stderr, "[%d] skipped, not a valid message: %s\n", env.Seq, safeText(err.Error()))
		s.groups.Pass(env.Seq)
		return s.groups.Save(s.groupsPath)
	case err != nil:
		return fmt.Errorf("reading seq %d: %w", env.Seq, withKeyHelp(err))
	}
	if err := s.groups.ReceiveAt(env.Seq, &pt); err != nil {
		fmt.Fprintf(r.stderr, "[%d] skipped, from %s: %s\n", env.Seq, safeText(pt.From), safeText(err.Error()))
		return s.groups.Save(s.groupsPath)
	}
	// A message is acknowledged only once its files are kept: the server
	// deletes a blob once every recipient acknowledged its messages.
	saved, err := r.saveAttachments(ctx, env.Seq, pt)
	if err != nil {
		return err
	}
	mid := pt.MID
	if mid == "" {
		p, _ := env.Payload() // verified by Decrypt
		mid = p.ID
	}
	r.print(env.Seq, mid, &pt, saved)
	if pt.KindOrText() == client.KindText && pt.From != s.id.Handle {
		r.queueReceipt(ctx, pt.From, pt.Group, mid)
	}
	return s.groups.Save(s.groupsPath)
}

// queueReceipt adds mid to the receipt its sender will get at the next
// flush. Receipts are only for texts (never for receipts, reactions,
// deletions or group changes), and to the sender only.
func (r *reader) queueReceipt(ctx context.Context, to string, group *client.GroupRef, mid string) {
	for _, p := range r.receipts {
		if p.to == to && (p.group == nil) == (group == nil) && (group == nil || p.group.ID == group.ID) {
			p.mids = append(p.mids, mid)
			if len(p.mids) == client.MaxReceiptMIDs {
				r.flushReceipts(ctx)
			}
			return
		}
	}
	if len(r.receipts) == maxPendingReceipts {
		r.flushReceipts(ctx)
	}
	r.receipts = append(r.receipts, &pendingReceipt{to: to, group: group, mids: []string{mid}})
}

// flushReceipts sends the receipts of the messages shown since the last
// flush. One that fails is reported, not retried: a receipt is a courtesy,
// and the messages it is about were shown.
func (r *reader) flushReceipts(ctx context.Context) {
	for _, p := range r.receipts {
		pt := client.Plaintext{Kind: client.KindReceipt, Receipt: r.receipt, MIDs: p.mids, Group: p.group}
		if _, _, err := r.s.c.SendTo(ctx, r.s.id, p.to, pt, nil); err != nil && ctx.Err() == nil {
			fmt.Fprintf(r.stderr, "sending %s a receipt: %s\n", safeText(p.to), safeText(err.Error()))
		}
	}
	r.receipts = nil
}

// saveAttachments downloads, checks, decrypts and saves each of the
// message's files; it returns where each went ("" for one that can never
// be fetched, reported on stderr).
func (r *reader) saveAttachments(ctx context.Context, seq uint64, pt client.Plaintext) ([]string, error) {
	var saved []string
	for _, a := range pt.Attachments {
		data, err := r.s.c.FetchAttachmentFrom(ctx, pt.From, a)
		if err != nil {
			if transient(err) {
				return nil, fmt.Errorf("seq %d: fetching %s: %w", seq, safeText(a.Name), err)
			}
			fmt.Fprintf(r.stderr, "[%d] file %s cannot be fetched: %s\n", seq, safeText(a.Name), safeText(err.Error()))
			saved = append(saved, "")
			continue
		}
		path, err := saveFile(r.filesDir, a.Name, data)
		if err != nil {
			return nil, fmt.Errorf("seq %d: saving %s: %w", seq, safeText(a.Name), err)
		}
		saved = append(saved, path)
	}
	return saved, nil
}

// transient reports whether a failed download may succeed later: the
// network, the server's 5xx and 429. A blob that is gone (404) or does not
// match its message never will.
func transient(err error) bool {
	var apiErr *client.APIError
	if errors.As(err, &apiErr) {
		return apiErr.Status >= 500 || apiErr.Status == http.StatusTooManyRequests
	}
	var urlErr *url.Error
	return errors.As(err, &urlErr) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// print writes one message: "[seq] from: body" for a text, with the group,
// reply and files on lines of their own, indented.
func (r *reader) print(seq uint64, mid string, pt *client.Plaintext, saved []string) {
	s := r.s
	var b strings.Builder
	if r.mids {
		fmt.Fprintf(&b, "[%d %s] ", seq, mid)
	} else {
		fmt.Fprintf(&b, "[%d] ", seq)
	}
	if pt.Group != nil {
		b.WriteString(s.groupName(pt.Group.ID) + " ")
	}
	who := safeText(pt.From)
	if pt.From == s.id.Handle && pt.Peer != "" {
		who += " to " + safeText(pt.Peer) // a sync copy of this identity's
	}
	switch pt.KindOrText() {
	case client.KindText:
		b.WriteString(who + ":")
		if pt.Body != "" || len(pt.Attachments) == 0 {
			b.WriteString(" " + indent(safeText(pt.Body)))
		}
		if rp := pt.Reply; rp != nil {
			fmt.Fprintf(&b, "\n    (reply to %s's %s", safeText(rp.From), rp.MID)
			if rp.Body != "" {
				fmt.Fprintf(&b, ": %s", indent(safeText(rp.Body)))
			}
			b.WriteString(")")
		}
		for i, a := range pt.Attachments {
			fmt.Fprintf(&b, "\n    file %s (%d bytes, %s)", safeText(a.Name), a.Size, safeText(a.Type))
			if saved[i] != "" {
				fmt.Fprintf(&b, " saved to %s", saved[i])
			}
		}
	case client.KindReceipt:
		verb := "has read"
		if pt.Receipt == client.ReceiptDelivered {
			verb = "received"
		}
		fmt.Fprintf(&b, "%s %s %s", who, verb, strings.Join(pt.MIDs, ", "))
	case client.KindReaction:
		if *pt.Emoji == "" {
			fmt.Fprintf(&b, "%s took back the reaction to %s's %s", who, safeText(pt.Target.From), pt.Target.MID)
		} else {
			fmt.Fprintf(&b, "%s reacted %s to %s's %s", who, safeText(*pt.Emoji), safeText(pt.Target.From), pt.Target.MID)
		}
	case client.KindDelete:
		if pt.Target.From != pt.From {
			fmt.Fprintf(r.stderr, "[%d] skipped, from %s: a deletion of %s's message\n", seq, who, safeText(pt.Target.From))
			return
		}
		fmt.Fprintf(&b, "%s deleted %s", who, pt.Target.MID)
	case client.KindGroup:
		b.WriteString(who + " " + describeChange(s, pt.State))
	default:
		fmt.Fprintf(&b, "%s sent a message of kind %q this client does not show", who, safeText(pt.Kind))
	}
	fmt.Fprintln(r.stdout, b.String())
}

// describeChange says what a group snapshot changed from the version it
// built on (when this client has it), and whether the client is still in.
func describeChange(s *session, t *client.GroupState) string {
	var parent *client.GroupState
	for _, v := range s.groups.Versions(t.ID) {
		if v.Version+1 == t.Version && v.Hash() == t.Prev {
			parent = v
		}
	}
	var b strings.Builder
	diff := func(verb string, now, was []string) {
		var hs []string
		for _, h := range now {
			if !slices.Contains(was, h) {
				hs = append(hs, h)
			}
		}
		if len(hs) > 0 {
			fmt.Fprintf(&b, " %s %s;", verb, strings.Join(hs, ", "))
		}
	}
	switch {
	case t.Op == client.OpCreate:
		fmt.Fprintf(&b, "created #%s;", safeText(t.Name))
	case parent == nil:
		fmt.Fprintf(&b, "changed #%s (%s);", safeText(t.Name), t.Op)
	default:
		fmt.Fprintf(&b, "%s:", t.Op)
		if t.Name != parent.Name {
			fmt.Fprintf(&b, " renamed #%s to #%s;", safeText(parent.Name), safeText(t.Name))
		}
		diff("added", t.Members, parent.Members)
		diff("removed", parent.Members, t.Members)
		diff("made admin", t.Admins, parent.Admins)
	}
	fmt.Fprintf(&b, " members %s; admins %s (version %d)", strings.Join(t.Members, ", "), strings.Join(t.Admins, ", "), t.Version)
	if !t.IsMember(s.id.Handle) {
		b.WriteString("\n    you are not in this group")
	}
	return b.String()
}
