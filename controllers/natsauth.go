package controllers

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/nats-io/nkeys"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// Keys of the NATS auth Secret, and the user the chat server is in NATS.
const (
	natsUser             = "kezchat"
	natsPasswordKey      = "password"            // the chat server's NATS password
	natsCalloutSeedKey   = "callout-issuer-seed" // account nkey seed (SA...) signing callout JWTs
	natsCalloutIssuerKey = "callout-issuer"      // its public key (A...), auth_callout.issuer
	natsAuthDir          = "/etc/kez-chat/nats"  // where the chat server reads them
	natsPasswordEnv      = "KEZ_NATS_PASSWORD"   // how nats.conf reads the password
)

// errNATSAuthSecret marks a NATS auth Secret the operator cannot use.
var errNATSAuthSecret = errors.New("NATS auth secret")

// natsAuth is what the chat server and NATS share: the chat server's
// password and the auth-callout issuer.
type natsAuth struct {
	secretName string
	issuer     string // public account key
	digest     string
}

// newNATSAuthSecret makes the NATS credentials of kc: a random password for
// the chat server's NATS user, and an account key whose seed signs the
// user JWTs the auth callout issues.
func newNATSAuthSecret(kc *chatv1.KezChat) (*corev1.Secret, error) {
	password := make([]byte, 32)
	if _, err := rand.Read(password); err != nil {
		return nil, err
	}
	account, err := nkeys.CreateAccount()
	if err != nil {
		return nil, fmt.Errorf("creating the callout issuer key: %w", err)
	}
	seed, err := account.Seed()
	if err != nil {
		return nil, err
	}
	public, err := account.PublicKey()
	if err != nil {
		return nil, err
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: namesOf(kc).natsAuth(), Namespace: kc.Namespace, Labels: labels(kc, componentNATS)},
		Type:       corev1.SecretTypeOpaque,
		Data: map[string][]byte{
			natsPasswordKey:      []byte(base64.RawURLEncoding.EncodeToString(password)),
			natsCalloutSeedKey:   seed,
			natsCalloutIssuerKey: []byte(public),
		},
	}, nil
}

// natsAuthOf reads the credentials in a NATS auth Secret.
func natsAuthOf(s *corev1.Secret) (natsAuth, error) {
	seed, password := s.Data[natsCalloutSeedKey], s.Data[natsPasswordKey]
	if len(password) == 0 {
		return natsAuth{}, fmt.Errorf("%w %s has no %s", errNATSAuthSecret, s.Name, natsPasswordKey)
	}
	account, err := nkeys.FromSeed(seed)
	if err != nil {
		return natsAuth{}, fmt.Errorf("%w %s: %s: %w", errNATSAuthSecret, s.Name, natsCalloutSeedKey, err)
	}
	public, err := account.PublicKey()
	if err != nil || !nkeys.IsValidPublicAccountKey(public) {
		return natsAuth{}, fmt.Errorf("%w %s: %s is not an account seed", errNATSAuthSecret, s.Name, natsCalloutSeedKey)
	}
	return natsAuth{secretName: s.Name, issuer: public, digest: digest(password, seed)}, nil
}

// ensureNATSAuth finds, or makes once, kc's NATS credentials. Like the
// VAPID key they are never rewritten: a new password would lock out the
// running chat servers, and a new issuer every browser's NATS session.
func (r *KezChatReconciler) ensureNATSAuth(ctx context.Context, kc *chatv1.KezChat) (auth natsAuth, created bool, err error) {
	var s corev1.Secret
	key := types.NamespacedName{Namespace: kc.Namespace, Name: namesOf(kc).natsAuth()}
	switch err := r.Client.Get(ctx, key, &s); {
	case apierrors.IsNotFound(err):
		fresh, err := newNATSAuthSecret(kc)
		if err != nil {
			return natsAuth{}, false, err
		}
		if err := controllerutil.SetControllerReference(kc, fresh, r.Scheme); err != nil {
			return natsAuth{}, false, err
		}
		err = r.Client.Create(ctx, fresh)
		if err == nil {
			auth, err := natsAuthOf(fresh)
			return auth, true, err
		}
		if !apierrors.IsAlreadyExists(err) {
			return natsAuth{}, false, fmt.Errorf("creating NATS auth secret: %w", err)
		}
		if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(fresh), &s); err != nil {
			return natsAuth{}, false, fmt.Errorf("reading NATS auth secret: %w", err)
		}
	case err != nil:
		return natsAuth{}, false, fmt.Errorf("reading NATS auth secret: %w", err)
	}
	if !metav1.IsControlledBy(&s, kc) {
		return natsAuth{}, false, fmt.Errorf("%w %s exists but was not made for this KezChat", errNATSAuthSecret, s.Name)
	}
	auth, err = natsAuthOf(&s)
	return auth, false, err
}
