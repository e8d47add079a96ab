package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/server/signing"
)

const defaultSigURL = "http://127.0.0.1:7878"

// keysCommands are the subcommands of `kezchat keys`: each edits the
// identity's chain of key documents on the sig-server, signed by the
// primary key.
var keysCommands = map[string]subcommand{
	"publish":    {runKeysPublish, "publish the next key document: the current keys and the identity's encryption key"},
	"add-device": {runKeysAddDevice, "create a device identity file and publish its key"},
	"revoke":     {runKeysRevoke, "publish a key document without a device's key"},
	"show":       {runKeysShow, "verify an identity's chain and print its current keys"},
}

func runKeys(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(stderr, "Usage: kezchat keys <command> [flags]\n\nCommands:")
		names := make([]string, 0, len(keysCommands))
		for n := range keysCommands {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(stderr, "  %-10s %s\n", n, keysCommands[n].summary)
		}
		if len(args) == 0 {
			return errors.New("missing command")
		}
		return flag.ErrHelp
	}
	sub, ok := keysCommands[args[0]]
	if !ok {
		return fmt.Errorf("unknown command %q (publish, add-device, revoke, show)", args[0])
	}
	return sub.run(ctx, args[1:], stdout, stderr)
}

// keysFlags are what every keys command shares.
type keysFlags struct {
	sigURL, identity string
}

func addKeysFlags(fs *flag.FlagSet, f *keysFlags) {
	fs.StringVar(&f.sigURL, "sig-url", envDefault("KEZ_SIG_URL", defaultSigURL), "sig-server URL; behind the operator's Ingress, the chat server's URL (env KEZ_SIG_URL)")
	fs.StringVar(&f.identity, "identity", envDefault("KEZ_IDENTITY", defaultIdentityPath()), "primary identity file (env KEZ_IDENTITY)")
}

// primary loads the identity, which must hold the primary key (key
// documents are signed by it), and its latest document (nil when none).
func (f *keysFlags) primary(ctx context.Context) (*client.Identity, *client.Client, *client.KeyDocument, error) {
	id, err := loadIdentity(f.identity)
	if err != nil {
		return nil, nil, nil, err
	}
	if id.IsDevice() {
		return nil, nil, nil, fmt.Errorf("%s is a device identity; key documents are signed by the primary key: pass the primary identity with --identity", f.identity)
	}
	c := client.New(f.sigURL, nil)
	latest, err := c.LatestKeys(ctx, id.PrimaryID())
	if err != nil {
		return nil, nil, nil, fmt.Errorf("reading the latest key document: %w", err)
	}
	return id, c, latest, nil
}

// publishNext signs and publishes the version after latest listing keys.
func publishNext(ctx context.Context, c *client.Client, id *client.Identity, latest *client.KeyDocument, keys []client.SigningKey) (client.KeyReceipt, error) {
	doc, err := client.NewKeyDocument(id.Signer, latest, keys, id.EncPublicKey(), time.Now())
	if err != nil {
		return client.KeyReceipt{}, err
	}
	r, _, err := c.PublishKeys(ctx, doc)
	if err != nil {
		return client.KeyReceipt{}, fmt.Errorf("publishing: %w", err)
	}
	return r, nil
}

// currentKeys are latest's keys, or the primary key alone before version 1.
func currentKeys(id *client.Identity, latest *client.KeyDocument, label string) []client.SigningKey {
	if latest == nil {
		return []client.SigningKey{{Alg: id.Signer.Alg(), Key: id.Signer.PublicKey(), Label: label}}
	}
	return append([]client.SigningKey(nil), latest.SigningKeys...)
}

func runKeysPublish(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f keysFlags
	fs := newFlagSet("keys publish", "keys publish [flags]\n\nPublishes the next key document: the keys of the latest one (the primary key alone at first) and the identity's encryption key.", stderr)
	addKeysFlags(fs, &f)
	label := fs.String("label", "primary", "label of the primary key in a first document")
	if err := parseArgs(fs, args, 0, 0); err != nil {
		return err
	}
	id, c, latest, err := f.primary(ctx)
	if err != nil {
		return err
	}
	r, err := publishNext(ctx, c, id, latest, currentKeys(id, latest, *label))
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "published version %d of %s\n", r.Version, r.PrimaryID)
	return nil
}

