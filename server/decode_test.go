package server

import (
	"bytes"
	"reflect"
	"testing"

	"kez.lat/chat/server/signing"
)

// decodeSeeds are documents of every shape the fast decoders take or pass
// on to DecodeJSON.
var decodeSeeds = []string{
	`{"payload":{"type":"kez.chat.message/v1","server":"chat.test","from":"alice","to":"bob","id":"m-1","ts":1700000000,"ct":"AAAA"},"signature":{"alg":"ed25519","key":"a-b_c","sig":"xyz"}}`,
	`{"ct":"AAAA","from":"alice","id":"m-1","server":"chat.test","to":"bob","ts":1700000000,"type":"kez.chat.message/v1"}`,
	` { "payload" : [1, {"a":"}"}, "\"]"] , "signature" : { } } `, `{}`, `[]`, `null`, `"x"`, `1`, ``, `{`, `{} x`, `{}{}`,
	`{"payload":null}`, `{"payload":1e999}`, `{"payload":"s"}`, `{"payload":1,"payload":2}`, `{"Payload":{}}`, `{"\u0070ayload":{}}`,
	`{"signature":null}`, `{"signature":[]}`, `{"signature":{"alg":1}}`, `{"signature":{"alg":"a","alg":"b"}}`,
	`{"signature":{"alg":"a"},"signature":{"key":"k"}}`, `{"signature":{"ALG":"a"}}`, `{"signature":{"alg":"\u0041"}}`,
	"{\"signature\":{\"alg\":\"\xff\"}}", `{"signature":{"alg":"é"}}`, `{"signature":{"x":"a"}}`, `{"x":1}`,
	`{"ts":-0}`, `{"ts":0}`, `{"ts":1.5}`, `{"ts":1e3}`, `{"ts":"1"}`, `{"ts":null}`, `{"ts":-9223372036854775808}`,
	`{"ts":123456789012345678}`, `{"ts":1234567890123456789}`, `{"ts":99999999999999999999}`, `{"type":1}`,
	`{"type":"a","type":"b"}`, `{"TYPE":"a"}`, `{"to":{}}`, `{"to":"a","TO":"b"}`, `{"ct":"a b"}`, `{"id":"a\tb"}`,
	// A member twice inside the payload (found by the fuzzer), at its top
	// and deeper.
	`{"payload":{"":0,"":""}}`, `{"payload":{"a":1,"b":2,"a":3}}`, `{"payload":{"a":{"b":1,"b":2}}}`, `{"payload":[{"b":1,"b":2}]}`,
	// A message's blobs: the usual shape, and every way an array can
	// differ from it.
	`{"blobs":["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"],"ct":"AAAA","from":"alice","id":"m-1","server":"chat.test","to":"bob","ts":1700000000,"type":"kez.chat.message/v1"}`,
	`{"payload":{"blobs":["a","b"],"ct":"AAAA","from":"alice"},"signature":{"alg":"ed25519","key":"k","sig":"s"}}`,
	`{"blobs":[]}`, `{"blobs":[ ]}`, `{"blobs":null}`, `{"blobs":"a"}`, `{"blobs":[1]}`, `{"blobs":["a",1]}`, `{"blobs":[null]}`,
	`{"blobs":[["a"]]}`, `{"blobs":[{"a":1}]}`, `{"blobs":["a"],"blobs":["b"]}`, `{"BLOBS":["a"]}`, `{"blobs":["\u0041"]}`,
	`{"blobs":[ "a" , "b" ]}`, `{"blobs":["a","a"]}`, `{"blobs":["é"]}`, `{"blobs":{}}`,
	`{"blobs":["1","2","3","4","5","6","7","8","9","10","11","12","13","14","15","16"]}`,
	`{"blobs":["1","2","3","4","5","6","7","8","9","10","11","12","13","14","15","16","17"]}`,
	`{"payload":{"a":["x","y"],"a":["z"]}}`, `{"payload":{"a":["x",{"b":1,"b":2}]}}`,
}

