package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"kez.lat/chat/client"
)

// Commands about people on other servers: what the identity's server
// relays for it (outbox), and who may write to it (privacy).

func runOutbox(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f clientFlags
	fs := newFlagSet("outbox", "outbox [flags]\n\nLists your messages to people on other servers, newest first: queued (to be tried again), delivered, or failed, and why.", stderr)
	addClientFlags(fs, &f)
	if err := parseArgs(fs, args, 0, 0); err != nil {
		return err
	}
	id, c, err := f.registered()
	if err != nil {
		return err
	}
	entries, err := c.Outbox(ctx, id)
	if err != nil {
		return err
	}
	if len(entries) == 0 {
		fmt.Fprintln(stderr, "nothing sent to other servers lately")
	}
	for _, e := range entries {
		fmt.Fprintln(stdout, outboxLine(e))
	}
	return nil
}

// outboxLine is one entry: "state to id (attempts, when)" and the error.
func outboxLine(e client.OutboxEntry) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-9s %s %s (queued %s, %d attempt(s), last %s)", safeText(e.State), safeText(e.To), safeText(e.ID),
		time.Unix(e.QueuedAt, 0).UTC().Format(time.RFC3339), e.Attempts, time.Unix(e.UpdatedAt, 0).UTC().Format(time.RFC3339))
	if e.Error != nil {
		fmt.Fprintf(&b, "\n    %s: %s", safeText(e.Error.Code), indent(safeText(e.Error.Message)))
	}
	return b.String()
}

// listFlag is a repeatable flag of names.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func runPrivacy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f clientFlags
	fs := newFlagSet("privacy", "privacy [flags]\n\nShows who may write to you; with flags, changes it first. Blocked senders (an address, a handle of your server, or a whole domain) are refused; "+
		"with --strangers refuse, so is everyone on another server you have not marked known.", stderr)
	addClientFlags(fs, &f)
	strangers := fs.String("strangers", "", "accept or refuse messages from people on other servers you have not marked known")
	var block, unblock, know, forget listFlag
	fs.Var(&block, "block", "refuse messages from this address, handle or domain (repeatable)")
	fs.Var(&unblock, "unblock", "take an entry off the blocked list (repeatable)")
	fs.Var(&know, "know", "mark this address known: it may write with --strangers refuse (repeatable)")
	fs.Var(&forget, "forget", "take an address off the known list (repeatable)")
	if err := parseArgs(fs, args, 0, 0); err != nil {
		return err
	}
	switch *strangers {
	case "", client.StrangersAccept, client.StrangersRefuse:
	default:
		return fmt.Errorf("--strangers %q: want %s or %s", *strangers, client.StrangersAccept, client.StrangersRefuse)
	}
	id, c, err := f.registered()
	if err != nil {
		return err
	}
	p, err := c.Privacy(ctx, id)
	if err != nil {
		return err
	}
	if *strangers != "" || len(block)+len(unblock)+len(know)+len(forget) > 0 {
		if *strangers != "" {
			p.Strangers = *strangers
		}
		p.Blocked = edit(p.Blocked, block, unblock)
		p.Known = edit(p.Known, know, forget)
		if p, err = c.SetPrivacy(ctx, id, p); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "strangers: %s\nknown:     %s\nblocked:   %s\n", safeText(p.Strangers),
		safeText(strings.Join(p.Known, ", ")), safeText(strings.Join(p.Blocked, ", ")))
	return nil
}

// edit is list with add added and drop taken off, sorted, each once.
func edit(list, add, drop []string) []string {
	out := slices.DeleteFunc(append(slices.Clone(list), add...), func(s string) bool { return slices.Contains(drop, s) })
	slices.Sort(out)
	return slices.Compact(out)
}