func runKeysAddDevice(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f keysFlags
	fs := newFlagSet("keys add-device", "keys add-device --out FILE [--label NAME] [--alg ed25519|bip340]\n\nCreates a device identity (a new signing key, with the identity's handle and encryption key) in FILE and publishes the next key document listing it. Copy FILE to the device and use it as its --identity.", stderr)
	addKeysFlags(fs, &f)
	out := fs.String("out", "", "device identity file to create (required)")
	label := fs.String("label", "device", "the device's name in the key document")
	alg := fs.String("alg", "ed25519", "the device key's algorithm: ed25519 or bip340")
	if err := parseArgs(fs, args, 0, 0); err != nil {
		return err
	}
	if *out == "" {
		fs.Usage()
		return errors.New("--out is required")
	}
	id, c, latest, err := f.primary(ctx)
	if err != nil {
		return err
	}
	dev, err := id.NewDevice(*alg)
	if err != nil {
		return err
	}
	// The file exists before the key is published, so a published key
	// always has its private half somewhere.
	if err := dev.Create(*out); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s already exists; choose another --out", *out)
		}
		return err
	}
	keys := append(currentKeys(id, latest, "primary"), client.SigningKey{Alg: dev.Signer.Alg(), Key: dev.Signer.PublicKey(), Label: *label})
	r, err := publishNext(ctx, c, id, latest, keys)
	if err != nil {
		os.Remove(*out)
		return err
	}
	fmt.Fprintf(stdout, "added device %q (key %s) in version %d of %s\ndevice identity: %s (use it as --identity or KEZ_IDENTITY on the device)\n",
		safeText(*label), signing.EncodeB64(dev.Signer.PublicKey()), r.Version, r.PrimaryID, *out)
	return nil
}

func runKeysRevoke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f keysFlags
	fs := newFlagSet("keys revoke", "keys revoke [flags] <label or key>\n\nPublishes the next key document without the device key with that label (every one) or that base64url public key.", stderr)
	addKeysFlags(fs, &f)
	if err := parseArgs(fs, args, 1, 1); err != nil {
		return err
	}
	which := fs.Arg(0)
	id, c, latest, err := f.primary(ctx)
	if err != nil {
		return err
	}
	if latest == nil {
		return errors.New("the identity has published no key document; there is nothing to revoke")
	}
	var keep []client.SigningKey
	var revoked []string
	for _, k := range latest.SigningKeys {
		if k.Label != which && signing.EncodeB64(k.Key) != which {
			keep = append(keep, k)
			continue
		}
		if k.Alg == id.Signer.Alg() && bytes.Equal(k.Key, id.Signer.PublicKey()) {
			return errors.New("that is the primary key, which cannot be revoked (make a new identity instead)")
		}
		revoked = append(revoked, k.Label)
	}
	if len(revoked) == 0 {
		return fmt.Errorf("version %d lists no key labelled or equal to %q", latest.Version, safeText(which))
	}
	r, err := publishNext(ctx, c, id, latest, keep)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "revoked %s in version %d of %s\n", safeText(strings.Join(revoked, ", ")), r.Version, r.PrimaryID)
	return nil
}

func runKeysShow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f keysFlags
	fs := newFlagSet("keys show", "keys show [flags] [primary_id]\n\nFetches an identity's whole chain (by default the identity file's), verifies it end to end, and prints the latest keys.", stderr)
	addKeysFlags(fs, &f)
	if err := parseArgs(fs, args, 0, 1); err != nil {
		return err
	}
	pid := fs.Arg(0)
	if pid == "" {
		id, err := loadIdentity(f.identity)
		if err != nil {
			return err
		}
		pid = id.PrimaryID()
	}
	chain, err := client.New(f.sigURL, nil).KeyLog(ctx, pid)
	if err != nil {
		return err
	}
	if len(chain) == 0 {
		return fmt.Errorf("%s has published no key document", pid)
	}
	latest := chain[len(chain)-1]
	fmt.Fprintf(stdout, "%s: version %d (chain verified), published %s\nenc_key: %s\n",
		pid, latest.Version, latest.TS.UTC().Format(time.RFC3339), signing.EncodeB64(latest.EncKey))
	for _, k := range latest.SigningKeys {
		fmt.Fprintf(stdout, "  %-8s %s  %s\n", k.Alg, signing.EncodeB64(k.Key), safeText(k.Label))
	}
	return nil
}
