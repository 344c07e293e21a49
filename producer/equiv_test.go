package producer

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzValidJSON keeps the hand-written validJSON equal to json.Valid.
func FuzzValidJSON(f *testing.F) {
	for _, s := range []string{`{}`, `[]`, `{"a":1}`, `[1,2,{"b":[true,false,null]}]`, `"\u00e9\n"`, `-0.5e+10`, `01`, `1.`, `1e`, `{"a" : "b" , }`,
		`[1,]`, `{"a"}`, `"\x"`, "\"\x01\"", "\"\xff\"", `  {"k\"":"v\\"}  `, `tru`, `nul`, `{"a":{"b":{"c":[]}}}`, `[[[[]]]]`, `{,}`, `[,1]`, `"\u12g4"`,
		strings.Repeat("[", 10000) + strings.Repeat("]", 10000), strings.Repeat("[", 10001) + strings.Repeat("]", 10001), `{"a":1}x`, `1 2`, ``, ` `} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := validJSON(b), json.Valid(b); got != want {
			t.Fatalf("validJSON(%q) = %v; json.Valid = %v", b, got, want)
		}
		tb := bytes.TrimSpace(b)
		if got, want := validJSON(tb), json.Valid(tb); got != want {
			t.Fatalf("validJSON(%q) = %v; json.Valid = %v", tb, got, want)
		}
	})
}

func TestValidJSONDepth(t *testing.T) {
	for _, n := range []int{9999, 10000, 10001} {
		for _, o := range []string{"[", `{"a":`} {
			c := "]"
			if o != "[" {
				c = "}"
			}
			b := []byte(strings.Repeat(o, n) + "1" + strings.Repeat(c, n))
			if validJSON(b) != json.Valid(b) {
				t.Errorf("depth %d %s: %v vs %v", n, o, validJSON(b), json.Valid(b))
			}
		}
	}
}

// FuzzStringValue keeps the fast string decoding equal to json.Unmarshal.
func FuzzStringValue(f *testing.F) {
	for _, s := range []string{`"a"`, `"Bench \u003cb@c\u003e"`, `"\n\t\"\\\/\b\f\r"`, `"\u00e9\u20ac"`, `"\ud83d\ude00"`, `"\ud83d"`, `"\udc00x"`, `"é"`, `""`, `"\u0000"`, `"\uD83D\uDE00"`, `1`, `null`, `"abc\u12"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if !json.Valid(raw) || !utf8.Valid(raw) || hasLoneSurrogate(raw) {
			return // what decodeObject refuses
		}
		got, ok := stringValue(raw)
		var want string
		err := json.Unmarshal(raw, &want)
		if ok && (err != nil || got != want) {
			t.Fatalf("stringValue(%q) = %q; json.Unmarshal = %q, %v", raw, got, want, err)
		}
	})
}
