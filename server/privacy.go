package server

import (
	"context"
	"fmt"
	"slices"
)

// MaxPrivacyBody bounds PUT /v1/privacy/{handle}.
const MaxPrivacyBody = 256 << 10

// Privacy returns the setting of the handle sess authenticated.
func (s *Service) Privacy(ctx context.Context, sess *Session) (*Privacy, error) {
	if s.Fed == nil {
		return nil, Errorf(CodeFederationDisabled, "this server does not federate")
	}
	p, err := s.Fed.Store.Privacy(ctx, sess.User.Handle)
	if err != nil {
		return nil, fmt.Errorf("reading the privacy setting of %s: %w", sess.User.Handle, err)
	}
	return p, nil
}

// SetPrivacy checks p and makes it the setting of the handle sess
// authenticated; it returns the setting as stored (lists sorted, without
// repeats).
func (s *Service) SetPrivacy(ctx context.Context, sess *Session, p Privacy) (*Privacy, error) {
	if s.Fed == nil {
		return nil, Errorf(CodeFederationDisabled, "this server does not federate")
	}
	if p.Strangers != StrangersAccept && p.Strangers != StrangersRefuse {
		return nil, Errorf(CodeInvalidField, "strangers must be %q or %q", StrangersAccept, StrangersRefuse)
	}
	if len(p.Known) > MaxPrivacyKnown || len(p.Blocked) > MaxPrivacyBlocked {
		return nil, Errorf(CodeInvalidField, "at most %d known and %d blocked entries", MaxPrivacyKnown, MaxPrivacyBlocked)
	}
	for _, k := range p.Known {
		if _, err := ParseAddress(k, s.Fed.Loopback); err != nil {
			return nil, Errorf(CodeInvalidField, "known entry %q is not an address handle@domain", k)
		}
	}
	for _, b := range p.Blocked {
		if _, err := ParseAddress(b, s.Fed.Loopback); err != nil && CheckDomain(b, s.Fed.Loopback) != nil {
			return nil, Errorf(CodeInvalidField, "blocked entry %q is neither an address nor a domain", b)
		}
	}
	stored := Privacy{Strangers: p.Strangers, Known: sortedSet(p.Known), Blocked: sortedSet(p.Blocked)}
	if err := s.Fed.Store.SavePrivacy(ctx, sess.User.Handle, &stored); err != nil {
		return nil, fmt.Errorf("saving the privacy setting of %s: %w", sess.User.Handle, err)
	}
	return &stored, nil
}

func sortedSet(ss []string) []string {
	out := slices.Clone(ss)
	slices.Sort(out)
	out = slices.Compact(out)
	if out == nil {
		out = []string{}
	}
	return out
}
