package server

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"sync"
)

// unknownMembers says what checkMembers does with a member name its struct
// does not have.
type unknownMembers int

const (
	// refuseUnknown refuses it (unknown_field): request bodies and signed
	// payloads, whose schema is fixed.
	refuseUnknown unknownMembers = iota
	// ignoreUnknown lets it pass, unless it is a field's name in another
	// case: documents later versions may add members to (a plaintext).
	ignoreUnknown
)

// checkMembers refuses what encoding/json would let through but another
// reader would see otherwise: a member name that matches a field only when
// compared ignoring case or by Unicode folding ("Handle", "ſerver"), and a
// member given twice (encoding/json keeps the last, some readers the
// first). It walks data as v's type describes it; data has passed
// json.Valid.
func checkMembers(data []byte, t reflect.Type, unknown unknownMembers) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	return walkMembers(dec, t, unknown)
}

var (
	rawMessageType  = reflect.TypeFor[json.RawMessage]()
	unmarshalerType = reflect.TypeFor[json.Unmarshaler]()
)

func walkMembers(dec *json.Decoder, t reflect.Type, unknown unknownMembers) error {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	delim, ok := tok.(json.Delim)
	if !ok {
		return nil // a scalar
	}
	opaque := t == nil || t == rawMessageType || reflect.PointerTo(t).Implements(unmarshalerType)
	switch delim {
	case '[':
		var elem reflect.Type
		if !opaque && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for dec.More() {
			if err := walkMembers(dec, elem, unknown); err != nil {
				return err
			}
		}
	case '{':
		var fields map[string]reflect.Type
		var mapElem reflect.Type
		switch {
		case opaque:
		case t.Kind() == reflect.Struct:
			fields = structFields(t)
		case t.Kind() == reflect.Map:
			mapElem = t.Elem()
		}
		seen := make(map[string]bool)
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return err
			}
			name := tok.(string)
			if seen[name] {
				return Errorf(CodeInvalidJSON, "member %.40q appears twice", name)
			}
			seen[name] = true
			var vt reflect.Type
			switch {
			case fields != nil:
				ft, known := fields[name]
				if !known {
					if unknown == refuseUnknown {
						return Errorf(CodeUnknownField, "unknown field %.40q", name)
					}
					for f := range fields {
						if strings.EqualFold(f, name) || foldsTo(name, f) {
							return Errorf(CodeInvalidField, "member %.40q differs from %q only in case", name, f)
						}
					}
				}
				vt = ft
			case mapElem != nil:
				vt = mapElem
			}
			if err := walkMembers(dec, vt, unknown); err != nil {
				return err
			}
		}
	}
	_, err = dec.Token() // the closing delimiter
	return err
}

// foldsTo reports whether name matches field under the foldings
// encoding/json applies beyond ASCII case: ſ (U+017F) for s, K (the Kelvin
// sign, U+212A) for k.
func foldsTo(name, field string) bool {
	r := strings.NewReplacer("ſ", "s", "K", "k")
	return strings.EqualFold(r.Replace(name), field)
}

// fieldsCache holds each struct type's exact member names.
var fieldsCache sync.Map // reflect.Type -> map[string]reflect.Type

// structFields is t's JSON member names, as its tags spell them, and their
// types; embedded structs' members are t's own.
func structFields(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldsCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := make(map[string]reflect.Type)
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch {
		case name == "-" || !f.IsExported():
			continue
		case f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct:
			for n, ft := range structFields(f.Type) {
				m[n] = ft
			}
			continue
		case name == "":
			name = f.Name
		}
		m[name] = f.Type
	}
	fieldsCache.Store(t, m)
	return m
}
