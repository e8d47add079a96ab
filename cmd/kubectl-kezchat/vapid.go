package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

func runVAPIDKey(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, conn := newFlagSet("vapid-key", "NAME", stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("vapid-key takes one KezChat name")
	}
	k, err := conn.connect()
	if err != nil {
		return err
	}
	key, err := vapidPublicKey(ctx, k, fs.Arg(0))
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, key)
	return err
}

// vapidPublicKey is the Web Push application server key of a KezChat, as
// the operator reports it in status.vapidPublicKey. The key's Secret is
// never read: it holds the private key too.
func vapidPublicKey(ctx context.Context, k *kube, name string) (string, error) {
	kc, err := getKezChat(ctx, k, name)
	if err != nil {
		return "", err
	}
	return vapidKeyOf(kc)
}

func vapidKeyOf(kc *chatv1.KezChat) (string, error) {
	if !kc.Spec.Push.IsEnabled() {
		return "", fmt.Errorf("KezChat %s/%s has Web Push off (spec.push.enabled: false), so no VAPID key", kc.Namespace, kc.Name)
	}
	if kc.Status.VAPIDPublicKey == "" {
		return "", fmt.Errorf("KezChat %s/%s has no VAPID key in its status yet: the operator writes status.vapidPublicKey once the key exists (see `kubectl kezchat status %s`)", kc.Namespace, kc.Name, kc.Name)
	}
	return kc.Status.VAPIDPublicKey, nil
}

// errNoKezChat marks a KezChat that does not exist.
var errNoKezChat = errors.New("no such KezChat")

func getKezChat(ctx context.Context, k *kube, name string) (*chatv1.KezChat, error) {
	var kc chatv1.KezChat
	if err := k.client.Get(ctx, types.NamespacedName{Namespace: k.namespace, Name: name}, &kc); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("%w %q in namespace %s", errNoKezChat, name, k.namespace)
		}
		return nil, fmt.Errorf("reading KezChat %s: %w", name, err)
	}
	return &kc, nil
}
