package controllers

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	chatv1 "kez.lat/chat/api/v1alpha1"
	"kez.lat/chat/server/push"
)

// rotatedForAnnotation on a generated VAPID Secret records the value of
// the KezChat's rotation annotation its key was made for, so that each
// value rotates exactly once.
const rotatedForAnnotation = "chat.kez.lat/rotated-for"

// madeForAnnotation on a generated VAPID Secret is the UID of the KezChat
// that made it.
const madeForAnnotation = "chat.kez.lat/made-for"

// errVAPIDSecret marks a VAPID Secret the operator cannot use; the user
// must fix it, so the reconcile reports it rather than retry at once.
var errVAPIDSecret = errors.New("VAPID secret")

// vapidKey is the VAPID key a KezChat's server uses.
type vapidKey struct {
	secretName string
	publicKey  string
	digest     string
}

// newVAPIDSecret is a generated VAPID Secret for kc with a fresh key,
// made for the rotation request rotateFor ("" for none).
func newVAPIDSecret(kc *chatv1.KezChat, rotateFor string) (*corev1.Secret, error) {
	pemData, err := push.NewKeyPEM()
	if err != nil {
		return nil, err
	}
	key, err := push.ParseKeyPEM(pemData)
	if err != nil {
		return nil, err
	}
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: namesOf(kc).vapid(), Namespace: kc.Namespace, Labels: labels(kc, componentServer),
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{
			vapidPrivateKey: pemData,
			vapidPublicKey:  []byte(push.PublicKey(key)),
		},
	}
	// Which KezChat made it: a KezChat of the same name that finds it
	// made by another (retained when that one was deleted) adopts it.
	s.Annotations = map[string]string{madeForAnnotation: string(kc.UID)}
	if rotateFor != "" {
		s.Annotations[rotatedForAnnotation] = rotateFor
	}
	return s, nil
}

// vapidKeyOf reads the key in a VAPID Secret.
func vapidKeyOf(s *corev1.Secret) (vapidKey, error) {
	data, ok := s.Data[vapidPrivateKey]
	if !ok {
		return vapidKey{}, fmt.Errorf("%w %s has no %s", errVAPIDSecret, s.Name, vapidPrivateKey)
	}
	key, err := push.ParseKeyPEM(data)
	if err != nil {
		return vapidKey{}, fmt.Errorf("%w %s: %s: %w", errVAPIDSecret, s.Name, vapidPrivateKey, err)
	}
	return vapidKey{secretName: s.Name, publicKey: push.PublicKey(key), digest: digest(data)}, nil
}

// ensureVAPID finds, or makes once, the VAPID key of kc. A user's Secret
// is read, never written. A generated one is written only when it does not
// exist, or when the rotation annotation holds a value it was not made
// for: a new key silently breaks every push subscription, so nothing else
// ever replaces it. created reports a new Secret, rotated a new key.
func (r *KezChatReconciler) ensureVAPID(ctx context.Context, kc *chatv1.KezChat) (key vapidKey, created, rotated bool, err error) {
	if name := kc.Spec.Push.SecretName; name != "" {
		// Users' Secrets are not in the operator's cache, which holds only
		// what it made; read this one from the API server.
		var s corev1.Secret
		if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: kc.Namespace, Name: name}, &s); err != nil {
			if apierrors.IsNotFound(err) {
				return vapidKey{}, false, false, fmt.Errorf("%w %s named by spec.push.secretName does not exist", errVAPIDSecret, name)
			}
			return vapidKey{}, false, false, fmt.Errorf("reading VAPID secret %s: %w", name, err)
		}
		key, err := vapidKeyOf(&s)
		return key, false, false, err
	}

	rotateFor := kc.Annotations[chatv1.RotateVAPIDAnnotation]
	var s corev1.Secret
	err = r.Client.Get(ctx, types.NamespacedName{Namespace: kc.Namespace, Name: namesOf(kc).vapid()}, &s)
	switch {
	case apierrors.IsNotFound(err):
		fresh, err := newVAPIDSecret(kc, rotateFor)
		if err != nil {
			return vapidKey{}, false, false, err
		}
		if ownsData(kc) {
			if err := controllerutil.SetControllerReference(kc, fresh, r.Scheme); err != nil {
				return vapidKey{}, false, false, err
			}
		}
		err = r.Client.Create(ctx, fresh)
		if err == nil {
			key, err := vapidKeyOf(fresh)
			return key, true, false, err
		}
		if !apierrors.IsAlreadyExists(err) {
			return vapidKey{}, false, false, fmt.Errorf("creating VAPID secret: %w", err)
		}
		// The cache has not yet seen a Secret made by an earlier
		// reconcile: read it where it is.
		if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(fresh), &s); err != nil {
			return vapidKey{}, false, false, fmt.Errorf("reading VAPID secret: %w", err)
		}
	case err != nil:
		return vapidKey{}, false, false, fmt.Errorf("reading VAPID secret: %w", err)
	}
	if !generatedVAPIDFor(&s, kc) {
		return vapidKey{}, false, false, fmt.Errorf("%w %s exists but was not made for this KezChat; name it in spec.push.secretName to use it", errVAPIDSecret, s.Name)
	}
	madeFor, known := s.Annotations[madeForAnnotation]
	adopted := madeFor != string(kc.UID)
	if !known { // made before the annotation was
		adopted = s.CreationTimestamp.Before(&kc.CreationTimestamp)
	}
	if adopted && kc.Status.VAPIDPublicKey == "" {
		// Kept by deletionPolicy Retain when a KezChat of this name was
		// deleted: its key is what the push subscriptions were made for.
		r.Recorder.Eventf(kc, &s, corev1.EventTypeNormal, ReasonAdopted, "Adopt",
			"uses VAPID Secret %s, retained from a deleted KezChat of this name", s.Name)
	}
	if owned := metav1.IsControlledBy(&s, kc); owned != ownsData(kc) {
		// The owner reference follows spec.deletionPolicy.
		if owned {
			s.OwnerReferences = withoutOwners(s.OwnerReferences, kc)
		} else if err := controllerutil.SetControllerReference(kc, &s, r.Scheme); err != nil {
			return vapidKey{}, false, false, err
		}
		// The cache keeps only a digest of managed fields, which an
		// update would write over the object's.
		s.ManagedFields = nil
		if err := r.Client.Update(ctx, &s); err != nil {
			return vapidKey{}, false, false, fmt.Errorf("setting the owner of VAPID secret %s: %w", s.Name, err)
		}
	}
	if rotateFor != "" && s.Annotations[rotatedForAnnotation] != rotateFor {
		fresh, err := newVAPIDSecret(kc, rotateFor)
		if err != nil {
			return vapidKey{}, false, false, err
		}
		s.Data = fresh.Data
		metav1.SetMetaDataAnnotation(&s.ObjectMeta, rotatedForAnnotation, rotateFor)
		// Update carries the resourceVersion read: a concurrent change
		// makes it fail rather than rotate twice.
		s.ManagedFields = nil
		if err := r.Client.Update(ctx, &s); err != nil {
			return vapidKey{}, false, false, fmt.Errorf("rotating VAPID key: %w", err)
		}
		key, err := vapidKeyOf(&s)
		return key, false, true, err
	}
	key, err = vapidKeyOf(&s)
	if err != nil {
		err = fmt.Errorf("%w; set the %s annotation to make a new key", err, chatv1.RotateVAPIDAnnotation)
	}
	return key, false, false, err
}
