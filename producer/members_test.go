package producer

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// FuzzMembers checks the hand-written member walk against encoding/json's
// own decoder on every valid JSON object the fuzzer finds.
func FuzzMembers(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"a":1}`, `{"a":"x","b":[1,{"c":"}"}],"d":null}`, `{ "k\"q" : "v\\" , "e":-1.5e3 }`,
		`{"a":{"b":{"c":[true,false]}},"z":"\u00e9"}`, "{\"a\"\t:\n\"b\"\r}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		b = bytes.TrimSpace(b)
		if len(b) == 0 || b[0] != '{' || !json.Valid(b) {
			return
		}
		type kv struct{ k, v string }
		var want []kv
		dec := json.NewDecoder(bytes.NewReader(b))
		if _, err := dec.Token(); err != nil {
			t.Fatal(err)
		}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				t.Fatal(err)
			}
			var v json.RawMessage
			if err := dec.Decode(&v); err != nil {
				t.Fatal(err)
			}
			want = append(want, kv{tok.(string), string(v)})
		}
		var got []kv
		for m := range members(b) {
			k := string(m.key)
			if m.escaped {
				if err := json.Unmarshal(m.quoted, &k); err != nil {
					t.Fatal(err)
				}
			}
			got = append(got, kv{k, string(m.value)})
		}
		if len(got) != len(want) {
			t.Fatalf("members(%q) = %q; encoding/json sees %q", b, got, want)
		}
		for i := range got {
			// A key that is not UTF-8 is an unknown field whatever its
			// spelling: encoding/json replaces each bad byte, the walk
			// keeps them; only the error message differs.
			keyDiffers := utf8.ValidString(got[i].k) && got[i].k != want[i].k
			if got[i].v != want[i].v || keyDiffers {
				t.Fatalf("members(%q)[%d] = %q; encoding/json sees %q", b, i, got[i], want[i])
			}
		}
	})
}