func FuzzDecodeSigned(f *testing.F) {
	for _, s := range decodeSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var fast, slow signing.Signed
		errFast := DecodeSigned(data, &fast)
		errSlow := DecodeJSON(data, &slow)
		if !reflect.DeepEqual(errFast, errSlow) || !reflect.DeepEqual(fast.Signature, slow.Signature) || !bytes.Equal(fast.Payload, slow.Payload) || (fast.Payload == nil) != (slow.Payload == nil) {
			t.Fatalf("DecodeSigned(%q) = %+v, %v; DecodeJSON gives %+v, %v", data, fast, errFast, slow, errSlow)
		}
	})
}

func FuzzDecodeMessagePayload(f *testing.F) {
	for _, s := range decodeSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var fast, slow MessagePayload
		errFast := decodeMessagePayload(data, &fast)
		errSlow := DecodeJSON(data, &slow)
		if !reflect.DeepEqual(errFast, errSlow) || !reflect.DeepEqual(fast, slow) {
			t.Fatalf("decodeMessagePayload(%q) = %+v, %v; DecodeJSON gives %+v, %v", data, fast, errFast, slow, errSlow)
		}
	})
}

func TestFastDecodersTakeTheUsualShape(t *testing.T) {
	if _, ok := decodeSignedFast([]byte(decodeSeeds[0])); !ok {
		t.Error("decodeSignedFast refused a usual message")
	}
	if _, ok := decodeMessagePayloadFast([]byte(decodeSeeds[1])); !ok {
		t.Error("decodeMessagePayloadFast refused a usual canonical payload")
	}
	withBlobs := `{"blobs":["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"],"ct":"AAAA","from":"alice","id":"m-1","server":"chat.test","to":"bob","ts":1700000000,"type":"kez.chat.message/v1"}`
	if p, ok := decodeMessagePayloadFast([]byte(withBlobs)); !ok || len(p.Blobs) != 1 {
		t.Errorf("decodeMessagePayloadFast on a payload with blobs: %+v, %v", p, ok)
	}
	signed := `{"payload":` + withBlobs + `,"signature":{"alg":"ed25519","key":"k","sig":"s"}}`
	if _, ok := decodeSignedFast([]byte(signed)); !ok {
		t.Error("decodeSignedFast refused a message whose payload has blobs")
	}
}

func TestDecodeJSONTakesOnlyExactMemberNamesEachOnce(t *testing.T) {
	for _, tt := range []struct {
		name, doc, code string
	}{
		{"exact names", `{"type":"t","server":"s","handle":"h","primary_id":"p","enc_key":"k","ts":1}`, ""},
		{"a name in another case", `{"Handle":"h"}`, CodeUnknownField},
		{"a long s (U+017F) for s", `{"ſerver":"s"}`, CodeUnknownField},
		{"the Kelvin sign (U+212A) for k", "{\"enc_\u212aey\":\"k\"}", CodeUnknownField},
		{"an escaped exact name", `{"h\u0061ndle":"h"}`, ""},
		{"a member twice", `{"handle":"a","handle":"b"}`, CodeInvalidJSON},
		{"twice, once in another case", `{"handle":"a","HANDLE":"b"}`, CodeUnknownField},
		{"an unknown member", `{"x":1}`, CodeUnknownField},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var p RegisterPayload
			err := DecodeJSON([]byte(tt.doc), &p)
			if (tt.code == "" && err != nil) || (tt.code != "" && ErrorCode(err) != tt.code) {
				t.Fatalf("DecodeJSON(%s): %v, want %q", tt.doc, err, tt.code)
			}
		})
	}
}

func TestDecodeOpenJSONIgnoresNewMembersButNotOnesInAnotherCase(t *testing.T) {
	var p struct {
		V    int    `json:"v"`
		From string `json:"from"`
	}
	if err := DecodeOpenJSON([]byte(`{"v":1,"from":"a","later":true}`), &p); err != nil || p.From != "a" {
		t.Fatalf("a member of a later version: %v, %+v", err, p)
	}
	for _, doc := range []string{`{"v":1,"From":"b"}`, `{"v":1,"from":"a","from":"b"}`} {
		if err := DecodeOpenJSON([]byte(doc), &p); err == nil {
			t.Errorf("DecodeOpenJSON(%s) accepted it: %+v", doc, p)
		}
	}
}
